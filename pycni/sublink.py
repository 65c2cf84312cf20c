"""Links created on a master: what macvlan, ipvlan and vlan share.

The link is made where the master lives (the node's namespace, or the pod's with
`linkInContainer`) straight into the pod's namespace, under a temporary name so it cannot
collide with a node interface of the same name, then renamed to CNI_IFNAME. Addresses and
routes come from IPAM (or a chained `prevResult`) and go on through `link.configure`; the
kernel announces them when the link comes up (gratuitous ARP, unsolicited neighbour
advertisement), so neighbours that cached an older MAC for the address learn the new one.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

from pycni import config, ipam_delegate, link, netns, sysctl
from pycni.errors import CNIError, InvalidConfig
from pycni.result import Interface, Result

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from typing import Any

    from pyroute2 import IPRoute

    from pycni.skel import CmdArgs

# Kernel modules behind link kinds whose module name is not the kind's.
MODULES = {"vlan": "8021q"}


class SubLinkConf(config.NetConf):
    """Keys every plugin that puts a link on a master has."""

    master: str = ""
    mtu: int = 0
    link_in_container: bool = False


def validate(conf: SubLinkConf) -> None:
    """Checks that need no kernel (the master's MTU bound is checked when it is found)."""
    if conf.mtu < 0:
        raise InvalidConfig(f"invalid MTU {conf.mtu}, must be 0 (the master's) or more")


@contextmanager
def sockets(args: CmdArgs, conf: SubLinkConf) -> Iterator[tuple[IPRoute, IPRoute]]:
    """Sockets in the master's namespace and in the pod's: one and the same with
    `linkInContainer`."""
    with link.socket(args.netns) as pod:
        if conf.link_in_container:
            yield pod, pod
        else:
            with link.socket() as node:
                yield node, pod


def default_route_interface(ipr: IPRoute) -> str | None:
    """The interface of the first default route of the main table (IPv4 first), as the
    reference picks its default master."""
    for family in (2, 10):
        for route in ipr.get_routes(family=family, table=254):
            oif = route.get_attr("RTA_OIF")
            if route["dst_len"] == 0 and oif:
                return link.get(ipr, oif).name
    return None


def find_master(ipr: IPRoute, conf: SubLinkConf) -> link.Link:
    """The master link (the default route's interface when none is named), checked against
    the MTU asked for. Code 7 when there is none."""
    where = "in the pod's network namespace" if conf.link_in_container else "on the node"
    name = conf.master or default_route_interface(ipr)
    if not name:
        raise InvalidConfig(f"no master given and no default route interface {where}: "
                            "set \"master\"")
    master = link.find(ipr, name)
    if master is None:
        raise InvalidConfig(f"failed to find master {name!r} {where}: no such device")
    if conf.mtu > master.mtu:
        raise InvalidConfig(f"invalid MTU {conf.mtu}, must be [0, master MTU({master.mtu})] "
                            f"(master {name!r})")
    return master


def reason(exc: BaseException) -> str:
    """A netlink error as the kernel's words ("operation not supported")."""
    code = getattr(exc, "code", None)
    return os.strerror(code).lower() if isinstance(code, int) and code > 0 else str(exc)


def create(home: IPRoute, pod: IPRoute, args: CmdArgs, master: link.Link, kind: str,
           mtu: int = 0, **attributes: Any) -> Interface:
    """Create a `kind` link on `master` (in `home`'s namespace) inside the pod as
    CNI_IFNAME. Nothing is left behind when it fails."""
    temporary = link.random_name(kind[:7])
    spec: dict[str, Any] = {"ifname": temporary, "kind": kind, "link": master.index,
                            **attributes}
    if mtu:
        spec["mtu"] = mtu
    if home is not pod:
        spec["net_ns_fd"] = args.netns
    try:
        home.link("add", **spec)
    except Exception as exc:  # NetlinkError
        hint = ""
        if link.is_error(exc, errno.EOPNOTSUPP):
            module = MODULES.get(kind, kind)
            hint = (f" (this kernel has no {module} module: load it with `modprobe {module}` "
                    "or use a kernel built with it)")
        raise CNIError(f"failed to create {kind} on master {master.name!r}: {reason(exc)}"
                       f"{hint}") from None
    created = link.find(pod, temporary)
    if created is None:
        raise CNIError(f"the new {kind} link {temporary!r} is not in {args.netns!r}")
    try:
        pod.link("set", index=created.index, ifname=args.ifname)
    except Exception as exc:  # NetlinkError: the name is taken in the pod
        link.delete(pod, temporary)
        raise CNIError(f"failed to rename {kind} to {args.ifname!r}: {reason(exc)}") from None
    return Interface(args.ifname, created.mac, sandbox=args.netns)  # a rename keeps the MAC


def take_addresses(result: Result, assigned: Result) -> None:
    """The IPAM (or previous plugin's) addresses and routes, all on the link (index 0)."""
    if not assigned.ips:
        raise CNIError("IPAM plugin returned missing IP config")
    for ip in assigned.ips:
        ip.interface = 0
    result.ips, result.routes = assigned.ips, assigned.routes


def configure(pod: IPRoute, args: CmdArgs, result: Result) -> None:
    """Addresses, up, routes through `pod` (the pod's socket); up only for an L2 attachment.
    The kernel sends gratuitous ARP and unsolicited NA when the link comes up with its
    addresses (arp_notify, ndisc_notify): the thread enters the pod for those sysctls."""
    with netns.entered(args.netns):
        if not result.ips:
            found = link.find(pod, args.ifname)
            if found is None:
                raise CNIError(f"failed to find interface {args.ifname!r}")
            pod.link("set", index=found.index, state="up")
            return
        sysctl.write_quietly(f"net/ipv4/conf/{args.ifname}/arp_notify", "1")
        sysctl.write_quietly(f"net/ipv6/conf/{args.ifname}/ndisc_notify", "1")
        link.configure(pod, args.ifname, result, index_in_result=0)


def remove(args: CmdArgs) -> None:
    """DEL's part in the pod: the link goes; a missing namespace or link is fine."""
    if args.netns and netns.exists(args.netns):
        with link.socket(args.netns) as pod:
            link.delete(pod, args.ifname)


def link_data(msg: Any) -> dict[str, Any]:
    """IFLA_INFO_DATA of a link message as {attribute name: value}."""
    info = msg.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info else None
    return {name: value for name, value in (data["attrs"] if data else [])}


def check(pod: IPRoute, args: CmdArgs, prev: Result, kind: str, master: link.Link | None,
          mtu: int = 0) -> dict[str, Any]:
    """CHECK of the pod side: the link is a `kind` on `master` (None: unknown, not checked)
    with the MAC, MTU, addresses and routes of the previous result. Returns its
    IFLA_INFO_DATA for the plugin's own checks (mode, VLAN ID)."""
    position, entry = next(((i, e) for i, e in enumerate(prev.interfaces)
                            if e.name == args.ifname and e.sandbox == args.netns), (-1, None))
    if entry is None:
        raise CNIError(f"prevResult has no interface {args.ifname!r} in {args.netns!r}")
    found = pod.link_lookup(ifname=args.ifname)
    if not found:
        raise CNIError(f"container interface {args.ifname!r} of prevResult not found")
    msg = pod.get_links(found[0])[0]
    inside = link.Link(msg)
    if inside.kind != kind:
        raise CNIError(f"container interface {args.ifname!r} is {inside.kind or 'no'} link, "
                       f"not {kind}")
    if master is not None and inside.peer != master.index:
        raise CNIError(f"container interface {args.ifname!r} is not on master {master.name!r}")
    if entry.mac and entry.mac != inside.mac:
        raise CNIError(f"interface {args.ifname!r} MAC {inside.mac} is not {entry.mac}")
    if mtu and mtu != inside.mtu:
        raise CNIError(f"interface {args.ifname!r} MTU {inside.mtu} is not {mtu}")
    held = set(link.addresses(pod, inside.index))
    for ip in prev.ips:
        if ip.interface in (None, position) and ip.address not in held:
            raise CNIError(f"{args.ifname!r} lacks address {ip.address}")
    present = link.routes(pod, inside.index)
    for route in prev.routes:
        if not any(r["dst"] == route.dst and (route.gw is None or r["gw"] == route.gw)
                   for r in present):
            raise CNIError(f"route {route.dst} via {route.gw} missing in {args.netns!r}")
    return link_data(msg)


def release(args: CmdArgs, conf: SubLinkConf) -> None:
    """DEL: the link goes (it would with the pod's namespace anyway) and the address is given
    back, even when the namespace is gone. The master is not needed."""
    remove(args)
    if conf.ipam_type:
        ipam_delegate.delete(conf.ipam_type, args)


def to_ipam(command: str, args: CmdArgs, conf: SubLinkConf) -> None:
    """STATUS, GC and the IPAM half of CHECK: IPAM answers for the plugin."""
    if conf.ipam_type:
        ipam_delegate.forward(command, conf.ipam_type, args)


def check_start(args: CmdArgs, conf: SubLinkConf) -> Result:
    """CHECK's common start: IPAM's CHECK, then the prevResult every CHECK needs."""
    to_ipam("CHECK", args, conf)
    prev = args.prev_result
    if prev is None:
        raise InvalidConfig("required prevResult missing: CHECK needs the result of ADD")
    return prev
