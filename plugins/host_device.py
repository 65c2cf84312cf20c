"""host-device: move a device of the node into the pod, and give it back on DEL.

Keys and behaviour are the reference plugin's (v1.1.1 and later): the device is chosen by
name, MAC, sysfs path or PCI address (also the `deviceID` a device plugin passes), moves into
the pod through a temporary namespace so its name can never clash there, and is renamed to
CNI_IFNAME. Beyond the reference: exactly one selector is accepted; what DEL needs is saved
per attachment (original name, MTU, MAC, alias, up state, and how to recognise the device),
so DEL finds the device by its index and identity in the pod, never by name alone, releases
IPAM first (also when the pod's namespace is gone), restores MTU and MAC, returns the device
under a free name when another link took its own meanwhile, and succeeds when repeated.
The moves themselves are `pycni.device`'s, shared with sriov.
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from typing import Any

from pydantic import Field

from pycni import config, device, ipam_delegate, link, netns, spec, store
from pycni.errors import CNIError, IncompatibleVersion, InvalidConfig
from pycni.result import Interface, Result
from pycni.skel import CmdArgs, Plugin

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from pyroute2 import IPRoute

DEFAULT_DATA_DIR = "/var/lib/cni/host-device"
DATA_DIR_ENV = "PYCNI_HOST_DEVICE_DATA_DIR"  # default for `dataDir` (the tests use it)
MAC = config.MAC


# --- config ---------------------------------------------------------------------------------

class HostDeviceConf(config.NetConf):
    device: str = ""
    hwaddr: str = ""
    kernelpath: str = ""
    pci_bus_id: str = Field("", alias="pciBusID")
    device_id: str = Field("", alias="deviceID")  # runtimeConfig.deviceID (device plugins)
    mtu: int = 0
    data_dir: str = ""

    @property
    def pci_address(self) -> str:
        """The PCI address chosen by `pciBusID` or `deviceID`, in its full form."""
        return device.full_pci_address(self.device_id or self.pci_bus_id)


OVERRIDES = {"device_id": config.Override(runtime="deviceID")}


def load_conf(args: CmdArgs, selecting: bool = True) -> HostDeviceConf:
    """The config; `selecting`: the device selectors must name exactly one device (ADD and
    CHECK; DEL, STATUS and GC work from saved state and never refuse over them)."""
    conf = config.load(HostDeviceConf, args, OVERRIDES)
    if conf.mtu < 0:
        raise InvalidConfig(f"invalid MTU {conf.mtu}")
    if not selecting:
        return conf
    selectors = {"device": conf.device, "hwaddr": conf.hwaddr, "kernelpath": conf.kernelpath,
                 "pciBusID": conf.pci_bus_id, "deviceID": conf.device_id}
    if conf.pci_bus_id.lower() == conf.device_id.lower():
        selectors["pciBusID"] = ""  # the same device named twice is one choice
    given = [key for key, value in selectors.items() if value]
    if not given:
        raise InvalidConfig('specify one of "device", "hwaddr", "kernelpath", "pciBusID" or '
                            'runtimeConfig "deviceID"')
    if len(given) > 1:
        raise InvalidConfig(f"specify only one device selector, got {' and '.join(given)}")
    if conf.hwaddr and not MAC.match(conf.hwaddr):
        raise InvalidConfig(f"failed to parse MAC address {conf.hwaddr!r}")
    if conf.kernelpath and (not conf.kernelpath.startswith("/sys/devices/")
                            or os.path.normpath(conf.kernelpath) != conf.kernelpath.rstrip("/")):
        raise InvalidConfig(f"kernel device path {conf.kernelpath!r} must be absolute and "
                            "begin with /sys/devices/")
    if conf.pci_address and not device.PCI_ADDRESS.match(conf.pci_address):
        raise InvalidConfig(f"invalid PCI address {conf.pci_address!r} "
                            "(expected domain:bus:device.function, e.g. 0000:03:00.1)")
    return conf


# --- finding the device on the node ---------------------------------------------------------

def netdev_names(directory: str) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except OSError:
        return []


def pci_net_directory(args: CmdArgs, pci_address: str) -> str:
    """`/sys/bus/pci/devices/<address>/net`, or its virtio child's for virtio devices."""
    base = device.sysfs_path(args.environ, f"/sys/bus/pci/devices/{pci_address}")
    if os.path.lexists(os.path.join(base, "net")):
        return os.path.join(base, "net")
    virtio = sorted(name for name in netdev_names(base) if name.startswith("virtio"))
    return os.path.join(base, virtio[0], "net") if virtio else os.path.join(base, "net")


