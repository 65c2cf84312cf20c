"""vlan: the pod gets an 802.1Q VLAN interface of a node NIC (the master).

The users' VLAN 100 network on `eth0`: the pod's traffic leaves the NIC tagged. Keys and
behaviour are the reference plugin's; beyond it: configuration errors (master, VLAN ID, MTU)
are code 7 and leave nothing behind, DEL works when the master is gone, CHECK also checks the
master, STATUS and GC reach IPAM.
"""

from __future__ import annotations

from contextlib import ExitStack

from pycni import config, ipam_delegate, sublink
from pycni.errors import CNIError, InvalidConfig
from pycni.result import Result
from pycni.skel import CmdArgs, Plugin

# --- config ---------------------------------------------------------------------------------

class VlanConf(sublink.SubLinkConf):
    vlan_id: int | None = None


def load_conf(args: CmdArgs) -> VlanConf:
    conf = config.load(VlanConf, args)
    sublink.validate(conf)
    if not conf.master:
        raise InvalidConfig('"master" is required: the interface to create the VLAN on')
    if conf.vlan_id is None:
        raise InvalidConfig('"vlanId" is required (0-4094)')
    if not 0 <= conf.vlan_id <= 4094:
        raise InvalidConfig(f"invalid VLAN ID {conf.vlan_id} (must be between 0 and 4094)")
    return conf


# --- the verbs ------------------------------------------------------------------------------

def cmd_add(args: CmdArgs) -> Result:
    conf = load_conf(args)
    if not conf.ipam_type:
        raise InvalidConfig("vlan needs ipam: the pod interface gets its addresses from it")
    with sublink.sockets(args, conf) as (home, pod), ExitStack() as undo:
        master = sublink.find_master(home, conf)
        interface = sublink.create(home, pod, args, master, "vlan", conf.mtu,
                                   vlan_id=conf.vlan_id)
        undo.callback(sublink.remove, args)
        result = Result(interfaces=[interface])
        assigned = ipam_delegate.add(conf.ipam_type, args)
        undo.callback(ipam_delegate.delete, conf.ipam_type, args)
        sublink.take_addresses(result, assigned)
        sublink.configure(pod, args, result)
        result.dns = conf.dns or {}
        undo.pop_all()
    return result


def cmd_del(args: CmdArgs) -> None:
    """The master is not needed: the address is given back also when it is gone."""
    sublink.release(args, load_conf(args))


def cmd_check(args: CmdArgs) -> None:
    conf = load_conf(args)
    prev = sublink.check_start(args, conf)
    with sublink.sockets(args, conf) as (home, pod):
        master = sublink.find_master(home, conf)
        data = sublink.check(pod, args, prev, "vlan", master, conf.mtu)
    if data.get("IFLA_VLAN_ID") != conf.vlan_id:
        raise CNIError(f"container interface {args.ifname!r} has VLAN ID "
                       f"{data.get('IFLA_VLAN_ID')}, configured {conf.vlan_id}")


def cmd_status(args: CmdArgs) -> None:
    sublink.to_ipam("STATUS", args, load_conf(args))


def cmd_gc(args: CmdArgs) -> None:
    sublink.to_ipam("GC", args, load_conf(args))


PLUGIN = Plugin("pycni vlan plugin", add=cmd_add, delete=cmd_del, check=cmd_check,
                status=cmd_status, gc=cmd_gc)
