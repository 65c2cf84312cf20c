"""What the bridge tests and the bridge benchmark share: the networks they configure.

Plain data and no pytest, so `python -m conformance.bench_bridge` can import it. Every
network keeps its host-local `dataDir` where the caller says (always a temporary directory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

NETWORK = "podnet"
BRIDGE = "cni0"
IPV4_SUBNET = "10.22.0.0/24"
IPV6_SUBNET = "fd22::/64"
IPV4_RANGES = [[{"subnet": IPV4_SUBNET}]]
IPV6_RANGES = [[{"subnet": IPV6_SUBNET}]]
DUAL_STACK_RANGES = IPV4_RANGES + IPV6_RANGES


def bridge_conflist(version: str, data_dir: Path | None, ranges: list[Any] | None = None,
                    plugin_type: str = "bridge", name: str = NETWORK, bridge: str = BRIDGE,
                    **options: Any) -> dict[str, Any]:
    """A conflist of one bridge plugin; host-local IPAM over `ranges` (default: the IPv4
    subnet) keeping its state in `data_dir`, or no IPAM at all when `data_dir` is None."""
    plugin: dict[str, Any] = {"type": plugin_type, "bridge": bridge, **options}
    if data_dir is not None:
        plugin["ipam"] = {"type": "host-local", "ranges": ranges or IPV4_RANGES,
                          "dataDir": str(data_dir)}
    return {"cniVersion": version, "name": name, "plugins": [plugin]}


def pod_addresses(result: dict[str, Any], family: int = 4) -> list[str]:
    """The result's addresses of one family, without the prefix length."""
    return [ip["address"].split("/")[0] for ip in result.get("ips", [])
            if (":" in ip["address"]) == (family == 6)]