def find_device(host: IPRoute, args: CmdArgs, conf: HostDeviceConf) -> Any:
    """The netlink message of the selected device in the node's namespace; code 7 when the
    node has none or the device is in use (a port of a bridge or bond)."""
    found: Any = None
    if conf.device:
        what = f"device {conf.device!r}"
        indexes = host.link_lookup(ifname=conf.device)
        found = host.get_links(indexes[0])[0] if indexes else None
    elif conf.hwaddr:
        mac = conf.hwaddr.replace("-", ":").lower()
        what = f"a device with MAC {mac}"
        holders = [m for m in host.get_links() if (m.get_attr("IFLA_ADDRESS") or "") == mac]
        if len(holders) > 1:  # VLANs and bond ports share MACs: the one it belongs to
            holders = [m for m in holders if device.permanent_mac(m) == mac] or holders
        if len(holders) > 1:
            names = ", ".join(repr(m.get_attr("IFLA_IFNAME")) for m in holders)
            raise InvalidConfig(f"{names} all have MAC {mac}: select the device by name")
        found = holders[0] if holders else None
    else:
        if conf.kernelpath:
            directory = device.sysfs_path(args.environ, os.path.join(conf.kernelpath, "net"))
            what = f"a network device at {conf.kernelpath!r}"
        else:
            directory = pci_net_directory(args, conf.pci_address)
            what = f"a network device with PCI address {conf.pci_address}"
        for name in netdev_names(directory):
            indexes = host.link_lookup(ifname=name)
            if indexes:
                found = host.get_links(indexes[0])[0]
                break
    if found is None:
        raise InvalidConfig(f"failed to find host device: no {what} on the node")
    chosen = link.Link(found)
    if chosen.master:
        master = link.get(host, chosen.master).name
        raise InvalidConfig(f"device {chosen.name!r} is in use: it is a port of {master!r}")
    if chosen.flags & device.IFF_LOOPBACK:
        raise InvalidConfig(f"device {chosen.name!r} is the node's loopback")
    return found


# --- saved state ----------------------------------------------------------------------------

def state_store(args: CmdArgs, conf: HostDeviceConf) -> store.Store:
    root = conf.data_dir or args.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return store.Store(root, conf.name)


def read_record(saved: store.Store, key: str) -> dict[str, Any] | None:
    return saved.read_object(key, "remove it and return the device by hand if it is still in "
                                  "the pod")


def describe(message: Any, args: CmdArgs, conf: HostDeviceConf) -> dict[str, Any]:
    """What DEL needs to find the device in the pod and give it back as it was."""
    bus = message.get_attr("IFLA_PARENT_DEV_BUS_NAME") or ""
    parent = message.get_attr("IFLA_PARENT_DEV_NAME") or ""
    return {"containerID": args.container_id, "ifname": args.ifname, "netns": args.netns,
            **device.original(link.Link(message)), **device.identity(message),
            "pciAddress": parent if bus == "pci" else conf.pci_address}


# --- the attached device in the pod ---------------------------------------------------------

def attached(args: CmdArgs, record: dict[str, Any]) -> bool:
    """The saved attachment's device is still in its pod."""
    if not netns.exists(args.netns) or "podIndex" not in record:
        return False
    with link.socket(args.netns) as pod:
        return device.locate(pod, record) is not None


def return_reference_attachment(args: CmdArgs) -> None:
    """No saved state (an attachment the reference plugin made, or state lost): do as the
    reference does, if CNI_IFNAME in the pod carries the original name in its alias."""
    with link.socket(args.netns) as pod, link.socket() as host:
        found = link.find(pod, args.ifname)
        if found is None or not found.alias or found.flags & device.IFF_LOOPBACK:
            return
        device.move_out(pod, host, found, {"name": found.alias, "alias": "",
                                           "netns": args.netns})


# --- the verbs ------------------------------------------------------------------------------

