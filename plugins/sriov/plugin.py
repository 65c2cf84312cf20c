"""sriov: lend an SR-IOV virtual function (VF) of the node to a pod, and take it back on DEL.

Keys and behaviour are sriov-cni's: the VF is named by its PCI address (`deviceID`, as a
device plugin passes it), its PF-side settings (MAC, VLAN, spoof check, trust, link state,
rates) are made on the PF, and its netdev moves into the pod as CNI_IFNAME; a VF bound to a
userspace (DPDK) driver stays where it is and only gets IPAM. Beyond sriov-cni: `vf` with a
PF's address (the users' configuration), the netdev moves through a temporary namespace
(`pycni.device`, shared with host-device) and is found by identity on DEL, and the VF's holder
is recorded with an owner token, so an old pod's late DEL never resets a VF a new pod holds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from pycni.plugins.sriov import pf, sysfs
from pydantic import Field

from pycni import config, device, ipam_delegate, link, netns, spec, store
from pycni.errors import (
    CNIError,
    IncompatibleVersion,
    InvalidConfig,
    IOFailure,
    TryAgainLater,
)
from pycni.result import Interface, Result
from pycni.skel import CmdArgs, Plugin

DEFAULT_DATA_DIR = "/var/lib/cni/sriov"
DATA_DIR_ENV = "PYCNI_SRIOV_DATA_DIR"  # default for `dataDir` (the tests use it)
MAC = config.MAC
LOG_LEVELS = {"panic": "CRITICAL", "error": "ERROR", "warning": "WARNING", "info": "INFO",
              "debug": "DEBUG"}


# --- config ---------------------------------------------------------------------------------

class SriovConf(config.NetConf):
    device_id: str = Field("", alias="deviceID")  # also runtimeConfig.deviceID
    pci_bus_id: str = Field("", alias="pciBusID")
    vf: int | None = None  # with a PF's address in deviceID: which of its VFs
    vlan: int | None = None
    vlan_qos: int | None = Field(None, alias="vlanQoS")
    vlan_proto: str | None = Field(None, alias="vlanProto")
    mac: str = ""  # also CNI_ARGS MAC, args.cni.mac, runtimeConfig.mac
    spoofchk: str = ""
    trust: str = ""
    link_state: str = Field("", alias="link_state")
    min_tx_rate: int | None = Field(None, alias="min_tx_rate")
    max_tx_rate: int | None = Field(None, alias="max_tx_rate")
    log_level: str = ""
    log_file: str = ""
    data_dir: str = ""

    @property
    def pci_address(self) -> str:
        return device.full_pci_address(self.device_id or self.pci_bus_id)


OVERRIDES = {"device_id": config.Override(runtime="deviceID"),
             "mac": config.Override(cni_args="MAC", args_cni="mac", runtime="mac")}


def load_conf(args: CmdArgs, checking: bool = True) -> SriovConf:
    """The config; `checking`: the VF and its settings must be valid (ADD and CHECK; DEL,
    STATUS and GC work from saved state and never refuse over them)."""
    conf = config.load(SriovConf, args, OVERRIDES)
    if conf.log_level or conf.log_file:
        from pycni import log

        log.setup(LOG_LEVELS.get(conf.log_level.lower()), conf.log_file or None)
    if not checking:
        return conf
    if conf.device_id and conf.pci_bus_id and (
            device.full_pci_address(conf.pci_bus_id) != conf.pci_address):
        raise InvalidConfig(f'"deviceID" {conf.device_id} and "pciBusID" {conf.pci_bus_id} '
                            "name different devices")
    if not conf.pci_address:
        raise InvalidConfig('VF PCI address is required: "deviceID" (or runtimeConfig '
                            '"deviceID" from a device plugin)')
    if not device.PCI_ADDRESS.match(conf.pci_address):
        raise InvalidConfig(f"invalid PCI address {conf.device_id or conf.pci_bus_id!r} "
                            "(expected domain:bus:device.function, e.g. 0000:03:02.0)")
    if conf.vf is not None and conf.vf < 0:
        raise InvalidConfig(f"invalid vf {conf.vf}: a VF index is 0 or more")
    check_vlan(conf)
    conf.spoofchk, conf.trust = conf.spoofchk.lower(), conf.trust.lower()
    conf.link_state = conf.link_state.lower()
    for key, value in (("spoofchk", conf.spoofchk), ("trust", conf.trust)):
        if value and value not in ("on", "off"):
            raise InvalidConfig(f"invalid {key} {value!r}: on or off")
    if conf.link_state and conf.link_state not in pf.LINK_STATES:
        raise InvalidConfig(f"invalid link_state {conf.link_state!r}: auto, enable or disable")
    for key, rate in (("min_tx_rate", conf.min_tx_rate), ("max_tx_rate", conf.max_tx_rate)):
        if rate is not None and rate < 0:
            raise InvalidConfig(f"invalid {key} {rate}: Mbps, 0 for no limit")
    if conf.min_tx_rate and conf.max_tx_rate and conf.min_tx_rate > conf.max_tx_rate:
        raise InvalidConfig(f"min_tx_rate {conf.min_tx_rate} is above max_tx_rate "
                            f"{conf.max_tx_rate}")
    if conf.mac and not MAC.match(conf.mac):
        raise InvalidConfig(f"invalid MAC address {conf.mac!r}")
    return conf


def check_vlan(conf: SriovConf) -> None:
    """sriov-cni's rules: QoS and protocol need a VLAN; 802.1ad and a QoS need a non-zero
    one."""
    if conf.vlan is None:
        if conf.vlan_qos is not None:
            raise InvalidConfig("vlan id must be configured to set vlanQoS")
        if conf.vlan_proto is not None:
            raise InvalidConfig("vlan id must be configured to set vlanProto")
        return
    if not 0 <= conf.vlan <= 4094:
        raise InvalidConfig(f"vlan id {conf.vlan} invalid: value must be in the range 0-4094")
    qos = conf.vlan_qos or 0
    if not 0 <= qos <= 7:
        raise InvalidConfig(f"vlan QoS PCP {qos} invalid: value must be in the range 0-7")
    if qos and not conf.vlan:
        raise InvalidConfig("non-zero vlan id must be configured to set a non-zero vlanQoS")
    proto = (conf.vlan_proto if conf.vlan_proto is not None else "802.1q").lower()
    if proto not in pf.VLAN_PROTOCOLS:
        raise InvalidConfig(f"vlan proto {conf.vlan_proto!r} invalid: value must be "
                            "'802.1q' or '802.1ad'")
    if proto == "802.1ad" and not conf.vlan:
        raise InvalidConfig("non-zero vlan id must be configured to set vlan proto 802.1ad")


def wanted(conf: SriovConf) -> pf.VfSettings:
    """The PF-side settings the config asks for (None: left as they are)."""
    vlan = conf.vlan is not None
    rate = conf.min_tx_rate is not None or conf.max_tx_rate is not None
    return pf.VfSettings(
        mac=normal_mac(conf.mac) or None,
        vlan=conf.vlan, qos=(conf.vlan_qos or 0) if vlan else None,
        proto=(conf.vlan_proto or "802.1q").lower() if vlan else None,
        spoofchk=conf.spoofchk == "on" if conf.spoofchk else None,
        trust=conf.trust == "on" if conf.trust else None,
        link_state=conf.link_state or None,
        min_tx_rate=(conf.min_tx_rate or 0) if rate else None,
        max_tx_rate=(conf.max_tx_rate or 0) if rate else None)


def normal_mac(mac: str) -> str:
    return mac.replace("-", ":").lower()


def find_vf(args: CmdArgs, conf: SriovConf) -> sysfs.VirtualFunction:
    return sysfs.find(args.environ, conf.pci_address, conf.vf)


# --- saved state ----------------------------------------------------------------------------

class State:
    """What the plugin keeps on the node, under `dataDir`:

    - `vfs/<pci address>`: the VF's holder (owner token: container, ifname, netns), its
      original PF-side settings and netdev, what was changed; beside it `<address>.lock`;
    - `networks/<network>/<containerID>:<ifname>`: which VF an attachment holds.
    """

    def __init__(self, args: CmdArgs, conf: SriovConf) -> None:
        root = conf.data_dir or args.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
        self.vfs = store.Store(root, "vfs")
        self.attachments = store.Store(os.path.join(root, "networks"), conf.name)

    @contextmanager
    def vf_locked(self, address: str) -> Iterator[None]:
        """Hold the VF's own lock: one ADD, DEL or GC works on a VF at a time."""
        lock = f"{self.vfs.path(address)}.lock"
        try:
            store.make_dirs(self.vfs.directory)
        except OSError as exc:
            raise IOFailure(f"failed to create {self.vfs.directory}: {exc.strerror}") from None
        with store.flock(lock):
            yield

    def marker(self, address: str) -> dict[str, Any] | None:
        return read_json(self.vfs, address)

    def put_marker(self, address: str, marker: dict[str, Any] | None) -> None:
        """Write the VF's marker, or remove it (None)."""
        if marker is None:
            self.vfs.delete(address)
        else:
            self.vfs.write(address, json.dumps(marker, indent=1).encode())

    def attachment(self, key: str) -> dict[str, Any] | None:
        return read_json(self.attachments, key)


