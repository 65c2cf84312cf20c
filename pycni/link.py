"""Links, addresses and routes through pyroute2, with an `IPRoute` bound to one namespace.

Every function takes the socket (`netns.ipr(path)`) of the namespace it works in, so what
happens where is explicit at the call site.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pycni import netns
from pycni.errors import CNIError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from typing import Any

    from pyroute2 import IPRoute

    from pycni.result import Result

IFF_PROMISC = 0x100


@contextmanager
def socket(path: str | None = None) -> Iterator[IPRoute]:
    """A netlink socket in the namespace at `path` (ours when None), closed afterwards."""
    try:
        ipr = netns.ipr(path)
    except OSError as exc:
        raise CNIError(f"failed to open network namespace {path!r}: {exc.strerror}") from None
    try:
        yield ipr
    finally:
        ipr.close()


def is_error(exc: BaseException, *codes: int) -> bool:
    """A NetlinkError (or OSError) with one of `codes`."""
    code = getattr(exc, "code", None) or getattr(exc, "errno", None)
    return code in codes


# --- reading ---------------------------------------------------------------------------------

class Link:
    """What we read of a link."""

    __slots__ = ("index", "name", "mac", "mtu", "kind", "master", "peer", "flags",
                 "operstate", "alias")

    def __init__(self, msg: Any) -> None:
        info = msg.get_attr("IFLA_LINKINFO")
        self.index: int = msg["index"]
        self.name: str = msg.get_attr("IFLA_IFNAME")
        self.mac: str = msg.get_attr("IFLA_ADDRESS") or ""
        self.mtu: int = msg.get_attr("IFLA_MTU") or 0
        self.kind: str = (info.get_attr("IFLA_INFO_KIND") if info else "") or ""
        self.master: int = msg.get_attr("IFLA_MASTER") or 0
        self.peer: int = msg.get_attr("IFLA_LINK") or 0  # veth: the peer's index
        self.flags: int = msg["flags"]
        self.operstate: str = msg.get_attr("IFLA_OPERSTATE") or ""
        self.alias: str = msg.get_attr("IFLA_IFALIAS") or ""

    @property
    def promisc(self) -> bool:
        return bool(self.flags & IFF_PROMISC)


def find(ipr: IPRoute, name: str) -> Link | None:
    """The link named `name` (one RTM_GETLINK by name), None when there is none."""
    try:
        return Link(ipr.link("get", ifname=name)[0])
    except Exception as exc:  # NetlinkError
        if is_error(exc, errno.ENODEV):
            return None
        raise


def get(ipr: IPRoute, index: int) -> Link:
    return Link(ipr.get_links(index)[0])


def veth_peer(host: IPRoute, inside: Link) -> Link | None:
    """The other end of the veth `inside` (read in its own namespace) when that end is in
    `host`'s namespace; None otherwise."""
    if inside.kind != "veth" or not inside.peer:
        return None
    try:
        peer = get(host, inside.peer)
    except Exception:  # NetlinkError: no link of that index here
        return None
    return peer if peer.kind == "veth" and peer.peer == inside.index else None


def addresses(ipr: IPRoute, index: int, family: int | None = None) -> list[str]:
    """The link's addresses as CIDRs (global and link scope, as `ip addr` shows them)."""
    kwargs = {"index": index} if family is None else {"index": index, "family": family}
    return [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(**kwargs)]


def routes(ipr: IPRoute, index: int) -> list[dict[str, Any]]:
    """Routes through the link in the main table: {"dst", "gw"}."""
    found = []
    for family in (2, 10):
        for r in ipr.get_routes(family=family, oif=index, table=254):
            dst = r.get_attr("RTA_DST")
            default = "0.0.0.0/0" if family == 2 else "::/0"
            found.append({"dst": f"{dst}/{r['dst_len']}" if dst else default,
                          "gw": r.get_attr("RTA_GATEWAY")})
    return found


# --- changing -------------------------------------------------------------------------------

def random_name(prefix: str = "veth") -> str:
    return f"{prefix}{os.urandom(4).hex()}"


