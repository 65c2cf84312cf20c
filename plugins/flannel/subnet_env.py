"""`/run/flannel/subnet.env`: what the agent leased, for the CNI plugin to read.

Read on every pod start, so this module imports nothing heavy. The format is flannel's:
`KEY=value` lines, FLANNEL_SUBNET holding the node's first pod address with the prefix
(10.244.1.1/24), FLANNEL_IPMASQ telling whether the agent masquerades (then bridge must not).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    T = TypeVar("T")

DEFAULT_PATH = "/run/flannel/subnet.env"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True)
class SubnetEnv:
    network: ipaddress.IPv4Network | None = None
    subnet: ipaddress.IPv4Interface | None = None          # 10.244.1.1/24
    ipv6_network: ipaddress.IPv6Network | None = None
    ipv6_subnet: ipaddress.IPv6Interface | None = None
    mtu: int = 0
    ipmasq: bool = False

    @property
    def networks(self) -> list[Network]:
        return [n for n in (self.network, self.ipv6_network) if n is not None]

    @property
    def subnets(self) -> list[Interface]:
        return [s for s in (self.subnet, self.ipv6_subnet) if s is not None]


def parse(text: str) -> SubnetEnv:
    """Parse subnet.env text; ValueError names the bad line."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"line {number}: {raw!r} is not KEY=value")
        values[key.strip()] = value.strip().strip('"')
    try:
        env = SubnetEnv(
            network=_get(values, "FLANNEL_NETWORK", ipaddress.IPv4Network),
            subnet=_get(values, "FLANNEL_SUBNET", ipaddress.IPv4Interface),
            ipv6_network=_get(values, "FLANNEL_IPV6_NETWORK", ipaddress.IPv6Network),
            ipv6_subnet=_get(values, "FLANNEL_IPV6_SUBNET", ipaddress.IPv6Interface),
            mtu=int(values.get("FLANNEL_MTU") or 0),
            ipmasq=values.get("FLANNEL_IPMASQ", "false").lower() == "true",
        )
    except ValueError as exc:
        raise ValueError(f"bad value: {exc}") from None
    if env.subnet is None and env.ipv6_subnet is None:
        raise ValueError("neither FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET is set")
    if (env.subnet is None) != (env.network is None):
        raise ValueError("FLANNEL_NETWORK and FLANNEL_SUBNET must be set together")
    if (env.ipv6_subnet is None) != (env.ipv6_network is None):
        raise ValueError("FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET must be set together")
    return env


def _get(values: dict[str, str], key: str, kind: Callable[[str], T]) -> T | None:
    value = values.get(key)
    return kind(value) if value else None


def read(path: str = DEFAULT_PATH) -> SubnetEnv:
    """Read and parse; OSError (FileNotFoundError: no agent yet) and ValueError propagate."""
    with open(path, encoding="utf-8") as handle:
        return parse(handle.read())


def render(env: SubnetEnv) -> str:
    lines = []
    if env.network is not None:
        lines.append(f"FLANNEL_NETWORK={env.network}")
    if env.subnet is not None:
        lines.append(f"FLANNEL_SUBNET={env.subnet}")
    if env.ipv6_network is not None:
        lines.append(f"FLANNEL_IPV6_NETWORK={env.ipv6_network}")
    if env.ipv6_subnet is not None:
        lines.append(f"FLANNEL_IPV6_SUBNET={env.ipv6_subnet}")
    lines.append(f"FLANNEL_MTU={env.mtu}")
    lines.append(f"FLANNEL_IPMASQ={'true' if env.ipmasq else 'false'}")
    return "\n".join(lines) + "\n"


def write(path: str, env: SubnetEnv) -> None:
    """Replace the file atomically: a plugin reading it sees the old or the new lease."""
    import os

    from pycni.store import write_atomic

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_atomic(path, render(env).encode(), mode=0o644)