def read_json(saved: store.Store, key: str) -> dict[str, Any] | None:
    return saved.read_object(key, "remove it, and restore the VF by hand if it is still in a pod")


def owner_of(args: CmdArgs) -> dict[str, str]:
    return {"containerID": args.container_id, "ifname": args.ifname, "netns": args.netns}


def same_namespace(first: str, second: str) -> bool:
    if first == second:
        return True
    try:
        a, b = os.stat(first), os.stat(second)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def owns(marker: dict[str, Any], args: CmdArgs) -> bool:
    """The marker names this attachment as the VF's holder (a DEL without CNI_NETNS is
    matched on container and interface)."""
    holder = marker.get("owner") or {}
    if (holder.get("containerID"), holder.get("ifname")) != (args.container_id, args.ifname):
        return False
    return not args.netns or not holder.get("netns") or same_namespace(holder["netns"],
                                                                      args.netns)


def claim(earlier: dict[str, Any] | None, args: CmdArgs, address: str) -> dict[str, Any] | None:
    """May this ADD take the VF? Returns the marker of a holder whose pod is gone (its
    saved originals are still the VF's originals), None when the VF is free.

    A VF held by a live pod is refused with code 11, "try again later": the config is fine,
    and the condition clears itself, since a device plugin only hands out a VF again once
    the pod holding it is going away; the old pod's DEL frees it, a retried ADD gets it.
    """
    from pycni import log

    if earlier is None:
        return None
    holder = earlier.get("owner") or {}
    if owns(earlier, args):
        raise InvalidConfig(f"VF {address} is already attached to container "
                            f"{args.container_id!r} as {args.ifname!r}: DEL it first")
    if device.is_namespace(str(holder.get("netns") or "")):
        raise TryAgainLater(f"VF {address} is allocated to container "
                            f"{holder.get('containerID')!r} ({holder.get('ifname')!r} in "
                            f"{holder.get('netns')!r})",
                            "retry once that pod's DEL has released it")
    log.get().warning("VF %s: its holder %r is gone (namespace %r): taking it over",
                      address, holder.get("containerID"), holder.get("netns"))
    return earlier


