"""Address ranges and range sets, validated as the reference host-local does.

A range is a subnet with an optional start, end and gateway; a range set is a list of ranges
of one family that the allocator treats as one pool. The stdlib `ipaddress` does the
arithmetic (netaddr would cost about 55 ms of imports at every pod start).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from pycni.errors import InvalidConfig

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from typing import Any

    Address = ipaddress.IPv4Address | ipaddress.IPv6Address
    Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(text: object, what: str) -> Address:
    """An address from "10.0.0.5" or "10.0.0.5/24" (the prefix is ignored)."""
    if not isinstance(text, str):
        raise InvalidConfig(f"invalid {what} {text!r}: expected an IP address string")
    try:
        return ipaddress.ip_address(text.strip().split("/", 1)[0])
    except ValueError:
        raise InvalidConfig(f"invalid {what} {text!r}: not an IP address") from None


class Range:
    """One allocatable range: `start`..`end` inclusive inside `subnet`, `gateway` skipped."""

    __slots__ = ("subnet", "start", "end", "gateway")

    def __init__(self, subnet: Network, start: Address, end: Address, gateway: Address) -> None:
        self.subnet, self.start, self.end, self.gateway = subnet, start, end, gateway

    @classmethod
    def parse(cls, conf: dict[str, Any]) -> Range:
        text = conf.get("subnet")
        if not isinstance(text, str) or not text:
            raise InvalidConfig("range has no subnet")
        try:
            interface = ipaddress.ip_interface(text)
        except ValueError:
            raise InvalidConfig(f"invalid subnet {text!r}: expected CIDR notation") from None
        subnet = interface.network
        if subnet.prefixlen > subnet.max_prefixlen - 2:
            raise InvalidConfig(f"network {subnet} too small to allocate from")
        if interface.ip != subnet.network_address:
            raise InvalidConfig(
                f"network {text} has host bits set: for a subnet mask of length "
                f"{subnet.prefixlen} the network address is {subnet.network_address}")
        first = subnet.network_address + 1
        last = subnet.broadcast_address - (1 if subnet.version == 4 else 0)
        gateway = parse_ip(conf["gateway"], "gateway") if conf.get("gateway") else first
        start = parse_ip(conf["rangeStart"], "rangeStart") if conf.get("rangeStart") else first
        end = parse_ip(conf["rangeEnd"], "rangeEnd") if conf.get("rangeEnd") else last
        for name, address in (("gateway", gateway), ("rangeStart", start), ("rangeEnd", end)):
            if address.version != subnet.version:
                raise InvalidConfig(f"{name} {address} is not of the family of {subnet}")
        for name, address in (("rangeStart", start), ("rangeEnd", end)):
            if address not in subnet:
                raise InvalidConfig(f"{name} {address} not in network {subnet}")
        if int(start) > int(end):
            raise InvalidConfig(f"rangeStart {start} is after rangeEnd {end}")
        return cls(subnet, start, end, gateway)

    @property
    def version(self) -> int:
        return self.subnet.version

    def contains(self, address: Address) -> bool:
        return address.version == self.version and (
            int(self.start) <= int(address) <= int(self.end))

    def overlaps(self, other: Range) -> bool:
        return self.version == other.version and not (
            int(self.end) < int(other.start) or int(other.end) < int(self.start))

    def size(self) -> int:
        """How many addresses can be handed out (the gateway cannot)."""
        return int(self.end) - int(self.start) + 1 - (1 if self.contains(self.gateway) else 0)

    def addresses(self, first: int, last: int) -> Iterator[Address]:
        """Allocatable addresses between the integers `first` and `last`, inclusive."""
        make = ipaddress.IPv4Address if self.version == 4 else ipaddress.IPv6Address
        for value in range(max(first, int(self.start)), min(last, int(self.end)) + 1):
            address = make(value)
            if address != self.gateway:
                yield address

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


class RangeSet:
    """Ranges of one family forming one pool; one address per range set per attachment."""

    __slots__ = ("ranges",)

    def __init__(self, ranges: list[Range]) -> None:
        self.ranges = ranges

    @classmethod
    def parse(cls, confs: list[dict[str, Any]]) -> RangeSet:
        if not confs:
            raise InvalidConfig("empty range set")
        ranges = [Range.parse(conf) for conf in confs]
        if len({r.version for r in ranges}) > 1:
            raise InvalidConfig("mixed address families in one range set")
        for i, first in enumerate(ranges):
            for second in ranges[i + 1:]:
                if first.overlaps(second):
                    raise InvalidConfig(f"subnets {first} and {second} overlap")
        return cls(ranges)

    @property
    def version(self) -> int:
        return self.ranges[0].version

    def range_for(self, address: Address) -> Range | None:
        return next((r for r in self.ranges if r.contains(address)), None)

    def overlaps(self, other: RangeSet) -> bool:
        return any(a.overlaps(b) for a in self.ranges for b in other.ranges)

    def size(self) -> int:
        return sum(r.size() for r in self.ranges)

    def candidates(self, last_reserved: Address | None) -> Iterator[tuple[Range, Address]]:
        """Every allocatable address once, round-robin: after `last_reserved`, wrapping."""
        start_index, after = 0, None
        if last_reserved is not None:
            for index, r in enumerate(self.ranges):
                if r.contains(last_reserved):
                    start_index, after = index, last_reserved
                    break
        order = self.ranges[start_index:] + self.ranges[:start_index]
        whole = (0, 2**128)
        head = order[0]
        pieces = [(head, (int(after) + 1, whole[1]) if after is not None else whole)]
        pieces += [(r, whole) for r in order[1:]]
        if after is not None:
            pieces.append((head, (whole[0], int(after))))
        for r, (first, last) in pieces:
            for address in r.addresses(first, last):
                yield r, address

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.ranges)