def cmd_add(args: CmdArgs) -> Result:
    conf = load_conf(args)
    if not conf.ipam_type and not spec.at_least(args.cni_version, "0.3.0"):
        # Refused now: the result, printed once all is done, could not say it.
        raise IncompatibleVersion(f"a {args.cni_version} result cannot hold an L2-only "
                                  "attachment (it has no IP address): use cniVersion 0.3.0 "
                                  "or later, or configure ipam")
    saved, key = state_store(args, conf), device.attachment_key(args.container_id, args.ifname)
    result = Result()
    with saved.locked(), link.socket() as host, ExitStack() as undo:
        earlier = read_record(saved, key)
        if earlier and not earlier.get("dpdk") and attached(args, earlier):
            raise InvalidConfig(f"{args.ifname!r} is already attached to container "
                                f"{args.container_id!r}: DEL it first")
        if conf.pci_address and device.has_userspace_driver(args.environ, conf.pci_address):
            record: dict[str, Any] = {"containerID": args.container_id, "ifname": args.ifname,
                                      "netns": args.netns, "dpdk": True,
                                      "pciAddress": conf.pci_address}
            saved.write(key, json.dumps(record, indent=1).encode())
            undo.callback(saved.delete, key)
        else:
            message = find_device(host, args, conf)
            record = describe(message, args, conf)
            # Saved before the device moves: a DEL after a crash anywhere on the way knows
            # what to give back, and how to recognise it in the pod (its MAC stays).
            record["podMac"] = link.Link(message).mac
            saved.write(key, json.dumps(record, indent=1).encode())
            undo.callback(saved.delete, key)
            with link.socket(args.netns) as pod:
                device.move_in(host, link.Link(message), args.ifname, args.netns,
                               {"mtu": conf.mtu} if conf.mtu else None)
                inside = link.find(pod, args.ifname)
                assert inside is not None
                record.update(podIndex=inside.index, podMac=inside.mac)
                undo.callback(device.return_device, args.netns, record)
                pod.link("set", index=inside.index, state="up")
            saved.write(key, json.dumps(record, indent=1).encode())
            result.interfaces = [Interface(args.ifname, inside.mac, sandbox=args.netns,
                                           mtu=inside.mtu, pci_id=record["pciAddress"] or None)]

        if conf.ipam_type:
            assigned = ipam_delegate.add(conf.ipam_type, args)
            undo.callback(ipam_delegate.delete, conf.ipam_type, args)
            if not assigned.ips:
                raise CNIError("IPAM plugin returned missing IP config")
            result.ips, result.routes, result.dns = assigned.ips, assigned.routes, assigned.dns
            for ip in result.ips:
                ip.interface = 0 if result.interfaces else None
            if result.interfaces:
                with netns.entered(args.netns), link.socket() as pod:
                    link.configure(pod, args.ifname, result, index_in_result=0)
        if conf.dns:
            result.dns = conf.dns
        undo.pop_all()
    return result


def cmd_del(args: CmdArgs) -> None:
    """Release the address, give the device back, forget the attachment; what is gone
    already is fine. IPAM goes first, so a pod namespace that is gone (or a device that
    cannot come back) never leaks the address."""
    conf = load_conf(args, selecting=False)
    saved, key = state_store(args, conf), device.attachment_key(args.container_id, args.ifname)
    with saved.locked():
        record = read_record(saved, key)
        if conf.ipam_type:
            ipam_delegate.delete(conf.ipam_type, args)
        if record is not None and not record.get("dpdk"):
            # Without CNI_NETNS the namespace ADD saw may still be there: the device with it.
            pod_path = args.netns or str(record.get("netns") or "")
            if device.is_namespace(pod_path):
                device.return_device(pod_path, record)
        elif record is None and device.is_namespace(args.netns):
            return_reference_attachment(args)
        saved.delete(key)


def cmd_check(args: CmdArgs) -> None:
    conf = load_conf(args)
    if conf.ipam_type:
        ipam_delegate.forward("CHECK", conf.ipam_type, args)
    prev = args.prev_result
    if prev is None:
        raise InvalidConfig("required prevResult missing: CHECK needs the result of ADD")
    key = device.attachment_key(args.container_id, args.ifname)
    record = read_record(state_store(args, conf), key)
    if record is not None and record.get("dpdk"):
        return  # nothing of it lives in the pod
    what = f"the device {record.get('name')!r}" if record is not None else ""
    device.check_attached(args, prev, record, what)


def cmd_status(args: CmdArgs) -> None:
    conf = load_conf(args, selecting=False)
    if conf.ipam_type:
        ipam_delegate.forward("STATUS", conf.ipam_type, args)


def cmd_gc(args: CmdArgs) -> None:
    """Forget attachments the runtime no longer knows (their DEL came, or never will: a
    device in a pod namespace that is gone went back to the node with it), then IPAM's."""
    conf = load_conf(args, selecting=False)
    valid = {device.attachment_key(container, ifname)
             for container, ifname in config.valid_attachments(args)}
    saved = state_store(args, conf)
    with saved.locked():
        for key in saved.names():
            if key not in valid:
                saved.delete(key)
    if conf.ipam_type:
        ipam_delegate.forward("GC", conf.ipam_type, args)


PLUGIN = Plugin("pycni host-device plugin", add=cmd_add, delete=cmd_del, check=cmd_check,
                status=cmd_status, gc=cmd_gc)
