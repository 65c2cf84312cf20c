"""bridge (also `cnv-bridge`): a veth pair per pod, the host end on a Linux bridge.

flannel's delegate for every pod of the default network, and the L2 attachment KubeVirt VMs
use as `cnv-bridge`. Keys and behaviour are the reference plugin's; beyond it: masquerade
through nftables too, DEL removes masquerade rules even when the pod's namespace is gone, GC
removes the rules of attachments that no longer exist.
"""

from __future__ import annotations

import errno
import ipaddress
from contextlib import ExitStack
from typing import Any

from pydantic import BaseModel

from pycni import config, firewall, ipam_delegate, link, netns, spec, sysctl
from pycni.errors import CNIError, IncompatibleVersion, InvalidConfig
from pycni.result import Interface, Result, Route
from pycni.skel import CmdArgs, Plugin, ifname_problem

MAC = config.MAC


# --- config ---------------------------------------------------------------------------------

class VlanTrunk(BaseModel):
    min_id: int | None = None
    max_id: int | None = None
    id: int | None = None

    model_config = {"populate_by_name": True,
                    "alias_generator": lambda name: {"min_id": "minID", "max_id": "maxID",
                                                     "id": "id"}[name]}


class BridgeConf(config.NetConf):
    bridge: str = "cni0"
    is_gateway: bool = False
    is_default_gateway: bool = False
    force_address: bool = False
    ip_masq: bool = False
    ip_masq_backend: str | None = None
    mtu: int = 0
    hairpin_mode: bool = False
    promisc_mode: bool = False
    vlan: int = 0
    vlan_trunk: list[VlanTrunk] | None = None
    preserve_default_vlan: bool = True
    macspoofchk: bool = False
    enabledad: bool = False
    disable_container_interface: bool = False
    port_isolation: bool = False
    mac: str = ""  # only from CNI_ARGS MAC, args.cni.mac, runtimeConfig.mac

    @property
    def vlans(self) -> list[int]:
        return trunk_vlans(self.vlan_trunk or [])


MAC_SOURCES = {"mac": config.Override(cni_args="MAC", args_cni="mac", runtime="mac")}


def trunk_vlans(trunk: list[VlanTrunk]) -> list[int]:
    """The VLAN IDs a trunk lists, sorted, validated as the reference does."""
    found: set[int] = set()
    for item in trunk:
        if (item.min_id is None) != (item.max_id is None):
            missing = "minID" if item.min_id is None else "maxID"
            raise InvalidConfig(f"minID and maxID should be configured simultaneously, "
                                f"{missing} is missing")
        if item.min_id is not None and item.max_id is not None:
            for name, value in (("minID", item.min_id), ("maxID", item.max_id)):
                if not 0 < value <= 4094:
                    raise InvalidConfig(f"incorrect trunk {name} parameter {value}")
            if item.max_id < item.min_id:
                raise InvalidConfig("minID is greater than maxID in trunk parameter")
            found.update(range(item.min_id, item.max_id + 1))
        if item.id is not None:
            if not 0 < item.id <= 4094:
                raise InvalidConfig(f"incorrect trunk id parameter {item.id}")
            found.add(item.id)
    return sorted(found)


def load_conf(args: CmdArgs) -> BridgeConf:
    conf = config.load(BridgeConf, args, MAC_SOURCES)
    conf.bridge = conf.bridge or "cni0"  # as the reference: empty is the default
    problem = ifname_problem(conf.bridge)
    if problem:
        raise InvalidConfig(f"invalid bridge name: {problem}")
    if not 0 <= conf.vlan <= 4094:
        raise InvalidConfig(f"invalid VLAN ID {conf.vlan} (must be between 0 and 4094)")
    trunk = conf.vlans  # validated here, whatever `vlan` holds
    if conf.vlan and trunk:
        raise InvalidConfig("cannot set vlan and vlanTrunk at the same time")
    if conf.mtu < 0:
        raise InvalidConfig(f"invalid MTU {conf.mtu}")
    if conf.is_default_gateway:
        conf.is_gateway = True
    if conf.hairpin_mode and conf.promisc_mode:
        raise InvalidConfig("cannot set hairpin mode and promiscuous mode at the same time")
    if conf.disable_container_interface and conf.ipam_type:
        raise InvalidConfig("disableContainerInterface cannot be used with IPAM")
    if conf.ip_masq_backend not in (None, "iptables", "nftables"):
        raise InvalidConfig(f"invalid ipMasqBackend {conf.ip_masq_backend!r}: "
                            "iptables or nftables")
    if conf.mac and not MAC.match(conf.mac):
        raise InvalidConfig(f"invalid MAC address {conf.mac!r}")
    return conf


