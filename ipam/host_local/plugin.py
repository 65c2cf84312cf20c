"""host-local: hand out addresses from configured ranges, one file per address on the node.

Compatible with the reference plugin: same keys (`ranges`, legacy `subnet`/`rangeStart`/
`rangeEnd`/`gateway`, `routes`, `dataDir`, `resolvConf`), requested addresses through
CNI_ARGS `IP=`, `args.cni.ips` and `runtimeConfig.ips`, ranges through
`runtimeConfig.ipRanges`, and the same files. Beyond it: an ADD retried for an attachment
returns the address it holds; allocations lost to a reboot are reclaimed when a range runs
out, and by GC; STATUS reports an exhausted range or an unwritable data directory.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from typing import Any

from pycni.ipam.host_local.disk import Allocation, Allocations, boot_time, current_boot
from pycni.ipam.host_local.ranges import RangeSet, parse_ip

from pycni import config, log, spec
from pycni.config import valid_attachments
from pycni.errors import CNIError, IncompatibleVersion, InvalidConfig, IOFailure, NotReady
from pycni.result import IPConfig, Result, Route
from pycni.skel import CmdArgs, Plugin

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from pycni.ipam.host_local.ranges import Address

DEFAULT_DATA_DIR = "/var/lib/cni/networks"


# --- config ---------------------------------------------------------------------------------

class IPAMConf(config.Section):
    type: str = "host-local"
    ranges: list[list[dict[str, Any]]] = []
    subnet: str = ""  # legacy single range: subnet, rangeStart, rangeEnd, gateway
    range_start: str = ""
    range_end: str = ""
    gateway: str = ""
    routes: list[dict[str, Any]] = []
    data_dir: str = DEFAULT_DATA_DIR
    resolv_conf: str = ""


class Conf:
    """The validated configuration: where the files are, the range sets, the requests."""

    def __init__(self, name: str, ipam: IPAMConf, range_sets: list[RangeSet],
                 requested: list[Address], routes: list[Route]) -> None:
        self.name, self.ipam, self.range_sets = name, ipam, range_sets
        self.requested, self.routes = requested, routes

    @property
    def data_dir(self) -> str:
        return self.ipam.data_dir or DEFAULT_DATA_DIR


def load_ipam(args: CmdArgs) -> tuple[config.NetConf, IPAMConf]:
    """The keys every verb needs: network name and the `ipam` section."""
    net = config.load(config.NetConf, args, known_args=frozenset({"IP"}))
    if net.ipam is None:
        raise InvalidConfig("IPAM config missing 'ipam' key")
    return net, config.parse(IPAMConf, net.ipam, "ipam")


def load_conf(args: CmdArgs) -> Conf:
    net, ipam = load_ipam(args)
    runtime_ranges = net.runtime_config.get("ipRanges") or []
    legacy = [[{"subnet": ipam.subnet, "rangeStart": ipam.range_start,
                "rangeEnd": ipam.range_end, "gateway": ipam.gateway}]] if ipam.subnet else []
    raw_sets = list(runtime_ranges) + legacy + ipam.ranges
    if not raw_sets:
        raise InvalidConfig("no IP ranges specified")
    range_sets = []
    for index, raw in enumerate(raw_sets):
        if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
            raise InvalidConfig(f"invalid range set {index}: expected a list of ranges")
        try:
            range_sets.append(RangeSet.parse(raw))
        except InvalidConfig as exc:
            raise InvalidConfig(f"invalid range set {index}: {exc.msg}") from None
    for i, first in enumerate(range_sets):
        for j, second in enumerate(range_sets[i + 1:], start=i + 1):
            if first.overlaps(second):
                raise InvalidConfig(f"range set {i} overlaps with {j}")
    families = [rs.version for rs in range_sets]
    if max(families.count(4), families.count(6)) > 1 and not spec.at_least(
            args.cni_version, "0.3.0"):
        raise IncompatibleVersion(
            f"CNI version {args.cni_version} does not support more than 1 address per family")
    return Conf(net.name, ipam, range_sets, requested_addresses(args, net),
                [parse_route(r) for r in ipam.routes])


def requested_addresses(args: CmdArgs, net: config.NetConf) -> list[Address]:
    """CNI_ARGS `IP=` (comma-separated), then `args.cni.ips`, then `runtimeConfig.ips`."""
    wanted: list[object] = []
    cni_args = config.parse_cni_args(args.args, {"IP"})
    if cni_args.get("IP"):
        wanted += [item for item in cni_args["IP"].split(",") if item.strip()]
    for source, value in (("args.cni.ips", ((net.args or {}).get("cni") or {}).get("ips")),
                          ("runtimeConfig.ips", net.runtime_config.get("ips"))):
        if value is None:
            continue
        if not isinstance(value, list):
            raise InvalidConfig(f"{source} must be a list of addresses")
        wanted += value
    # The same address from two sources is one request (the reference keeps them in a map).
    return list(dict.fromkeys(parse_ip(item, "requested IP") for item in wanted))


def parse_route(raw: dict[str, Any]) -> Route:
    import ipaddress

    try:
        # ipaddress would take an integer as an address: only strings are addresses here
        gw_given = raw.get("gw")
        if not isinstance(raw["dst"], str) or not isinstance(gw_given, str | None):
            raise TypeError
        dst = str(ipaddress.ip_network(raw["dst"], strict=False))
        gw = str(ipaddress.ip_address(gw_given)) if gw_given else None
    except (KeyError, TypeError, ValueError):
        raise InvalidConfig(f"invalid route {raw!r}: needs dst in CIDR notation, "
                            "and gw an IP address if given") from None
    return Route(dst, gw, **{k: raw[k] for k in ("mtu", "advmss", "priority", "table", "scope")
                             if isinstance(raw.get(k), int)})


def parse_resolv_conf(path: str) -> dict[str, Any]:
    """nameserver, domain, search and options lines, as the reference (and glibc) read them:
    a comment is a whole line starting with `#` or `;`; a `#` later in a line is a word."""
    dns: dict[str, Any] = {"nameservers": [], "search": [], "options": []}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise IOFailure(f"failed to read resolvConf {path}: {exc.strerror}") from None
    for line in lines:
        words = line.split()
        if len(words) < 2 or words[0][0] in "#;":
            continue
        key, values = words[0], words[1:]
        if key == "nameserver":
            dns["nameservers"].append(values[0])
        elif key == "domain":
            dns["domain"] = values[0]
        elif key in ("search", "options"):
            dns[key] += values
    return dns


# --- allocation -----------------------------------------------------------------------------

def _holder(allocation: Allocation) -> str:
    return f"{allocation.container_id}/{allocation.ifname or '?'}"


def _check_requests(conf: Conf) -> dict[int, Address]:
    """Which requested address goes to which range set; refused before anything is written."""
    by_set: dict[int, Address] = {}
    for address in conf.requested:
        index = next((i for i, rs in enumerate(conf.range_sets) if rs.range_for(address)), None)
        if index is None or index in by_set:
            raise InvalidConfig(f"failed to allocate all requested IPs: {address} is not in any "
                                "range set" if index is None else
                                f"failed to allocate all requested IPs: {address} and "
                                f"{by_set[index]} are in the same range set {index}")
        found = conf.range_sets[index].range_for(address)
        if found is not None and address == found.gateway:
            raise InvalidConfig(f"requested IP {address} is the gateway of {found.subnet}")
        by_set[index] = address
    return by_set


def allocate(conf: Conf, args: CmdArgs, allocations: Allocations,
             requests: dict[int, Address]) -> list[IPConfig]:
    """One address per range set for the attachment (`requests`: from `_check_requests`).
    Call under the network's lock."""
    held = allocations.scan()
    boot, booted_at = current_boot(), boot_time()
    mine = [a for a in held.values() if a.owned_by(args.container_id, args.ifname)]
    ips = []
    with ExitStack() as undo:
        for index, range_set in enumerate(conf.range_sets):
            wanted = requests.get(index)
            existing = next((a for a in mine if range_set.range_for(a.address)), None)
            if existing is not None:  # a retried ADD: the attachment keeps what it has
                if wanted is not None and wanted != existing.address:
                    raise InvalidConfig(
                        f"{args.container_id}/{args.ifname} already holds {existing.address} "
                        f"in range set {index}; it cannot also take the requested {wanted}")
                address = existing.address
                if existing.from_earlier_boot(boot, booted_at):
                    # Re-established in this boot: it must not look reclaimable any more.
                    allocations.adopt(existing, boot)
            else:
                address = _take(range_set, index, wanted, held, allocations, args, boot,
                                booted_at)
                undo.callback(allocations.release, [address])
            found = range_set.range_for(address)
            assert found is not None
            ips.append(IPConfig(f"{address}/{found.subnet.prefixlen}", str(found.gateway)))
        undo.pop_all()
    return ips


