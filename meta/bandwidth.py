"""bandwidth: shape a pod's traffic with token bucket filters (chained after bridge, ptp...).

Ingress (traffic to the pod) is a tbf at the root of the host end of the pod's veth. Egress
(traffic from the pod) arrives on that host end as ingress, where tc cannot shape it: an
ingress qdisc with a u32 match-all filter redirects it (mirred) to an IFB device on the node,
whose root tbf shapes it. The reference plugin's keys and device names (`bwp` + hash of the
network name and container ID); beyond it: CHECK compares the tbf parameters, DEL also takes
our qdiscs off the host veth when it can still find it, GC removes the IFBs of attachments
that no longer exist (the IFB's alias records `<containerID>/<ifname>`).
"""

from __future__ import annotations

import errno
import hashlib
from contextlib import ExitStack
from typing import Any

from pycni import config, link, netns
from pycni.errors import CNIError, InvalidConfig
from pycni.result import Result
from pycni.skel import CmdArgs, Plugin

IFB_PREFIX = "bwp"
IFB_NAME_LENGTH = 15
TBF_HANDLE = 0x10000  # 1:
INGRESS_HANDLE = 0xFFFF0000  # ffff:
REDIRECT_CLASS = 0x10001  # 1:1, the flowid the reference gives its redirect filter
PARENTS = {"tbf": 0xFFFFFFFF, "ingress": 0xFFFFFFF1}  # TC_H_ROOT, TC_H_INGRESS
ETH_P_ALL = 0x0003
LATENCY_USEC = 25_000  # the reference's tbf latency: bounds the queue (limit)
MAX_U32 = 2**32 - 1
IFF_UP = 0x1


# --- config ---------------------------------------------------------------------------------

class BandwidthConf(config.NetConf):
    ingress_rate: int = 0  # bits per second
    ingress_burst: int = 0  # bits
    egress_rate: int = 0
    egress_burst: int = 0

    @property
    def shapes_ingress(self) -> bool:
        return self.ingress_rate > 0

    @property
    def shapes_egress(self) -> bool:
        return self.egress_rate > 0


KEYS = ("ingressRate", "ingressBurst", "egressRate", "egressBurst")


def load_conf(args: CmdArgs) -> BandwidthConf:
    """The config; `runtimeConfig.bandwidth` (capability `bandwidth`), when given, is the
    pod's own entry and replaces the four keys of the file."""
    conf = config.load(BandwidthConf, args)
    entry = conf.runtime_config.get("bandwidth")
    if entry is not None:
        if not isinstance(entry, dict):
            raise InvalidConfig("runtimeConfig.bandwidth must be a JSON object")
        runtime = config.parse(BandwidthConf, {key: entry.get(key, 0) for key in KEYS},
                               "runtimeConfig.bandwidth")
        conf = conf.model_copy(update={name: getattr(runtime, name) for name in
                                       ("ingress_rate", "ingress_burst", "egress_rate",
                                        "egress_burst")})
    validate_rate_and_burst("ingress", conf.ingress_rate, conf.ingress_burst)
    validate_rate_and_burst("egress", conf.egress_rate, conf.egress_burst)
    return conf


def validate_rate_and_burst(direction: str, rate: int, burst: int) -> None:
    if rate < 0 or burst < 0:
        raise InvalidConfig(f"{direction} rate and burst must be positive integers "
                            f"(rate {rate}, burst {burst})")
    if rate and not burst:
        raise InvalidConfig(f"if {direction}Rate is set, {direction}Burst must also be set")
    if burst and not rate:
        raise InvalidConfig(f"if {direction}Burst is set, {direction}Rate must also be set")
    if burst // 8 >= MAX_U32:
        raise InvalidConfig(f"{direction}Burst cannot be more than 4GB")
    if rate // 8 >= MAX_U32:  # pyroute2 has no TCA_TBF_RATE64
        raise InvalidConfig(f"{direction}Rate cannot be 34 Gbit/s or more")


# --- helpers --------------------------------------------------------------------------------

def ifb_name(network: str, container_id: str) -> str:
    """`bwp` + a hash of network and container: the reference's name for the IFB."""
    digest = hashlib.sha512((network + container_id).encode()).hexdigest()
    return (IFB_PREFIX + digest)[:IFB_NAME_LENGTH]


def ifb_alias(args: CmdArgs) -> str:
    return f"{args.container_id}/{args.ifname}"


def tbf_parameters(rate_bits: int, burst_bits: int) -> dict[str, int]:
    """The tbf as the reference sets it: bytes, the burst as `buffer` ticks, a 25 ms queue."""
    from pyroute2.netlink.rtnl.tcmsg.common import calc_xmittime

    rate, burst = rate_bits // 8, burst_bits // 8
    return {"rate": rate, "buffer": int(calc_xmittime(rate, burst)),
            "limit": int(rate * LATENCY_USEC / 1_000_000 + burst)}


