"""Backends: how this node reaches every peer's pod subnet.

- vxlan: one VXLAN device `flannel.<VNI>` (no learning). Per peer: a route to its subnet via
  the peer's `.0` address on the device (onlink), a permanent neighbour entry giving that
  address the peer's VTEP MAC, and an FDB entry sending that MAC to the peer's node address.
  With DirectRouting, peers on the underlay's own subnet get a plain route instead.
- host-gw: per peer a route to its subnet via its node address on the underlay; peers that
  are not on-link are refused (logged), as a router in between would drop the pod traffic.

`Programmer` keeps the kernel equal to the store's leases: it diffs against what it
programmed last, and on a full sync also against what the kernel holds, so entries of peers
that left while the agent was down go too.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any

from pycni.plugins.flannel.lease import Lease, LeaseAttrs
from pycni.plugins.flannel.netconf import NetworkConfig
from pycni.plugins.flannel.netlink_batch import Batch, Failure
from pycni.plugins.flannel.underlay import Underlay

from pycni import link as links

VXLAN_OVERHEAD = 50        # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
VXLAN_OVERHEAD_IPV6 = 70
ZERO_MAC = "00:00:00:00:00:00"


class BackendError(Exception):
    pass


@dataclass(frozen=True)
class PeerEntry:
    """What the kernel holds for one peer."""
    subnet: ipaddress.IPv4Network
    gateway: str                  # the peer's `.0` (vxlan) or its node address
    oif: int
    onlink: bool = False
    vtep_mac: str | None = None   # vxlan: neighbour gateway -> MAC, FDB MAC -> public_ip
    public_ip: str = ""


class Backend:
    type = ""

    def __init__(self, config: NetworkConfig, underlay: Underlay, ipr: Any, log: Any) -> None:
        self.config = config
        self.underlay = underlay
        self.ipr = ipr
        self.log = log

    @property
    def mtu(self) -> int:
        return self.underlay.mtu

    @property
    def devices(self) -> set[int]:
        """Links whose peer routes are ours."""
        return {self.underlay.index}

    def prepare(self, previous: Lease | None) -> LeaseAttrs:
        """Set up what the lease must advertise; `previous` is this node's last lease."""
        return LeaseAttrs(str(self.underlay.public_ip), self.type)

    def configure(self, lease: Lease) -> None:
        """Bring the node's side up for its lease."""

    def route_via_node(self, lease: Lease) -> PeerEntry | None:
        assert lease.subnet is not None
        public_ip = ipaddress.IPv4Address(lease.attrs.public_ip)
        if not self.underlay.on_link(public_ip):
            return None
        return PeerEntry(lease.subnet, str(public_ip), self.underlay.index,
                         public_ip=str(public_ip))

    def entry(self, lease: Lease) -> PeerEntry | None:
        raise NotImplementedError


class HostGateway(Backend):
    type = "host-gw"

    def entry(self, lease: Lease) -> PeerEntry | None:
        if lease.attrs.backend_type != self.type or lease.subnet is None:
            self.log.warning("ignoring lease %s of backend %r (this node runs %s)", lease.key,
                             lease.attrs.backend_type, self.type)
            return None
        entry = self.route_via_node(lease)
        if entry is None:
            self.log.error("refusing host-gw route to %s: node %s is not on-link on %s (%s); "
                           "host-gw needs every node on one L2 segment", lease.subnet,
                           lease.attrs.public_ip, self.underlay.name, self.underlay.address)
        return entry