def _take(range_set: RangeSet, index: int, wanted: Address | None,
          held: dict[Address, Allocation], allocations: Allocations, args: CmdArgs,
          boot: str, booted_at: float) -> Address:
    def reserve(address: Address) -> bool:
        return allocations.reserve(address, args.container_id, args.ifname, index, boot)

    def reclaim(allocation: Allocation) -> None:
        log.get().warning("reclaiming %s from %s, allocated before this boot",
                          allocation.address, _holder(allocation))
        allocations.release([allocation.address])

    if wanted is not None:
        holder = held.get(wanted)
        if holder is not None:
            if not holder.from_earlier_boot(boot, booted_at):
                raise CNIError(f"requested IP address {wanted} is not available in range set "
                               f"{range_set}: held by {_holder(holder)}")
            reclaim(holder)
        if not reserve(wanted):
            raise CNIError(f"requested IP address {wanted} is not available in range set "
                           f"{range_set}")
        return wanted

    for _, address in range_set.candidates(allocations.last_reserved(index)):
        if address not in held and reserve(address):
            return address
    stale = sorted((a for a in held.values()
                    if range_set.range_for(a.address) and a.from_earlier_boot(boot, booted_at)),
                   key=lambda a: a.created)
    for allocation in stale:
        reclaim(allocation)
        if reserve(allocation.address):
            return allocation.address
    in_use = sum(1 for a in held if range_set.range_for(a))
    raise CNIError(f"no IP addresses available in range set {range_set}: "
                   f"{in_use} of {range_set.size()} in use")