# --- the PF side ----------------------------------------------------------------------------

def restore_settings(physical: pf.PhysicalFunction, marker: dict[str, Any],
                     quietly: bool = False) -> None:
    """Give the VF back the original value of every group of settings that was changed.
    `quietly`: log failures (undo and GC paths); else raise the first after trying all."""
    from pycni import log

    original = pf.VfSettings.from_dict(marker.get("original") or {})
    failures = []
    for group in marker.get("applied") or []:
        settings = original.only([group])
        if not settings.groups():
            continue  # the driver never reported it
        try:
            physical.apply(int(marker["vf"]), settings)
        except CNIError as exc:
            failures.append(exc)
            log.get().error("VF %s: could not restore its %s: %s", marker.get("pciAddress"),
                            group, exc)
    if failures and not quietly:
        raise failures[0]


def release_pf_side(args: CmdArgs, marker: dict[str, Any], quietly: bool = False) -> None:
    """Restore the PF-side settings; a PF that is gone has nothing left to restore."""
    from pycni import log

    try:
        with pf.opened(args.environ, str(marker["pf"])) as physical:
            restore_settings(physical, marker, quietly)
    except CNIError as exc:
        if "no such device" not in str(exc) and not quietly:
            raise
        log.get().warning("VF %s: PF-side settings not restored: %s", marker.get("pciAddress"),
                          exc)