class Vxlan(Backend):
    type = "vxlan"

    def __init__(self, config: NetworkConfig, underlay: Underlay, ipr: Any, log: Any) -> None:
        super().__init__(config, underlay, ipr, log)
        self.device_name = f"flannel.{config.backend.vni}"
        self.index = 0
        self.mac = ""

    @property
    def mtu(self) -> int:
        return self.config.backend.mtu or self.underlay.mtu - VXLAN_OVERHEAD

    @property
    def devices(self) -> set[int]:
        return {self.underlay.index, self.index}

    def prepare(self, previous: Lease | None) -> LeaseAttrs:
        """Create or reuse `flannel.<VNI>`, keeping its MAC across restarts: the existing
        device's, else the one the previous lease advertised (peers still hold it)."""
        backend = self.config.backend
        existing = links.find(self.ipr, self.device_name)
        mac = ""
        if existing is not None:
            mac = existing.mac
            if self._compatible(existing.index):
                self.index, self.mac = existing.index, existing.mac
            else:
                self.log.warning("recreating %s: its VXLAN settings differ from net-conf",
                                 self.device_name)
                self.ipr.link("del", index=existing.index)
        elif previous is not None:
            mac = str(previous.attrs.backend_data.get("VtepMAC") or "")
        if not self.index:
            spec: dict[str, Any] = {
                "ifname": self.device_name, "kind": "vxlan", "vxlan_id": backend.vni,
                "vxlan_local": str(self.underlay.address.ip), "vxlan_link": self.underlay.index,
                "vxlan_port": backend.udp_port, "vxlan_learning": int(backend.learning),
                "mtu": self.mtu}
            if backend.gbp:
                spec["vxlan_gbp"] = True
            if mac:
                spec["address"] = mac
            try:
                self.ipr.link("add", **spec)
            except Exception as exc:
                raise BackendError(f"failed to create {self.device_name}: {exc}") from None
            created = links.find(self.ipr, self.device_name)
            assert created is not None
            self.index, self.mac = created.index, created.mac
        self.ipr.link("set", index=self.index, mtu=self.mtu)
        return LeaseAttrs(str(self.underlay.public_ip), self.type,
                          {"VNI": backend.vni, "VtepMAC": self.mac})

    def _compatible(self, index: int) -> bool:
        message = self.ipr.get_links(index)[0]
        info = message.get_attr("IFLA_LINKINFO")
        if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
            return False
        data = info.get_attr("IFLA_INFO_DATA")
        backend = self.config.backend
        return bool(data is not None
                    and data.get_attr("IFLA_VXLAN_ID") == backend.vni
                    and data.get_attr("IFLA_VXLAN_LOCAL") == str(self.underlay.address.ip)
                    and data.get_attr("IFLA_VXLAN_LINK") == self.underlay.index
                    and data.get_attr("IFLA_VXLAN_PORT") == backend.udp_port)

    def configure(self, lease: Lease) -> None:
        """The device holds `<subnet>.0/32` and nothing else (a lease from an older subnet
        must not linger), and is up."""
        assert lease.subnet is not None
        wanted = f"{lease.subnet.network_address}/32"
        for held in links.addresses(self.ipr, self.index, socket.AF_INET):
            if held != wanted:
                self.ipr.addr("del", index=self.index, address=held.split("/")[0],
                              prefixlen=int(held.split("/")[1]))
        if wanted not in links.addresses(self.ipr, self.index, socket.AF_INET):
            self.ipr.addr("add", index=self.index, address=str(lease.subnet.network_address),
                          prefixlen=32)
        self.ipr.link("set", index=self.index, state="up")

    def entry(self, lease: Lease) -> PeerEntry | None:
        if lease.attrs.backend_type != self.type or lease.subnet is None:
            self.log.warning("ignoring lease %s of backend %r (this node runs %s)", lease.key,
                             lease.attrs.backend_type, self.type)
            return None
        if self.config.backend.direct_routing:
            direct = self.route_via_node(lease)
            if direct is not None:
                return direct
        mac = str(lease.attrs.backend_data.get("VtepMAC") or "")
        if not mac:
            self.log.warning("ignoring lease %s: no VtepMAC in its backend data", lease.key)
            return None
        gateway = str(lease.subnet.network_address)
        return PeerEntry(lease.subnet, gateway, self.index, onlink=True, vtep_mac=mac.lower(),
                         public_ip=lease.attrs.public_ip)


BACKENDS: dict[str, type[Backend]] = {"vxlan": Vxlan, "host-gw": HostGateway}


def create(config: NetworkConfig, underlay: Underlay, ipr: Any, log: Any) -> Backend:
    return BACKENDS[config.backend.type](config, underlay, ipr, log)


@dataclass
class SyncStats:
    added: int = 0
    changed: int = 0
    removed: int = 0
    skipped: int = 0
    failures: list[Failure] = field(default_factory=list)
    entries: dict[str, int] = field(default_factory=dict)   # kernel changes sent, per kind


class CountedBatch(Batch):
    """A batch that counts its changes per kind of kernel entry: route, neigh, fdb."""

    def __init__(self) -> None:
        super().__init__()
        self.counts = {"route": 0, "neigh": 0, "fdb": 0}

    def route_replace(self, *args: Any, **kwargs: Any) -> None:
        self.counts["route"] += 1
        super().route_replace(*args, **kwargs)

    def route_delete(self, *args: Any, **kwargs: Any) -> None:
        self.counts["route"] += 1
        super().route_delete(*args, **kwargs)

    def neighbour_replace(self, *args: Any, **kwargs: Any) -> None:
        self.counts["neigh"] += 1
        super().neighbour_replace(*args, **kwargs)

    def neighbour_delete(self, *args: Any, **kwargs: Any) -> None:
        self.counts["neigh"] += 1
        super().neighbour_delete(*args, **kwargs)

    def fdb_replace(self, *args: Any, **kwargs: Any) -> None:
        self.counts["fdb"] += 1
        super().fdb_replace(*args, **kwargs)

    def fdb_delete(self, *args: Any, **kwargs: Any) -> None:
        self.counts["fdb"] += 1
        super().fdb_delete(*args, **kwargs)