# --- host side ------------------------------------------------------------------------------

def ensure_bridge(host: Any, conf: BridgeConf) -> link.Link:
    """The bridge, created (up, with the MTU, promiscuous and VLAN filtering asked) if missing."""
    bridge = link.find(host, conf.bridge)
    vlan_filtering = bool(conf.vlan or conf.vlan_trunk)
    if bridge is None:
        attributes: dict[str, Any] = {"ifname": conf.bridge, "kind": "bridge"}
        if conf.mtu:
            attributes["mtu"] = conf.mtu
        if vlan_filtering:
            attributes["br_vlan_filtering"] = 1
        try:
            host.link("add", **attributes)
        except Exception as exc:
            if not link.is_error(exc, errno.EEXIST):  # created meanwhile by a concurrent ADD
                hint = (" (this kernel has no bridge VLAN filtering)" if vlan_filtering
                        and link.is_error(exc, errno.EOPNOTSUPP) else "")
                raise CNIError(f"failed to create bridge {conf.bridge!r}: {exc}{hint}") from None
        bridge = link.find(host, conf.bridge)
        assert bridge is not None
    if bridge.kind != "bridge":
        raise CNIError(f"{conf.bridge!r} already exists but is not a bridge")
    if conf.promisc_mode and not bridge.promisc:
        # IFLA_PROMISCUITY is read-only: promiscuous mode is the IFF_PROMISC flag
        host.link("set", index=bridge.index, flags=link.IFF_PROMISC, change=link.IFF_PROMISC)
    sysctl.write_quietly(f"net/ipv6/conf/{conf.bridge}/accept_ra", "0")  # we own its routes
    host.link("set", index=bridge.index, state="up")
    return link.get(host, bridge.index)


def attach_port(host: Any, bridge: link.Link, port: link.Link, conf: BridgeConf) -> None:
    """Enslave the host end and apply hairpin, isolation and VLANs to the port."""
    try:
        host.link("set", index=port.index, master=bridge.index, state="up")
        host.brport("set", index=port.index, mode=int(conf.hairpin_mode))
        if conf.port_isolation:
            host.brport("set", index=port.index, isolated=1)
    except Exception as exc:  # NetlinkError
        raise CNIError(f"failed to connect {port.name!r} to bridge {bridge.name!r}: "
                       f"{exc}") from None
    try:
        if (conf.vlan or conf.vlans) and not conf.preserve_default_vlan:
            host.vlan_filter("del", index=port.index, vlan_info={"vid": 1})
        if conf.vlan:  # access port: untagged, PVID
            host.vlan_filter("add", index=port.index, vlan_info={"vid": conf.vlan, "flags": 6})
        for vid in conf.vlans:  # trunk: tagged
            host.vlan_filter("add", index=port.index, vlan_info={"vid": vid})
    except Exception as exc:  # NetlinkError
        raise CNIError(f"failed to set up VLANs on bridge port {port.name!r}: {exc}"
                       + (" (this kernel has no bridge VLAN filtering)"
                          if link.is_error(exc, errno.EOPNOTSUPP) else "")) from None


def gateway_addresses(result: Result, conf: BridgeConf) -> list[str]:
    """Point the IPs at the pod interface, fill in gateways, add default routes; the
    gateway CIDRs the bridge must hold."""
    gateways = []
    for ip in result.ips:
        ip.interface = 2
        iface = ipaddress.ip_interface(ip.address)
        if ip.gateway is None and conf.is_gateway:
            ip.gateway = str(iface.network.network_address + 1)
        if conf.is_default_gateway:
            default = "0.0.0.0/0" if iface.version == 4 else "::/0"
            if not any(r.dst == default and r.gw for r in result.routes):
                result.routes.append(Route(default, ip.gateway))
        if conf.is_gateway and ip.gateway:
            gateways.append(f"{ip.gateway}/{iface.network.prefixlen}")
    return gateways


