"""net-conf.json: the cluster network's configuration (flanneld's keys and defaults)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_PATH = "/etc/kube-flannel/net-conf.json"
BACKENDS = ("vxlan", "host-gw")


class Backend(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")

    type: str = Field("vxlan", alias="Type")
    vni: int = Field(1, alias="VNI", ge=0, le=16777215)
    port: int = Field(0, alias="Port", ge=0, le=65535)      # 0: the kernel's default, 8472
    gbp: bool = Field(False, alias="GBP")
    direct_routing: bool = Field(False, alias="DirectRouting")
    learning: bool = Field(False, alias="Learning")
    mtu: int = Field(0, alias="MTU", ge=0)

    @property
    def udp_port(self) -> int:
        return self.port or 8472


class NetworkConfig(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")

    enable_ipv4: bool = Field(True, alias="EnableIPv4")
    enable_ipv6: bool = Field(False, alias="EnableIPv6")
    network: ipaddress.IPv4Network | None = Field(None, alias="Network")
    ipv6_network: ipaddress.IPv6Network | None = Field(None, alias="IPv6Network")
    subnet_len: int = Field(0, alias="SubnetLen")            # 0: 24, or Network's prefix + 1
    subnet_min: ipaddress.IPv4Address | None = Field(None, alias="SubnetMin")
    subnet_max: ipaddress.IPv4Address | None = Field(None, alias="SubnetMax")
    ipv6_subnet_len: int = Field(0, alias="IPv6SubnetLen")   # 0: 64
    backend: Backend = Field(default_factory=lambda: Backend.model_validate({}), alias="Backend")
    enable_nftables: bool = Field(False, alias="EnableNFTables")

    @model_validator(mode="after")
    def _check(self) -> NetworkConfig:
        if not (self.enable_ipv4 or self.enable_ipv6):
            raise ValueError("EnableIPv4 and EnableIPv6 are both false")
        if self.enable_ipv4 and self.network is None:
            raise ValueError("Network is required when EnableIPv4 is true")
        if self.enable_ipv6 and self.ipv6_network is None:
            raise ValueError("IPv6Network is required when EnableIPv6 is true")
        if self.backend.type not in BACKENDS:
            raise ValueError(f"backend type {self.backend.type!r} is not supported "
                             f"(supported: {', '.join(BACKENDS)})")
        if self.enable_ipv4 and self.network is not None:
            if self.subnet_len == 0:
                self.subnet_len = 24 if self.network.prefixlen < 24 else self.network.prefixlen + 1
            if not self.network.prefixlen < self.subnet_len <= 30:
                raise ValueError(f"SubnetLen {self.subnet_len} must be longer than Network's "
                                 f"prefix {self.network.prefixlen} and at most 30")
            first, last = self._subnet_bounds()
            for name, value in (("SubnetMin", self.subnet_min), ("SubnetMax", self.subnet_max)):
                if value is not None and value not in self.network:
                    raise ValueError(f"{name} {value} is not in Network {self.network}")
            if self.subnet_min is None:
                self.subnet_min = first
            if self.subnet_max is None:
                self.subnet_max = last
            if self.subnet_min > self.subnet_max:
                raise ValueError(f"SubnetMin {self.subnet_min} is after "
                                 f"SubnetMax {self.subnet_max}")
        if self.enable_ipv6 and self.ipv6_network is not None:
            if self.ipv6_subnet_len == 0:
                self.ipv6_subnet_len = 64 if self.ipv6_network.prefixlen < 64 else \
                    self.ipv6_network.prefixlen + 1
            if not self.ipv6_network.prefixlen < self.ipv6_subnet_len <= 126:
                raise ValueError(f"IPv6SubnetLen {self.ipv6_subnet_len} is out of range")
        return self

    def _subnet_bounds(self) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
        """flanneld's defaults: the second subnet (the first is skipped) to the last."""
        assert self.network is not None
        size = 1 << (32 - self.subnet_len)
        start = int(self.network.network_address)
        end = int(self.network.broadcast_address) + 1 - size
        return ipaddress.IPv4Address(start + size), ipaddress.IPv4Address(end)

    def candidate_subnets(self) -> Iterator[ipaddress.IPv4Network]:
        """Every subnet a node may lease, SubnetMin to SubnetMax, in order."""
        if not self.enable_ipv4 or self.subnet_min is None or self.subnet_max is None:
            return
        size = 1 << (32 - self.subnet_len)
        address = int(self.subnet_min) & ~(size - 1)
        while address <= int(self.subnet_max):
            yield ipaddress.IPv4Network((address, self.subnet_len))
            address += size

    def ipv6_subnet_for(self, subnet: ipaddress.IPv4Network | None) -> ipaddress.IPv6Network | None:
        """Dual stack: the IPv6 subnet paired with an IPv4 one (same position in its network)."""
        if not self.enable_ipv6 or self.ipv6_network is None:
            return None
        index = 1
        if subnet is not None and self.network is not None:
            index = (int(subnet.network_address) - int(self.network.network_address)) >> (
                32 - self.subnet_len)
        size = 1 << (128 - self.ipv6_subnet_len)
        base = int(self.ipv6_network.network_address)
        return ipaddress.IPv6Network((base + index * size, self.ipv6_subnet_len))

def parse(data: bytes | str | dict[str, Any]) -> NetworkConfig:
    """ValueError with a readable message on anything invalid."""
    try:
        raw = json.loads(data) if isinstance(data, bytes | str) else data
        return NetworkConfig.model_validate(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"net-conf is not JSON: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}"
                             for e in exc.errors())
        raise ValueError(f"invalid net-conf: {problems}") from None


def load(path: str = DEFAULT_PATH) -> NetworkConfig:
    with open(path, "rb") as handle:
        return parse(handle.read())