# --- the verbs ------------------------------------------------------------------------------

def cmd_add(args: CmdArgs) -> Result:
    conf = load_conf(args)
    function = find_vf(args, conf)
    if not conf.ipam_type and not spec.at_least(args.cni_version, "0.3.0"):
        # Refused now: the result, printed once all is done, could not say it.
        raise IncompatibleVersion(f"a {args.cni_version} result cannot hold an L2-only "
                                  "attachment (it has no IP address): use cniVersion 0.3.0 "
                                  "or later, or configure ipam")
    settings, address = wanted(conf), function.pci_address
    state, key = State(args, conf), device.attachment_key(args.container_id, args.ifname)
    result = Result()
    with state.vf_locked(address), pf.opened(args.environ, function.pf_name) as physical, \
            link.socket() as host, ExitStack() as undo:
        earlier = state.marker(address)
        stale = claim(earlier, args, address)
        # The VF as it was, saved before anything changes (a gone holder's originals win).
        original = physical.read(function.number)
        marker: dict[str, Any] = {
            "owner": owner_of(args), "network": conf.name, "attachment": key,
            "pciAddress": address, "pf": function.pf_name, "vf": function.number,
            "dpdk": function.dpdk,
            "original": (stale or {}).get("original") or original.to_dict(),
            "applied": sorted(set(settings.groups()) | set((stale or {}).get("applied", [])))}
        netdev = None
        if not function.dpdk:
            netdev = link.find(host, function.netdev)
            if netdev is None:
                raise InvalidConfig(f"the netdev {function.netdev!r} of VF {address} is not "
                                    "in the node's network namespace")
            message = host.get_links(netdev.index)[0]
            marker["netdev"] = ((stale or {}).get("netdev")
                                or {**device.original(netdev), **device.identity(message)})
        state.put_marker(address, marker)
        undo.callback(state.put_marker, address, earlier)

        for group in settings.groups():
            physical.apply(function.number, settings.only([group]))
            undo.callback(restore_settings, physical,
                          {**marker, "original": original.to_dict(), "applied": [group]}, True)

        if netdev is not None:
            with link.socket(args.netns) as pod:
                changes = {"address": settings.mac} if settings.mac else None
                device.move_in(host, netdev, args.ifname, args.netns, changes)
                inside = link.find(pod, args.ifname)
                assert inside is not None
                marker["netdev"] = {**marker["netdev"], "podIndex": inside.index,
                                    "podMac": inside.mac}
                undo.callback(device.return_device, args.netns, marker["netdev"])
                pod.link("set", index=inside.index, state="up")
            state.put_marker(address, marker)
            result.interfaces = [Interface(args.ifname, inside.mac, sandbox=args.netns,
                                           mtu=inside.mtu, pci_id=address)]
        else:
            admin_mac = original.mac if (original.mac or "").strip("0:") else ""
            result.interfaces = [Interface(args.ifname, settings.mac or admin_mac or "",
                                           sandbox=args.netns, pci_id=address)]
        state.attachments.write(key, json.dumps({"pciAddress": address,
                                                 "netns": args.netns}).encode())
        undo.callback(state.attachments.delete, key)

        if conf.ipam_type:
            assigned = ipam_delegate.add(conf.ipam_type, args)
            undo.callback(ipam_delegate.delete, conf.ipam_type, args)
            if not assigned.ips:
                raise CNIError("IPAM plugin returned missing IP config")
            result.ips, result.routes, result.dns = assigned.ips, assigned.routes, assigned.dns
            for ip in result.ips:
                ip.interface = 0
            if netdev is not None:
                with netns.entered(args.netns), link.socket() as pod:
                    link.configure(pod, args.ifname, result, index_in_result=0)
        if conf.dns:
            result.dns = conf.dns
        undo.pop_all()
    return result