def ensure_address(host: Any, bridge: link.Link, cidr: str, force: bool) -> None:
    """The gateway address on the bridge. An IPv4 address from another subnet (or an
    overlapping IPv6 one) is replaced with `forceAddress`, else refused."""
    wanted = ipaddress.ip_interface(cidr)
    for held in link.addresses(host, bridge.index, family=4 if wanted.version == 4 else 10):
        current = ipaddress.ip_interface(held)
        if current == wanted:
            return
        if current.ip.is_link_local:
            continue
        if wanted.version == 4 or current.network.overlaps(wanted.network):
            if not force:
                raise CNIError(f"{bridge.name!r} already has an IP address different from "
                               f"{cidr} ({held}): set forceAddress to replace it, or remove "
                               f"it (ip addr del {held} dev {bridge.name})")
            host.addr("del", index=bridge.index, address=str(current.ip),
                      prefixlen=current.network.prefixlen)
    try:
        link.add_address(host, bridge.index, cidr)
    except Exception as exc:
        if not link.is_error(exc, errno.EEXIST):
            raise CNIError(f"could not add IP address to {bridge.name!r}: {exc}") from None
    # Pin the bridge's MAC: otherwise it follows the lowest port MAC as ports come and go.
    # Read it now, with our port attached: a bridge whose last port left has none (all
    # zeros), which the kernel refuses to set.
    mac = link.get(host, bridge.index).mac
    if mac.strip("0:"):
        host.link("set", index=bridge.index, address=mac)


def ensure_vlan_gateway(host: Any, bridge: link.Link, conf: BridgeConf) -> link.Link:
    """With a VLAN the gateway lives on `<bridge>.<vlan>` (the reference's layout): a veth
    end in the node's namespace whose peer is an access port of that VLAN."""
    name = f"{conf.bridge}.{conf.vlan}"
    gateway = link.find(host, name)
    if gateway is None:
        port, _ = link.create_veth(host, netns.own_path(), name, conf.mtu)
        attach_port(host, bridge, port,
                    conf.model_copy(update={"hairpin_mode": False, "port_isolation": False}))
        gateway = link.find(host, name)
        assert gateway is not None
        host.link("set", index=gateway.index, state="up")
    return gateway


# --- the verbs ------------------------------------------------------------------------------

def cmd_add(args: CmdArgs) -> Result:
    conf = load_conf(args)
    if not conf.ipam_type and not spec.at_least(args.cni_version, "0.3.0"):
        # Refused now: the result, printed once all is done, could not say it.
        raise IncompatibleVersion(f"a {args.cni_version} result cannot hold an L2-only "
                                  "attachment (it has no IP address): use cniVersion 0.3.0 "
                                  "or later, or configure ipam")
    # The socket outlives the undo stack: the undo steps need it.
    with link.socket() as host, ExitStack() as undo:
        bridge = ensure_bridge(host, conf)
        port, pod_mac = link.create_veth(host, args.netns, args.ifname, conf.mtu, conf.mac)
        undo.callback(link.delete, host, port.name)
        attach_port(host, bridge, port, conf)
        result = Result(interfaces=[Interface(bridge.name, bridge.mac),
                                    Interface(port.name, port.mac),
                                    Interface(args.ifname, pod_mac, sandbox=args.netns)])
        if conf.macspoofchk:
            ref = firewall.spoof_ref(args.container_id, args.ifname)
            firewall.spoofcheck_add(conf.name, port.name, pod_mac, ref)
            undo.callback(firewall.spoofcheck_del, ref)

        if conf.ipam_type:
            assigned = ipam_delegate.add(conf.ipam_type, args)
            undo.callback(ipam_delegate.delete, conf.ipam_type, args)
            if not assigned.ips:
                raise CNIError("IPAM plugin returned missing IP config")
            result.ips, result.routes, result.dns = assigned.ips, assigned.routes, assigned.dns
            gateways = gateway_addresses(result, conf)
            configure_pod(args, conf, result)
            holder = bridge
            if conf.vlan and gateways:
                holder = ensure_vlan_gateway(host, bridge, conf)
                result.interfaces.append(Interface(holder.name, holder.mac))
            for cidr in gateways:
                ensure_address(host, holder, cidr, conf.force_address)
                family = "ipv6/conf/all/forwarding" if ":" in cidr else "ipv4/ip_forward"
                sysctl.write(f"net/{family}", "1")
            if conf.ip_masq:
                firewall.masquerade_add(conf.ip_masq_backend or firewall.detect_backend(),
                                        conf.name, args.container_id, args.ifname,
                                        [ip.address for ip in result.ips])
                undo.callback(firewall.masquerade_del, conf.name, args.container_id,
                              args.ifname)
        elif not conf.disable_container_interface:
            with link.socket(args.netns) as pod:
                pod.link("set", index=pod.link_lookup(ifname=args.ifname)[0], state="up")

        if not conf.disable_container_interface:
            port = link.wait_oper_up(host, port.index)
        result.interfaces[1].mac = port.mac
        result.interfaces[0].mac = link.get(host, bridge.index).mac
        if conf.dns:
            result.dns = conf.dns
        undo.pop_all()
    return result