class Programmer:
    """Keeps the kernel's per-peer entries equal to the leases."""

    def __init__(self, backend: Backend, own: Lease) -> None:
        self.backend = backend
        self.own = own
        self.programmed: dict[ipaddress.IPv4Network, PeerEntry] = {}

    def wanted(self, leases: list[Lease]) -> tuple[dict[ipaddress.IPv4Network, PeerEntry], int]:
        entries: dict[ipaddress.IPv4Network, PeerEntry] = {}
        skipped = 0
        for lease in leases:
            if lease.subnet is None or lease.subnet == self.own.subnet:
                continue
            entry = self.backend.entry(lease)
            if entry is None:
                skipped += 1
            else:
                entries[entry.subnet] = entry
        return entries, skipped

    def sync(self, leases: list[Lease], full: bool = False) -> SyncStats:
        wanted, skipped = self.wanted(leases)
        stats = SyncStats(skipped=skipped)
        batch = CountedBatch()
        if full:
            self._remove_strays(batch, wanted, stats)
        for subnet, gone in list(self.programmed.items()):
            if subnet not in wanted:
                self._remove(batch, gone)
                stats.removed += 1
        for subnet, entry in wanted.items():
            old = self.programmed.get(subnet)
            if old == entry and not full:
                continue
            if old is not None and old != entry:
                self._remove_stale_parts(batch, old, entry)
                stats.changed += 1
            elif old is None:
                stats.added += 1
            self._add(batch, entry)
        stats.entries = dict(batch.counts)
        stats.failures = batch.commit()
        self.programmed = wanted
        return stats

    def _add(self, batch: Batch, entry: PeerEntry) -> None:
        batch.route_replace(str(entry.subnet.network_address), entry.subnet.prefixlen,
                            entry.gateway, entry.oif, entry.onlink)
        if entry.vtep_mac:
            batch.neighbour_replace(entry.oif, entry.gateway, entry.vtep_mac)
            batch.fdb_replace(entry.oif, entry.vtep_mac, entry.public_ip)

    def _remove(self, batch: Batch, entry: PeerEntry) -> None:
        batch.route_delete(str(entry.subnet.network_address), entry.subnet.prefixlen,
                           entry.gateway, entry.oif)
        if entry.vtep_mac:
            batch.neighbour_delete(entry.oif, entry.gateway, entry.vtep_mac)
            batch.fdb_delete(entry.oif, entry.vtep_mac, entry.public_ip)

    def _remove_stale_parts(self, batch: Batch, old: PeerEntry, new: PeerEntry) -> None:
        """The route is replaced in place; neighbour and FDB entries the new form lacks go."""
        if old.vtep_mac and (new.vtep_mac is None or old.oif != new.oif):
            batch.neighbour_delete(old.oif, old.gateway, old.vtep_mac)
        if old.vtep_mac and (old.vtep_mac, old.public_ip) != (new.vtep_mac, new.public_ip):
            batch.fdb_delete(old.oif, old.vtep_mac, old.public_ip)
        if old.oif != new.oif:
            batch.route_delete(str(old.subnet.network_address), old.subnet.prefixlen,
                               old.gateway, old.oif)

    def _remove_strays(self, batch: Batch, wanted: dict[ipaddress.IPv4Network, PeerEntry],
                       stats: SyncStats) -> None:
        """Entries in the kernel that no lease wants: peers that left while we were away."""
        config = self.backend.config
        network = config.network
        if network is None:
            return
        ipr = self.backend.ipr
        devices = self.backend.devices
        gateways = {(e.oif, e.gateway) for e in wanted.values() if e.vtep_mac}
        fdb = {(e.oif, e.vtep_mac, e.public_ip) for e in wanted.values() if e.vtep_mac}
        for route in ipr.get_routes(family=socket.AF_INET, table=254):
            dst = route.get_attr("RTA_DST")
            oif = route.get_attr("RTA_OIF")
            if (dst is None or oif not in devices or route["dst_len"] != config.subnet_len
                    or route.get_attr("RTA_GATEWAY") is None):
                continue
            subnet = ipaddress.IPv4Network(f"{dst}/{route['dst_len']}")
            if subnet.subnet_of(network) and subnet != self.own.subnet and (
                    subnet not in wanted or wanted[subnet].oif != oif):
                batch.route_delete(dst, route["dst_len"], route.get_attr("RTA_GATEWAY"), oif)
                stats.removed += int(subnet not in wanted and subnet not in self.programmed)
        vxlan_index = getattr(self.backend, "index", 0)
        if not vxlan_index:
            return
        for neighbour in ipr.get_neighbours(family=socket.AF_INET, ifindex=vxlan_index):
            dst = neighbour.get_attr("NDA_DST")
            if neighbour["state"] & 0x80 and (vxlan_index, dst) not in gateways:
                batch.neighbour_delete(vxlan_index, dst, neighbour.get_attr("NDA_LLADDR") or "")
        try:
            entries = list(ipr.fdb("dump", ifindex=vxlan_index))
        except Exception as exc:
            if not links.is_error(exc, errno.EOPNOTSUPP):
                raise
            entries = []
        for entry in entries:
            mac, dst = entry.get_attr("NDA_LLADDR"), entry.get_attr("NDA_DST")
            if (entry["ifindex"] == vxlan_index and dst and mac and mac != ZERO_MAC
                    and (vxlan_index, mac, dst) not in fdb):
                batch.fdb_delete(vxlan_index, mac, dst)
