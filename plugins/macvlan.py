"""macvlan: the pod gets its own MAC on a node NIC (the master), on the NIC's L2 segment.

The users' business network: pods reach servers on `eth1`'s segment directly, no bridge, no
encapsulation. Keys and behaviour are the reference plugin's; beyond it: configuration errors
(master missing, MTU, mode, MAC) are code 7 and leave nothing behind, DEL works when the
master is gone, CHECK also checks the master, MTU and addresses, STATUS and GC reach IPAM.
"""

from __future__ import annotations

from contextlib import ExitStack

from pycni import config, ipam_delegate, spec, sublink
from pycni.errors import CNIError, IncompatibleVersion, InvalidConfig
from pycni.result import Result
from pycni.skel import CmdArgs, Plugin

MAC = config.MAC
# IFLA_MACVLAN_MODE values
MODES = {"bridge": 4, "private": 1, "vepa": 2, "passthru": 8}


# --- config ---------------------------------------------------------------------------------

class MacvlanConf(sublink.SubLinkConf):
    mode: str = "bridge"
    mac: str = ""
    bcqueuelen: int = 0  # broadcast queue length of the master's macvlan port; 0: kernel's


MAC_SOURCES = {"mac": config.Override(cni_args="MAC", args_cni="mac", runtime="mac")}


def load_conf(args: CmdArgs) -> MacvlanConf:
    conf = config.load(MacvlanConf, args, MAC_SOURCES)
    sublink.validate(conf)
    conf.mode = conf.mode or "bridge"
    if conf.mode not in MODES:
        raise InvalidConfig(f"unknown macvlan mode {conf.mode!r}: bridge, private, vepa "
                            "or passthru")
    if conf.mac:
        if not MAC.match(conf.mac):
            raise InvalidConfig(f"invalid MAC address {conf.mac!r}")
        conf.mac = conf.mac.replace("-", ":").lower()
    if not 0 <= conf.bcqueuelen < 2**32:
        raise InvalidConfig(f"invalid bcqueuelen {conf.bcqueuelen}")
    return conf


def macvlan_attributes(conf: MacvlanConf) -> dict[str, object]:
    """The link attributes of a new macvlan. pyroute2 does not know the broadcast queue
    length attribute (Linux 5.11); it learns it here, once per process."""
    attributes: dict[str, object] = {"macvlan_mode": MODES[conf.mode]}
    if conf.mac:
        attributes["address"] = conf.mac
    if conf.bcqueuelen:
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg, macvx_data

        class MacvlanData(macvx_data):  # type: ignore[misc]
            nla_map = (*macvx_data.nla_map, ("IFLA_MACVLAN_BC_QUEUE_LEN", "uint32"),
                       ("IFLA_MACVLAN_BC_QUEUE_LEN_USED", "uint32"),
                       ("IFLA_MACVLAN_BC_CUTOFF", "int32"))

        ifinfmsg.ifinfo.register_link_kind(module={"macvlan": MacvlanData})
        attributes["macvlan_bc_queue_len"] = conf.bcqueuelen
    return attributes


# --- the verbs ------------------------------------------------------------------------------

def cmd_add(args: CmdArgs) -> Result:
    conf = load_conf(args)
    if not conf.ipam_type and not spec.at_least(args.cni_version, "0.3.0"):
        raise IncompatibleVersion(f"a {args.cni_version} result cannot hold an L2-only "
                                  "attachment (it has no IP address): use cniVersion 0.3.0 "
                                  "or later, or configure ipam")
    with sublink.sockets(args, conf) as (home, pod), ExitStack() as undo:
        master = sublink.find_master(home, conf)
        interface = sublink.create(home, pod, args, master, "macvlan", conf.mtu,
                                   **macvlan_attributes(conf))
        undo.callback(sublink.remove, args)
        result = Result(interfaces=[interface])
        if conf.ipam_type:
            assigned = ipam_delegate.add(conf.ipam_type, args)
            undo.callback(ipam_delegate.delete, conf.ipam_type, args)
            sublink.take_addresses(result, assigned)
        sublink.configure(pod, args, result)
        result.dns = conf.dns or {}
        undo.pop_all()
    return result


def cmd_del(args: CmdArgs) -> None:
    """The link goes with the pod's namespace anyway; the address must be given back even
    when the namespace is gone. The master is not needed."""
    sublink.release(args, load_conf(args))


def cmd_check(args: CmdArgs) -> None:
    conf = load_conf(args)
    prev = sublink.check_start(args, conf)
    with sublink.sockets(args, conf) as (home, pod):
        master = sublink.find_master(home, conf)
        data = sublink.check(pod, args, prev, "macvlan", master, conf.mtu)
    mode = next((name for name, value in MODES.items()
                 if value == data.get("IFLA_MACVLAN_MODE")), data.get("IFLA_MACVLAN_MODE"))
    if mode != conf.mode:
        raise CNIError(f"container macvlan mode {mode} does not match expected value: "
                       f"{conf.mode}")


def cmd_status(args: CmdArgs) -> None:
    sublink.to_ipam("STATUS", args, load_conf(args))


def cmd_gc(args: CmdArgs) -> None:
    sublink.to_ipam("GC", args, load_conf(args))


PLUGIN = Plugin("pycni macvlan plugin", add=cmd_add, delete=cmd_del, check=cmd_check,
                status=cmd_status, gc=cmd_gc)
