"""The node's underlay: the interface and address peers reach this node on.

flanneld's rules: `--iface` (names or addresses, first match wins), then `--iface-regex`
(matched against names and addresses), else the interface holding `--public-ip`, else the
interface of the default route. The advertised address is `--public-ip` when given, else the
interface's first IPv4 address.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class UnderlayError(Exception):
    pass


@dataclass(frozen=True)
class Underlay:
    name: str
    index: int
    mtu: int
    address: ipaddress.IPv4Interface    # the interface's own address with its prefix
    public_ip: ipaddress.IPv4Address    # what peers are told (usually address.ip)

    def on_link(self, peer: ipaddress.IPv4Address) -> bool:
        """Whether `peer` is reachable without a router (host-gw, DirectRouting)."""
        return peer in self.address.network


def _interfaces(ipr: Any) -> list[tuple[str, int, int, list[ipaddress.IPv4Interface]]]:
    addresses: dict[int, list[ipaddress.IPv4Interface]] = {}
    for message in ipr.get_addr(family=socket.AF_INET):
        address = message.get_attr("IFA_ADDRESS") or message.get_attr("IFA_LOCAL")
        addresses.setdefault(message["index"], []).append(
            ipaddress.IPv4Interface(f"{address}/{message['prefixlen']}"))
    return [(link.get_attr("IFLA_IFNAME"), link["index"], link.get_attr("IFLA_MTU"),
             addresses.get(link["index"], [])) for link in ipr.get_links()]


def find(ipr: Any, ifaces: Sequence[str] = (), iface_regexes: Sequence[str] = (),
         public_ip: str | None = None) -> Underlay:
    links = _interfaces(ipr)

    def usable(addresses: list[ipaddress.IPv4Interface]) -> list[ipaddress.IPv4Interface]:
        return [a for a in addresses if not a.ip.is_loopback and not a.ip.is_link_local]

    def matches(test: Any) -> tuple[str, int, int, list[ipaddress.IPv4Interface]] | None:
        for name, index, mtu, addresses in links:
            if test(name, addresses):
                return name, index, mtu, addresses
        return None

    chosen = None
    if ifaces:
        for wanted in ifaces:
            chosen = matches(lambda name, addresses, w=wanted: name == w or any(
                str(a.ip) == w for a in addresses))
            if chosen:
                break
        if not chosen:
            raise UnderlayError(f"none of the interfaces {', '.join(ifaces)} exists")
    elif iface_regexes:
        for pattern in iface_regexes:
            try:
                regex = re.compile(pattern)
            except re.error as exc:
                raise UnderlayError(f"bad --iface-regex {pattern!r}: {exc}") from None
            chosen = matches(lambda name, addresses, r=regex: bool(r.fullmatch(name)) or any(
                r.fullmatch(str(a.ip)) for a in usable(addresses)))
            if chosen:
                break
        if not chosen:
            raise UnderlayError(f"no interface matches {', '.join(iface_regexes)}")
    elif public_ip:
        chosen = matches(lambda name, addresses: any(str(a.ip) == public_ip for a in addresses))
        if not chosen:
            raise UnderlayError(f"no interface holds --public-ip {public_ip}")
    else:
        index = _default_route_interface(ipr)
        if index is None:
            raise UnderlayError("no default route to pick the underlay interface from; "
                                "use --iface or --iface-regex")
        chosen = next((link for link in links if link[1] == index), None)
    if chosen is None:
        raise UnderlayError("the default route's interface vanished")
    name, index, mtu, addresses = chosen
    own = usable(addresses)
    if not own:
        raise UnderlayError(f"interface {name} has no IPv4 address")
    address = next((a for a in own if public_ip and str(a.ip) == public_ip), own[0])
    advertised = ipaddress.IPv4Address(public_ip) if public_ip else address.ip
    return Underlay(name, index, mtu, address, advertised)


def _default_route_interface(ipr: Any) -> int | None:
    for route in ipr.get_routes(family=socket.AF_INET, table=254):
        if route["dst_len"] == 0:
            oif = route.get_attr("RTA_OIF")
            if oif:
                return int(oif)
    return None