def host_veth(host: Any, args: CmdArgs, prev: Result | None) -> link.Link:
    """The host end of the pod's veth: the peer of CNI_IFNAME, which the previous result
    must list as a host-side interface (legacy results list no interfaces at all)."""
    with link.socket(args.netns) as pod:
        inside = link.find(pod, args.ifname)
    if inside is None or inside.kind != "veth" or not inside.peer:
        raise CNIError(f"container interface {args.ifname!r} has no veth peer")
    peer = link.veth_peer(host, inside)
    if peer is None:
        raise CNIError(f"veth peer with index {inside.peer} of {args.ifname!r} is not in the "
                       "host namespace")
    if prev is not None and prev.interfaces and not any(
            i.name == peer.name and not i.sandbox for i in prev.interfaces):
        raise CNIError(f"prevResult does not list {peer.name!r}, the host end of "
                       f"{args.ifname!r}")
    return peer


def qdiscs(host: Any, index: int) -> list[Any]:
    return [q for q in host.get_qdiscs(index=index) if q["index"] == index]


def find_qdisc(host: Any, index: int, kind: str, handle: int) -> Any | None:
    return next((q for q in qdiscs(host, index)
                 if q.get_attr("TCA_KIND") == kind and q["handle"] == handle), None)


def add_tbf(host: Any, index: int, name: str, rate_bits: int, burst_bits: int) -> None:
    try:  # in bytes and microseconds; pyroute2 derives buffer and limit as tbf_parameters
        host.tc("add", "tbf", index, TBF_HANDLE, rate=rate_bits // 8, burst=burst_bits // 8,
                latency=LATENCY_USEC)
    except Exception as exc:  # NetlinkError
        raise CNIError(f"failed to add tbf qdisc to {name!r}: {exc}") from None


def delete_qdisc(host: Any, index: int, kind: str, handle: int) -> None:
    """Remove the qdisc if it is there; gone is fine."""
    if find_qdisc(host, index, kind, handle) is None:
        return
    try:
        # No kind: pyroute2 would want a tbf's rate again just to delete it.
        host.tc("del", index=index, handle=handle, parent=PARENTS[kind])
    except Exception as exc:
        if not link.is_error(exc, errno.ENOENT, errno.EINVAL, errno.ENODEV):
            raise CNIError(f"failed to delete {kind} qdisc of link {index}: {exc}") from None


def create_ifb(host: Any, name: str, port: link.Link, alias: str) -> link.Link:
    """The IFB, with the host veth's MTU, labelled with the attachment, up."""
    link.delete(host, name)  # one left by an earlier, failed ADD: start afresh
    try:
        host.link("add", ifname=name, kind="ifb", mtu=port.mtu)
        created = link.find(host, name)
        assert created is not None
        host.link("set", index=created.index, ifalias=alias, state="up")
    except Exception as exc:  # NetlinkError
        link.delete(host, name)
        raise CNIError(f"failed to create ifb device {name!r}: {exc}") from None
    return link.get(host, created.index)


def redirect_to(host: Any, port: link.Link, ifb: link.Link) -> None:
    """ingress qdisc + u32 match-all filter on the host veth, mirred to the IFB's egress.
    (u32, as the reference: matchall is not built in every kernel.)"""
    try:
        host.tc("add", "ingress", port.index, INGRESS_HANDLE)
        host.tc("add-filter", "u32", port.index, parent=INGRESS_HANDLE, prio=1,
                protocol=ETH_P_ALL, keys=["0x0/0x0+0"], target=REDIRECT_CLASS,
                action={"kind": "mirred", "direction": "egress", "action": "redirect",
                        "ifindex": ifb.index})
    except Exception as exc:  # NetlinkError
        raise CNIError(f"failed to redirect {port.name!r} to {ifb.name!r}: {exc}") from None


def has_filters(host: Any, index: int) -> bool:
    """Whether the link's ingress qdisc holds any filter."""
    try:
        return bool(host.get_filters(index=index, parent=INGRESS_HANDLE))
    except Exception:  # NetlinkError: no ingress qdisc
        return False


def redirect_target(host: Any, index: int) -> int | None:
    """The ifindex the host veth's ingress filter redirects to, if any."""
    for found in host.get_filters(index=index, parent=INGRESS_HANDLE):
        actions = found.get_nested("TCA_OPTIONS", "TCA_U32_ACT")
        for _, action in actions["attrs"] if actions else []:
            parms = action.get_nested("TCA_ACT_OPTIONS", "TCA_MIRRED_PARMS")
            if parms:
                return int(parms["ifindex"])
    return None