# --- the verbs ------------------------------------------------------------------------------

def cmd_add(args: CmdArgs) -> Result:
    conf = load_conf(args)
    dns = parse_resolv_conf(conf.ipam.resolv_conf) if conf.ipam.resolv_conf else {}
    requests = _check_requests(conf)  # before the lock: a refused request writes nothing
    allocations = Allocations(conf.data_dir, conf.name)
    with allocations.store.locked():
        ips = allocate(conf, args, allocations, requests)
    return Result(ips=ips, routes=conf.routes, dns=dns)


def cmd_del(args: CmdArgs) -> None:
    """Release everything the attachment holds in the network; nothing held is fine."""
    net, ipam = load_ipam(args)  # ranges need not be valid to give addresses back
    allocations = Allocations(ipam.data_dir or DEFAULT_DATA_DIR, net.name)
    with allocations.store.locked():
        held = allocations.scan()
        allocations.release([a.address for a in held.values()
                             if a.owned_by(args.container_id, args.ifname)])


def cmd_check(args: CmdArgs) -> None:
    conf = load_conf(args)
    allocations = Allocations(conf.data_dir, conf.name)
    mine: list[Allocation] = []
    if os.path.isdir(allocations.store.directory):  # CHECK never creates the network's files
        with allocations.store.locked():
            mine = [a for a in allocations.scan().values()
                    if a.owned_by(args.container_id, args.ifname)]
    for index, range_set in enumerate(conf.range_sets):
        if not any(range_set.range_for(a.address) for a in mine):
            raise CNIError(f"host-local: no address of range set {index} ({range_set}) is "
                           f"allocated to {args.container_id}/{args.ifname}")


def collect(allocations: Allocations, keep: set[tuple[str, str]] | None,
            earlier_boots: bool, dry_run: bool = False) -> list[Allocation]:
    """Release the allocations not in `keep` when it is given (the runtime's list of live
    attachments, which after a reboot holds none of the old ones); without it, if asked,
    those from earlier boots. Lock and last_reserved_ip files stay. Call under the lock."""
    held = allocations.scan()
    boot, booted_at = current_boot(), boot_time()
    keep_containers = {container for container, _ in keep or ()}

    def kept(a: Allocation) -> bool:
        if keep is not None:  # the runtime's word wins: a listed attachment is in use
            return (a.container_id, a.ifname) in keep or (
                not a.ifname and a.container_id in keep_containers)
        return not (earlier_boots and a.from_earlier_boot(boot, booted_at))

    gone = [a for a in held.values() if not kept(a)]
    if not dry_run:
        allocations.release([a.address for a in gone])
        allocations.drop_orphan_metadata({a: v for a, v in held.items() if kept(v)})
    return gone


def cmd_gc(args: CmdArgs) -> None:
    net, ipam = load_ipam(args)
    keep = valid_attachments(args)
    allocations = Allocations(ipam.data_dir or DEFAULT_DATA_DIR, net.name)
    with allocations.store.locked():
        # The runtime's list decides: after a reboot it lists none of the earlier boot's
        # attachments, so GC frees them; one it still lists is in use, whatever its boot.
        collect(allocations, keep, earlier_boots=True)


def cmd_status(args: CmdArgs) -> None:
    import os

    conf = load_conf(args)
    allocations = Allocations(conf.data_dir, conf.name)
    try:
        with allocations.store.locked():
            writable = os.access(allocations.store.directory, os.W_OK)
            held = allocations.scan()
    except IOFailure as exc:
        raise NotReady(f"data directory unusable: {exc.msg}") from None
    if not writable:
        raise NotReady(f"data directory {allocations.store.directory} is not writable")
    boot, booted_at = current_boot(), boot_time()
    for index, range_set in enumerate(conf.range_sets):
        in_use = sum(1 for a in held.values() if range_set.range_for(a.address)
                     and not a.from_earlier_boot(boot, booted_at))
        if in_use >= range_set.size():
            raise NotReady(f"range set {index} ({range_set}) is exhausted: "
                           f"{in_use} of {range_set.size()} in use")


PLUGIN = Plugin("pycni host-local IPAM plugin", add=cmd_add, delete=cmd_del, check=cmd_check,
                status=cmd_status, gc=cmd_gc, check_netns=False)
