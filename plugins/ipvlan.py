"""ipvlan: the pod shares a node NIC's MAC (the master) and gets its own IP addresses on it.

For segments that allow one MAC per port, or with many pods per NIC. In L2 mode the pods
answer ARP on the NIC's segment; in L3 and L3S modes the node routes for them. Chained after
a plugin whose result names a single interface, that interface is the master and its result's
addresses are used when there is no `ipam`. Keys and behaviour are the reference plugin's;
beyond it: configuration errors are code 7 and leave nothing behind, DEL works when the
master is gone, CHECK also checks the master, STATUS and GC reach IPAM.
"""

from __future__ import annotations

from contextlib import ExitStack

from pycni import config, ipam_delegate, sublink
from pycni.errors import CNIError, InvalidConfig
from pycni.result import Result
from pycni.skel import CmdArgs, Plugin

# IFLA_IPVLAN_MODE values
MODES = {"l2": 0, "l3": 1, "l3s": 2}


# --- config ---------------------------------------------------------------------------------

class IpvlanConf(sublink.SubLinkConf):
    mode: str = "l2"


def load_conf(args: CmdArgs) -> IpvlanConf:
    conf = config.load(IpvlanConf, args)
    sublink.validate(conf)
    conf.mode = conf.mode or "l2"
    if conf.mode not in MODES:
        raise InvalidConfig(f"unknown ipvlan mode {conf.mode!r}: l2, l3 or l3s")
    return conf


def chained_master(prev: Result) -> str:
    """Chained without `master`: the previous result's one named interface."""
    if len(prev.interfaces) != 1 or not prev.interfaces[0].name:
        raise InvalidConfig("chained master failure: prevResult lacks a single named "
                            "interface (set \"master\")")
    return prev.interfaces[0].name


# --- the verbs ------------------------------------------------------------------------------

def cmd_add(args: CmdArgs) -> Result:
    conf = load_conf(args)
    prev = args.prev_result
    if not conf.ipam_type and (prev is None or not prev.ips):
        raise InvalidConfig("ipvlan needs ipam, or a prevResult with IPs when chained")
    if not conf.master and prev is not None:
        conf.master = chained_master(prev)
    with sublink.sockets(args, conf) as (home, pod), ExitStack() as undo:
        master = sublink.find_master(home, conf)
        interface = sublink.create(home, pod, args, master, "ipvlan", conf.mtu,
                                   ipvlan_mode=MODES[conf.mode])
        undo.callback(sublink.remove, args)
        result = Result(interfaces=[interface])
        if conf.ipam_type:
            assigned = ipam_delegate.add(conf.ipam_type, args)
            undo.callback(ipam_delegate.delete, conf.ipam_type, args)
        else:
            assert prev is not None
            assigned = prev
        sublink.take_addresses(result, assigned)
        sublink.configure(pod, args, result)
        result.dns = conf.dns or {}
        undo.pop_all()
    return result


def cmd_del(args: CmdArgs) -> None:
    """Chained without `ipam`, the addresses belong to the previous plugin: only the link
    goes. The master is not needed."""
    sublink.release(args, load_conf(args))


def cmd_check(args: CmdArgs) -> None:
    conf = load_conf(args)
    prev = sublink.check_start(args, conf)
    with sublink.sockets(args, conf) as (home, pod):
        # Chained without `master` it was the previous plugin's interface, which the final
        # result no longer names: the master is then not checked.
        master = (sublink.find_master(home, conf) if conf.master or conf.ipam_type
                  else None)
        data = sublink.check(pod, args, prev, "ipvlan", master, conf.mtu)
    mode = next((name for name, value in MODES.items()
                 if value == data.get("IFLA_IPVLAN_MODE")), data.get("IFLA_IPVLAN_MODE"))
    if mode != conf.mode:
        raise CNIError(f"container ipvlan mode {mode} does not match expected value: "
                       f"{conf.mode}")


def cmd_status(args: CmdArgs) -> None:
    sublink.to_ipam("STATUS", args, load_conf(args))


def cmd_gc(args: CmdArgs) -> None:
    sublink.to_ipam("GC", args, load_conf(args))


PLUGIN = Plugin("pycni ipvlan plugin", add=cmd_add, delete=cmd_del, check=cmd_check,
                status=cmd_status, gc=cmd_gc)