# --- the verbs ------------------------------------------------------------------------------

def cmd_add(args: CmdArgs) -> Result:
    conf = load_conf(args)
    prev = args.require_prev_result()
    if not (conf.shapes_ingress or conf.shapes_egress):
        return prev
    with link.socket() as host, ExitStack() as undo:
        port = host_veth(host, args, prev)
        if conf.shapes_ingress:
            add_tbf(host, port.index, port.name, conf.ingress_rate, conf.ingress_burst)
            undo.callback(delete_qdisc, host, port.index, "tbf", TBF_HANDLE)
        if conf.shapes_egress:
            ifb = create_ifb(host, ifb_name(conf.name, args.container_id), port,
                             ifb_alias(args))
            undo.callback(link.delete, host, ifb.name)
            undo.callback(delete_qdisc, host, port.index, "ingress", INGRESS_HANDLE)
            redirect_to(host, port, ifb)
            add_tbf(host, ifb.index, ifb.name, conf.egress_rate, conf.egress_burst)
        undo.pop_all()
    return prev


def cmd_del(args: CmdArgs) -> None:
    """Remove the IFB (its qdiscs go with it) and, while the pod's veth still exists, our
    qdiscs on its host end. Needs neither the namespace nor prevResult."""
    conf = load_conf(args)
    with link.socket() as host:
        ifb = link.find(host, ifb_name(conf.name, args.container_id))
        port = None
        if args.netns and netns.exists(args.netns):
            try:
                port = host_veth(host, args, None)
            except CNIError:
                port = None  # the pod's interface is gone already: so is its host end
        if port is not None:
            if conf.shapes_ingress:
                delete_qdisc(host, port.index, "tbf", TBF_HANDLE)
            target = redirect_target(host, port.index)
            # ours: it redirects to our IFB, or it is empty (an ADD that died before its
            # filter)
            if (ifb is not None and target == ifb.index) or not has_filters(host, port.index):
                delete_qdisc(host, port.index, "ingress", INGRESS_HANDLE)
        if ifb is not None:
            link.delete(host, ifb.name)


def tbf_problem(host: Any, index: int, name: str, rate_bits: int, burst_bits: int) -> str:
    """What is wrong with the tbf at the root of `name` ("" if nothing)."""
    qdisc = find_qdisc(host, index, "tbf", TBF_HANDLE)
    if qdisc is None:
        return f"no tbf qdisc on {name!r}"
    held = qdisc.get_nested("TCA_OPTIONS", "TCA_TBF_PARMS")
    wanted = tbf_parameters(rate_bits, burst_bits)
    for key in ("rate", "buffer"):
        if held is None or held[key] != wanted[key]:
            return (f"tbf {key} on {name!r} is {held[key] if held else None}, "
                    f"configured {wanted[key]}")
    return ""


def cmd_check(args: CmdArgs) -> None:
    conf = load_conf(args)
    prev = args.require_prev_result()
    with link.socket() as host:
        port = host_veth(host, args, prev)
        if conf.shapes_ingress:
            problem = tbf_problem(host, port.index, port.name, conf.ingress_rate,
                                  conf.ingress_burst)
            if problem:
                raise CNIError(problem)
        if conf.shapes_egress:
            name = ifb_name(conf.name, args.container_id)
            ifb = link.find(host, name)
            if ifb is None or ifb.kind != "ifb":
                raise CNIError(f"ifb device {name!r} not found")
            if redirect_target(host, port.index) != ifb.index:
                raise CNIError(f"{port.name!r} does not redirect its ingress to {name!r}")
            problem = tbf_problem(host, ifb.index, name, conf.egress_rate, conf.egress_burst)
            if problem:
                raise CNIError(problem)


def cmd_gc(args: CmdArgs) -> None:
    """Remove this network's IFBs whose attachment is not in the runtime's valid list."""
    from pycni.config import valid_attachments

    conf = load_conf(args)
    valid = valid_attachments(args)
    with link.socket() as host:
        for message in host.get_links():
            found = link.Link(message)
            if found.kind != "ifb" or not found.name.startswith(IFB_PREFIX):
                continue
            if not found.alias and not found.flags & IFF_UP:
                # made by an ADD that died before labelling it (which it does at once,
                # bringing it up): nothing uses it
                link.delete(host, found.name)
                continue
            container_id, slash, ifname = found.alias.partition("/")
            if not slash or found.name != ifb_name(conf.name, container_id):
                continue  # not ours, or another network's
            if (container_id, ifname) not in valid:
                link.delete(host, found.name)


def cmd_status(args: CmdArgs) -> None:
    load_conf(args)


PLUGIN = Plugin("pycni bandwidth plugin", add=cmd_add, delete=cmd_del, check=cmd_check,
                status=cmd_status, gc=cmd_gc)