def configure_pod(args: CmdArgs, conf: BridgeConf, result: Result) -> None:
    with netns.entered(args.netns), link.socket() as pod:
        if conf.enabledad:
            sysctl.write_quietly(f"net/ipv6/conf/{args.ifname}/enhanced_dad", "1")
            sysctl.write_quietly(f"net/ipv6/conf/{args.ifname}/accept_dad", "1")
        else:
            sysctl.write_quietly(f"net/ipv6/conf/{args.ifname}/accept_dad", "0")
        sysctl.write_quietly(f"net/ipv4/conf/{args.ifname}/arp_notify", "1")
        link.configure(pod, args.ifname, result, index_in_result=2)


def cmd_del(args: CmdArgs) -> None:
    """Remove the pod's veth, drop its rules, give back its addresses. Never the bridge.

    Rules go before the addresses: a failing IPAM DEL then leaves no rule behind, and an
    address is never handed to a new pod while the old pod's masquerade still matches it.
    """
    conf = load_conf(args)
    if args.netns and netns.exists(args.netns):
        with link.socket(args.netns) as pod:
            link.delete(pod, args.ifname)
    if conf.macspoofchk:
        firewall.spoofcheck_del(firewall.spoof_ref(args.container_id, args.ifname))
    if conf.ipam_type and conf.ip_masq:
        firewall.masquerade_del(conf.name, args.container_id, args.ifname)
    if conf.ipam_type:
        ipam_delegate.delete(conf.ipam_type, args)


def cmd_check(args: CmdArgs) -> None:
    conf = load_conf(args)
    if conf.ipam_type:
        ipam_delegate.forward("CHECK", conf.ipam_type, args)
    prev = args.prev_result
    if prev is None:
        raise InvalidConfig("required prevResult missing: CHECK needs the result of ADD")
    pod_entry = next((i for i in prev.interfaces
                      if i.name == args.ifname and i.sandbox == args.netns), None)
    if pod_entry is None:
        raise CNIError(f"prevResult has no interface {args.ifname!r} in {args.netns!r}")
    with link.socket() as host:
        bridge = link.find(host, conf.bridge)
        if bridge is None or bridge.kind != "bridge":
            raise CNIError(f"bridge {conf.bridge!r} not found")
        bridge_entry = next((i for i in prev.interfaces if i.name == conf.bridge), None)
        if bridge_entry and bridge_entry.mac and bridge_entry.mac != bridge.mac:
            raise CNIError(f"bridge {conf.bridge!r} MAC {bridge.mac} is not {bridge_entry.mac}")
        if bridge.promisc != conf.promisc_mode:
            raise CNIError(f"bridge {conf.bridge!r} promiscuous mode is {bridge.promisc}, "
                           f"configured {conf.promisc_mode}")
        with netns.entered(args.netns), link.socket() as pod:
            inside = link.find(pod, args.ifname)
            if inside is None or inside.kind != "veth":
                raise CNIError(f"veth {args.ifname!r} not found in {args.netns!r}")
            if pod_entry.mac and inside.mac != pod_entry.mac:
                raise CNIError(f"{args.ifname!r} MAC {inside.mac} is not {pod_entry.mac}")
            held = set(link.addresses(pod, inside.index))
            present = link.routes(pod, inside.index)
        peer = link.veth_peer(host, inside)
        if peer is None or peer.master != bridge.index:
            raise CNIError(f"the host end of {args.ifname!r} is not a port of {conf.bridge!r}")
    for ip in prev.ips:
        if ip.interface == 2 and ip.address not in held:
            raise CNIError(f"{args.ifname!r} lacks address {ip.address}")
    for route in prev.routes:
        if not any(r["dst"] == route.dst and (route.gw is None or r["gw"] == route.gw)
                   for r in present):
            raise CNIError(f"route {route.dst} via {route.gw} missing in {args.netns!r}")


def cmd_status(args: CmdArgs) -> None:
    conf = load_conf(args)
    if conf.ipam_type:
        ipam_delegate.forward("STATUS", conf.ipam_type, args)


def cmd_gc(args: CmdArgs) -> None:
    from pycni.config import valid_attachments

    conf = load_conf(args)
    valid = valid_attachments(args)
    firewall.masquerade_gc(conf.name, valid)
    firewall.spoofcheck_gc(conf.name, {firewall.spoof_ref(c, i) for c, i in valid})
    if conf.ipam_type:
        ipam_delegate.forward("GC", conf.ipam_type, args)


PLUGIN = Plugin("pycni bridge plugin", add=cmd_add, delete=cmd_del, check=cmd_check,
                status=cmd_status, gc=cmd_gc)