def cmd_del(args: CmdArgs) -> None:
    """Release the address, give the netdev back, restore the VF's settings, free it. IPAM
    goes first, so a pod namespace that is gone never leaks the address; a VF another
    attachment holds now is left alone."""
    from pycni import log

    conf = load_conf(args, checking=False)
    state, key = State(args, conf), device.attachment_key(args.container_id, args.ifname)
    pointer = state.attachment(key)
    if conf.ipam_type:
        ipam_delegate.delete(conf.ipam_type, args)
    address = str(pointer["pciAddress"]) if pointer else address_from_config(args, conf)
    if address:
        with state.vf_locked(address):
            marker = state.marker(address)
            if marker is not None and owns(marker, args):
                # Without CNI_NETNS the namespace ADD saw may still be there, the VF in it.
                pod_path = args.netns or str(marker["owner"].get("netns") or "")
                if marker.get("netdev") and device.is_namespace(pod_path):
                    device.return_device(pod_path, marker["netdev"])
                release_pf_side(args, marker)
                state.put_marker(address, None)
            elif marker is not None and pointer is not None:
                log.get().warning("VF %s is held by container %r now: left alone", address,
                                  (marker.get("owner") or {}).get("containerID"))
    state.attachments.delete(key)


def address_from_config(args: CmdArgs, conf: SriovConf) -> str:
    """No saved attachment (state lost, or ADD never finished): the VF the config names,
    if it still names one, so a marker this attachment left is found."""
    if not conf.pci_address or not device.PCI_ADDRESS.match(conf.pci_address):
        return ""
    try:
        return sysfs.resolve(args.environ, conf.pci_address, conf.vf)[0]
    except CNIError:
        return ""


def cmd_check(args: CmdArgs) -> None:
    conf = load_conf(args)
    if conf.ipam_type:
        ipam_delegate.forward("CHECK", conf.ipam_type, args)
    prev = args.prev_result
    if prev is None:
        raise InvalidConfig("required prevResult missing: CHECK needs the result of ADD")
    state, key = State(args, conf), device.attachment_key(args.container_id, args.ifname)
    pointer = state.attachment(key)
    marker = state.marker(str(pointer["pciAddress"])) if pointer else None
    if marker is None or not owns(marker, args):
        raise CNIError(f"no VF is attached to container {args.container_id!r} as "
                       f"{args.ifname!r}")
    with pf.opened(args.environ, str(marker["pf"])) as physical:
        current = physical.read(int(marker["vf"])).to_dict()
    for name, value in wanted(conf).to_dict().items():
        if name in current and current[name] != value:
            raise CNIError(f"VF {marker['vf']} on PF {marker['pf']!r}: {name} is "
                           f"{current[name]!r}, not {value!r}")
    if not marker.get("netdev"):
        return  # DPDK: nothing of it lives in the pod's namespace
    device.check_attached(args, prev, marker["netdev"], f"VF {marker['pciAddress']}")


def cmd_status(args: CmdArgs) -> None:
    conf = load_conf(args, checking=False)
    if conf.ipam_type:
        ipam_delegate.forward("STATUS", conf.ipam_type, args)


def cmd_gc(args: CmdArgs) -> None:
    """Forget attachments the runtime no longer knows: their VFs get their PF-side settings
    back and are freed (best effort, logged), then IPAM's GC."""
    conf = load_conf(args, checking=False)
    valid = {device.attachment_key(container, ifname)
             for container, ifname in config.valid_attachments(args)}
    state = State(args, conf)
    with state.attachments.locked():
        for key in state.attachments.names():
            if key in valid:
                continue
            pointer = state.attachment(key)
            address = str((pointer or {}).get("pciAddress") or "")
            if address:
                with state.vf_locked(address):
                    marker = state.marker(address)
                    if marker and (marker.get("network"), marker.get("attachment")) == (
                            conf.name, key):
                        release_pf_side(args, marker, quietly=True)
                        state.put_marker(address, None)
            state.attachments.delete(key)
    if conf.ipam_type:
        ipam_delegate.forward("GC", conf.ipam_type, args)


PLUGIN = Plugin("pycni sriov plugin", add=cmd_add, delete=cmd_del, check=cmd_check,
                status=cmd_status, gc=cmd_gc)
