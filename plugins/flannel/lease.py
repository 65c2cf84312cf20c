"""A node's lease on a subnet of the cluster network, as every subnet store keeps it.

The JSON of a lease's attributes is flannel's (`PublicIP`, `BackendType`, `BackendData`, ...),
so an etcd or a Kubernetes node written by flanneld reads the same here.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class LeaseAttrs:
    public_ip: str                        # the node's underlay address
    backend_type: str                     # "vxlan" or "host-gw"
    backend_data: dict[str, Any] = field(default_factory=dict)   # vxlan: {"VNI", "VtepMAC"}
    public_ipv6: str | None = None
    backend_v6_data: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"PublicIP": self.public_ip, "BackendType": self.backend_type,
                                "BackendData": self.backend_data}
        if self.public_ipv6:
            data["PublicIPv6"] = self.public_ipv6
        if self.backend_v6_data is not None:
            data["BackendV6Data"] = self.backend_v6_data
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LeaseAttrs:
        """ValueError when required fields are missing or of the wrong type."""
        try:
            public_ip = str(ipaddress.IPv4Address(data["PublicIP"]))
            backend_type = str(data["BackendType"])
            backend_data = data.get("BackendData") or {}
            if not isinstance(backend_data, dict):
                raise ValueError("BackendData is not an object")
            public_ipv6 = data.get("PublicIPv6") or None
            if public_ipv6 is not None:
                public_ipv6 = str(ipaddress.IPv6Address(public_ipv6))
            v6_data = data.get("BackendV6Data")
        except (KeyError, TypeError) as exc:
            raise ValueError(f"bad lease attributes: {exc!r}") from None
        return cls(public_ip, backend_type, backend_data, public_ipv6,
                   v6_data if isinstance(v6_data, dict) else None)


@dataclass(frozen=True)
class Lease:
    subnet: ipaddress.IPv4Network | None
    attrs: LeaseAttrs
    ipv6_subnet: ipaddress.IPv6Network | None = None
    expiration: float | None = None       # epoch seconds; None: never (Kubernetes podCIDR)

    @property
    def key(self) -> str:
        """flannel's key for the lease: `10.244.1.0-24` (etcd `subnets/<key>`)."""
        return subnet_key(self.subnet, self.ipv6_subnet)

    def expired(self, now: float | None = None) -> bool:
        return self.expiration is not None and self.expiration <= (now or time.time())

    def with_attrs(self, attrs: LeaseAttrs, expiration: float | None) -> Lease:
        return replace(self, attrs=attrs, expiration=expiration)


def subnet_key(subnet: ipaddress.IPv4Network | None,
               ipv6_subnet: ipaddress.IPv6Network | None = None) -> str:
    parts = []
    if subnet is not None:
        parts.append(f"{subnet.network_address}-{subnet.prefixlen}")
    if ipv6_subnet is not None:
        parts.append(f"{ipv6_subnet.network_address}-{ipv6_subnet.prefixlen}")
    return "&".join(parts)


def parse_subnet_key(key: str) -> tuple[ipaddress.IPv4Network | None, ipaddress.IPv6Network | None]:
    """Inverse of subnet_key; ValueError for anything else."""
    subnet: ipaddress.IPv4Network | None = None
    subnet6: ipaddress.IPv6Network | None = None
    for part in key.split("&"):
        address, sep, prefix = part.rpartition("-")
        if not sep or not prefix.isdigit():
            raise ValueError(f"bad subnet key {key!r}")
        network = ipaddress.ip_network(f"{address}/{prefix}")
        if isinstance(network, ipaddress.IPv4Network) and subnet is None:
            subnet = network
        elif isinstance(network, ipaddress.IPv6Network) and subnet6 is None:
            subnet6 = network
        else:
            raise ValueError(f"bad subnet key {key!r}")
    return subnet, subnet6