def create_veth(host: IPRoute, pod_path: str, pod_name: str, mtu: int = 0, mac: str = "",
                host_name: str = "") -> tuple[Link, str]:
    """A veth pair: `pod_name` inside the namespace at `pod_path`, a `veth<8 hex>` end in
    `host`'s namespace (the calling thread's). Returns the host end and the pod end's MAC."""
    for _ in range(8):
        name = host_name or random_name()
        peer: dict[str, Any] = {"ifname": pod_name, "net_ns_fd": pod_path}
        if mtu:
            peer["mtu"] = mtu
        if mac:
            peer["address"] = mac
        try:
            host.link("add", ifname=name, kind="veth", peer=peer, **({"mtu": mtu} if mtu else {}))
            break
        except Exception as exc:  # NetlinkError
            if is_error(exc, errno.EEXIST) and not host_name and find(host, name):
                continue  # our random name collided: draw again
            if is_error(exc, errno.EEXIST):
                raise CNIError(f"container veth name {pod_name!r} already exists") from None
            raise CNIError(f"failed to create veth pair for {pod_name!r}: {exc}") from None
    else:
        raise CNIError("failed to find a free name for the host end of the veth pair")
    host_link = find(host, name)
    assert host_link is not None
    # The node's end is a bridge port: it must not configure itself from router
    # advertisements (the reference sets the same). `host` is this thread's namespace.
    from pycni import sysctl

    sysctl.write_quietly(f"net/ipv6/conf/{name}/accept_ra", "0")
    with socket(pod_path) as pod:
        pod_link = find(pod, pod_name)
        assert pod_link is not None
    return host_link, pod_link.mac


def delete(ipr: IPRoute, name: str) -> list[str]:
    """Delete the link; its addresses before it went. Nothing when it is gone already."""
    link = find(ipr, name)
    if link is None:
        return []
    held = addresses(ipr, link.index)
    try:
        ipr.link("del", index=link.index)
    except Exception as exc:
        if not is_error(exc, errno.ENODEV):
            raise CNIError(f"failed to delete {name!r}: {exc}") from None
    return held


def add_address(ipr: IPRoute, index: int, cidr: str) -> None:
    """Add `cidr` to the link; IPv4 gets its subnet's broadcast address, as `ip addr add
    ... brd +` and the reference plugins give it."""
    import ipaddress

    iface = ipaddress.ip_interface(cidr)
    spec: dict[str, Any] = {"index": index, "address": str(iface.ip),
                            "prefixlen": iface.network.prefixlen}
    if iface.version == 4 and iface.network.prefixlen < 31:
        spec["broadcast"] = str(iface.network.broadcast_address)
    ipr.addr("add", **spec)


def wait_oper_up(ipr: IPRoute, index: int, delays: tuple[float, ...] = (0, .05, .5, 1, 1)) -> Link:
    """Wait for a bridge port to forward (the reference's schedule)."""
    link = get(ipr, index)
    for delay in delays:
        time.sleep(delay)
        link = get(ipr, index)
        if link.operstate == "UP":
            return link
    raise CNIError(f"bridge port {link.name!r} in error state: {link.operstate}")


def configure(pod: IPRoute, ifname: str, result: Result, index_in_result: int) -> None:
    """Give the pod interface the result's addresses (those pointing at it), bring it up,
    add the result's routes (a route without a gateway takes its family's first gateway).
    Call with the thread inside the pod namespace when IPv6 addresses need enabling."""
    from pycni import sysctl

    link = find(pod, ifname)
    if link is None:
        raise CNIError(f"failed to lookup {ifname!r}")
    gateways: dict[str, str] = {}
    ipv6_enabled = False
    for ip in result.ips:
        if ip.interface != index_in_result:
            continue
        if ip.version == "6" and not ipv6_enabled:
            for name in ("lo", ifname):
                key = f"net/ipv6/conf/{name}/disable_ipv6"
                try:
                    if sysctl.read(key) != "0":
                        sysctl.write(key, "0")
                except OSError as exc:
                    raise CNIError(f"failed to enable IPv6 on {name!r}: {exc.strerror}") from None
            ipv6_enabled = True
        try:
            add_address(pod, link.index, ip.address)
        except Exception as exc:
            raise CNIError(f"failed to add IP addr {ip.address} to {ifname!r}: {exc}") from None
        if ip.gateway:
            gateways.setdefault(ip.version, ip.gateway)
    pod.link("set", index=link.index, state="up")
    for route in result.routes:
        family = "6" if ":" in route.dst else "4"
        gateway = route.gw or gateways.get(family)
        # proto boot, as the reference's routes (what `ip route` shows without "proto")
        spec: dict[str, Any] = {"dst": route.dst, "oif": link.index, "proto": 3}
        if gateway:
            spec["gateway"] = gateway
        for key in ("priority", "table"):
            value = getattr(route, key)
            if value is not None:
                spec[key] = value
        try:
            # append: a second default route (an attachment's, beside the cluster network's)
            # is added next to the first instead of failing, as the reference does since 1.2
            pod.route("append", **spec)
        except Exception as exc:
            raise CNIError(f"failed to add route '{route.dst} via {gateway} dev {ifname}': "
                           f"{exc}") from None
