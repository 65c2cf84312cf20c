"""sriov: the users' storage network, every key and spec version, two pods and one VF, DPDK
mode, undo on failure, bad input; and the PF interface's pieces in-process.

The node is a sandbox "host" namespace holding four veth ends that stand for the VFs' netdevs
(their peers on a bridge in a "storage" namespace, which holds the gateway 172.16.1.1). A fake
sysfs tree (PYCNI_SYSFS_ROOT) describes the PF 0000:03:00.0 and its VFs; the PF-side settings
live in the file-backed fake PF (PYCNI_SRIOV_FAKE_PF). The plugin runs as a process in the
host namespace with host-local on CNI_PATH.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pycni.plugins.sriov import pf

from pycni import spec
from tests import sriovlib
from tests.conftest import PYCNI, REPO, Netns, NetnsFactory, Outcome, cni_env, run_exec

SEED = REPO / "tests" / "seeds" / "nad-storage-network.sriov.json"
VF_NETDEVS = [f"eth2v{n}" for n in range(4)]
VF = sriovlib.VF_ADDRESSES
EVERY_SETTING = {"mac": "CA:FE:C0:FF:EE:01", "vlan": 100, "vlanQoS": 3, "vlanProto": "802.1ad",
                 "spoofchk": "off", "trust": "on", "link_state": "enable", "min_tx_rate": 100,
                 "max_tx_rate": 200}
EVERY_SETTING_ON_PF = {"mac": "ca:fe:c0:ff:ee:01", "vlan": 100, "qos": 3, "proto": "802.1ad",
                       "spoofchk": False, "trust": True, "link_state": "enable",
                       "min_tx_rate": 100, "max_tx_rate": 200}


@dataclass
class Node:
    """The sandbox node: its namespace, the VF stand-ins, the fake sysfs and PF, CNI_PATH."""

    host: Netns
    namespaces: NetnsFactory
    cni_bin: Path
    tmp: Path

    @property
    def pf_file(self) -> Path:
        return self.tmp / "pf.json"

    @property
    def ipam_dir(self) -> Path:
        return self.tmp / "ipam"

    @property
    def state_dir(self) -> Path:
        return self.tmp / "state"

    def setup(self, drivers: dict[int, str] | None = None,
              unsupported: tuple[str, ...] = ()) -> None:
        storage = self.namespaces("storage")
        storage.run("ip", "link", "add", "br0", "type", "bridge")
        storage.run("ip", "addr", "add", "172.16.1.1/16", "dev", "br0")
        storage.run("ip", "link", "set", "br0", "up")
        self.storage = storage
        for number, name in enumerate(VF_NETDEVS):
            if number not in (drivers or {}):
                self.add_netdev(name, number)
        sriovlib.build_sysfs(self.tmp / "sys", VF_NETDEVS, drivers)
        sriovlib.write_pf(self.pf_file, unsupported=unsupported)

    def add_netdev(self, name: str, number: int) -> None:
        """The VF's netdev on the node (down, as a spare VF), its peer on the storage bridge."""
        peer = f"srv{number}"
        self.host.run("ip", "link", "add", name, "type", "veth", "peer", "name", peer,
                      "netns", self.storage.name)
        self.storage.run("ip", "link", "set", peer, "master", "br0", "up")

    def conf(self, version: str = "1.0.0", ipam: bool = True, **keys: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {"cniVersion": version, "name": "storage", "type": "sriov",
                                "deviceID": VF[0], **keys}
        if ipam:
            conf["ipam"] = {"type": "host-local", "dataDir": str(self.ipam_dir),
                            "subnet": "172.16.0.0/16", "rangeStart": "172.16.1.10",
                            "rangeEnd": "172.16.1.200", "gateway": "172.16.1.1"}
        return {k: v for k, v in conf.items() if v is not None}

    def run(self, command: str, conf: Any, pod: Netns | str | None, cid: str = "ctr-1",
            ifname: str = "net1", **extra: str) -> Outcome:
        path = pod.path if isinstance(pod, Netns) else (pod or "")
        env = cni_env(command, path, ifname=ifname, container_id=cid, path=str(self.cni_bin),
                      PYCNI_SRIOV_DATA_DIR=str(self.state_dir),
                      PYCNI_SYSFS_ROOT=str(self.tmp / "sys"),
                      PYCNI_SRIOV_FAKE_PF=str(self.pf_file), **extra)
        return run_exec([*PYCNI, "sriov"], env, conf, in_ns=self.host)

    def add(self, conf: Any, pod: Netns, cid: str = "ctr-1", **extra: str) -> Any:
        return self.run("ADD", conf, pod, cid, **extra).ok()

    def delete(self, conf: Any, pod: Netns | str | None, cid: str = "ctr-1") -> None:
        self.run("DEL", conf, pod, cid).ok()

    def vfs(self) -> dict[int, dict[str, Any]]:
        return sriovlib.read_pf(self.pf_file)

    def allocations(self) -> list[str]:
        directory = self.ipam_dir / "storage"
        return sorted(p.name for p in directory.iterdir() if is_address(p.name)) \
            if directory.exists() else []

    def markers(self) -> dict[str, Any]:
        directory = self.state_dir / "vfs"
        return {p.name: json.loads(p.read_text()) for p in directory.iterdir()
                if not p.name.endswith(".lock") and not p.name.startswith(".")} \
            if directory.exists() else {}

    def attachments(self) -> list[str]:
        directory = self.state_dir / "networks" / "storage"
        return sorted(p.name for p in directory.iterdir() if p.name != "lock") \
            if directory.exists() else []

    def links(self) -> dict[str, tuple[str, int, bool]]:
        """The node's links: name -> (MAC, MTU, administratively up)."""
        return {item["ifname"]: (item["address"], item["mtu"], "UP" in item["flags"])
                for item in self.host.ip_json("link")}

    def assert_untouched(self, before: dict[str, tuple[str, int, bool]]) -> None:
        assert self.links() == before
        assert self.vfs() == {n: sriovlib.DEFAULT_VF for n in range(4)}
        assert self.markers() == {} and self.attachments() == [] and self.allocations() == []


def is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


@pytest.fixture
def node(host_ns: Netns, netns_factory: NetnsFactory, cni_bin: Path, tmp_path: Path) -> Node:
    return Node(host_ns, netns_factory, cni_bin, tmp_path)


def links(netns: Netns) -> list[str]:
    return [item["ifname"] for item in netns.ip_json("link")]


def addresses(netns: Netns, dev: str) -> list[str]:
    found = netns.ip_json("addr", "show", "dev", dev)
    return [f"{a['local']}/{a['prefixlen']}" for a in found[0]["addr_info"]
            if a.get("scope") == "global"]


# --- the users' storage network --------------------------------------------------------------

def test_storage_network_seed(node: Node) -> None:
    """The seed NAD unchanged but for the name Multus adds and host-local's dataDir: its
    deviceID is the PF, `vf: 0` picks the VF."""
    node.setup()
    before = node.links()
    mac, mtu, _ = before["eth2v0"]
    conf = json.loads(SEED.read_text())
    conf["name"] = "storage"
    conf["ipam"]["dataDir"] = str(node.ipam_dir)
    pod = node.namespaces("pod")

    result = node.add(conf, pod)
    assert result["cniVersion"] == "0.3.1"
    assert result["interfaces"] == [{"name": "net1", "mac": mac, "sandbox": pod.path}]
    assert result["ips"] == [{"version": "4", "interface": 0, "address": "172.16.1.10/16",
                              "gateway": "172.16.1.1"}]
    assert "eth2v0" not in node.links()
    net1 = pod.link("net1")
    assert (net1["address"], net1["mtu"]) == (mac, mtu) and "UP" in net1["flags"]
    assert addresses(pod, "net1") == ["172.16.1.10/16"]
    assert pod.run("ping", "-c1", "-w8", "172.16.1.1", check=False).returncode == 0
    marker = node.markers()[VF[0]]
    assert marker["owner"] == {"containerID": "ctr-1", "ifname": "net1", "netns": pod.path}
    assert (marker["pf"], marker["vf"], marker["applied"]) == ("eth2", 0, [])
    assert node.attachments() == ["ctr-1:net1"] and node.allocations() == ["172.16.1.10"]

    node.delete(conf, pod)
    assert links(pod) == ["lo"]
    node.assert_untouched(before)
    node.delete(conf, pod)  # DEL twice


def test_every_setting_lands_on_the_pf_and_is_restored(node: Node) -> None:
    node.setup()
    before = node.links()
    pod = node.namespaces("pod")
    conf = node.conf("1.1.0", deviceID=VF[1], **EVERY_SETTING)
    result = node.add(conf, pod)

    assert node.vfs()[1] == EVERY_SETTING_ON_PF
    assert node.vfs()[0] == sriovlib.DEFAULT_VF
    [interface] = result["interfaces"]
    assert interface == {"name": "net1", "mac": "ca:fe:c0:ff:ee:01", "sandbox": pod.path,
                         "mtu": 1500, "pciID": VF[1]}
    assert pod.link("net1")["address"] == "ca:fe:c0:ff:ee:01"
    assert node.markers()[VF[1]]["original"] == sriovlib.DEFAULT_VF
    assert node.run("CHECK", {**conf, "prevResult": result}, pod).ok() is None

    # someone changed the VLAN on the PF behind our back: CHECK says so
    data = json.loads(node.pf_file.read_text())
    data["eth2"]["vfs"]["1"]["vlan"] = 7
    node.pf_file.write_text(json.dumps(data))
    error = node.run("CHECK", {**conf, "prevResult": result}, pod).error(999)
    assert "vlan" in error["msg"]
    data["eth2"]["vfs"]["1"]["vlan"] = 100
    node.pf_file.write_text(json.dumps(data))

    node.delete(conf, pod)
    assert links(pod) == ["lo"]
    node.assert_untouched(before)


@pytest.mark.parametrize("source", ["CNI_ARGS", "args.cni", "runtimeConfig"])
def test_mac_sources_in_the_spec_order(source: str, node: Node) -> None:
    """CNI_ARGS MAC < args.cni.mac < runtimeConfig.mac, each over the config's `mac`."""
    node.setup()
    pod = node.namespaces("pod")
    conf = node.conf(mac="02:00:00:00:00:01")
    extra: dict[str, str] = {"CNI_ARGS": "IgnoreUnknown=1;MAC=02:00:00:00:00:02"}
    if source in ("args.cni", "runtimeConfig"):
        conf["args"] = {"cni": {"mac": "02:00:00:00:00:03"}}
    if source == "runtimeConfig":
        conf["capabilities"] = {"mac": True}
        conf["runtimeConfig"] = {"mac": "02:00:00:00:00:04"}
    expected = {"CNI_ARGS": "02:00:00:00:00:02", "args.cni": "02:00:00:00:00:03",
                "runtimeConfig": "02:00:00:00:00:04"}[source]
    result = node.add(conf, pod, **extra)
    assert result["interfaces"][0]["mac"] == expected
    assert node.vfs()[0]["mac"] == expected and pod.link("net1")["address"] == expected
    node.delete(conf, pod)
    assert node.vfs()[0]["mac"] == "00:00:00:00:00:00"


# --- every version ---------------------------------------------------------------------------

@pytest.mark.parametrize("version", spec.ALL)
def test_add_check_del_every_version(version: str, node: Node) -> None:
    """deviceID from runtimeConfig (a device plugin's choice, passed on by Multus)."""
    node.setup()
    before = node.links()
    mac = before["eth2v2"][0]
    pod = node.namespaces("pod")
    conf = node.conf(version, deviceID=None, vlan=200, capabilities={"deviceID": True},
                     runtimeConfig={"deviceID": VF[2]}, dns={"nameservers": ["172.16.1.53"]})
    result = node.add(conf, pod)

    assert result["cniVersion"] == version
    assert result["dns"] == {"nameservers": ["172.16.1.53"]}
    if spec.at_least(version, "0.3.0"):
        expected: dict[str, Any] = {"name": "net1", "mac": mac, "sandbox": pod.path}
        if spec.at_least(version, "1.1.0"):
            expected.update(mtu=1500, pciID=VF[2])
        assert result["interfaces"] == [expected]
        assert [(ip["address"], ip["interface"]) for ip in result["ips"]] == [
            ("172.16.1.10/16", 0)]
    else:
        assert result["ip4"] == {"ip": "172.16.1.10/16", "gateway": "172.16.1.1"}
    assert node.vfs()[2]["vlan"] == 200 and pod.link("net1")["address"] == mac

    check = node.run("CHECK", {**conf, "prevResult": result}, pod)
    if spec.at_least(version, "0.4.0"):
        assert check.ok() is None
    else:
        check.error(1)

    for _ in range(2):  # DEL, then DEL again
        node.delete(conf, pod)
        assert links(pod) == ["lo"]
        node.assert_untouched(before)


def test_l2_only(node: Node) -> None:
    """Without IPAM the VF moves with no address (0.3.0 and later can say so)."""
    node.setup()
    pod = node.namespaces("pod")
    node.run("ADD", node.conf("0.2.0", ipam=False), pod).error(1)
    conf = node.conf("1.0.0", ipam=False)
    result = node.add(conf, pod)
    assert "ips" not in result and "UP" in pod.link("net1")["flags"]
    node.delete(conf, pod)
    assert "eth2v0" in node.links()


# --- one VF, two pods ------------------------------------------------------------------------

def test_second_pod_refused_and_stale_del_leaves_the_new_holder_alone(node: Node) -> None:
    node.setup()
    before = node.links()
    first, second = node.namespaces("pod"), node.namespaces("pod")
    node.add(node.conf(vlan=100), first, cid="ctr-a")

    held = (node.links(), node.vfs(), node.markers())
    error = node.run("ADD", node.conf(vlan=200), second, cid="ctr-b").error(11)
    assert VF[0] in error["msg"] and "ctr-a" in error["msg"]
    assert (node.links(), node.vfs(), node.markers()) == held and links(second) == ["lo"]

    # The first pod goes without its DEL; the real VF would fall back to the node (the veth
    # stand-in dies with the namespace, so it is made again). The second pod gets the VF.
    first_path = first.path
    node.namespaces.remove(first)
    node.add_netdev("eth2v0", 0)
    result = node.add(node.conf(vlan=200), second, cid="ctr-b")
    assert node.vfs()[0]["vlan"] == 200 and links(second) == ["lo", "net1"]
    # the gone holder's originals are kept as the VF's originals
    assert node.markers()[VF[0]]["original"] == sriovlib.DEFAULT_VF

    # the first pod's DEL comes late: it releases its address and nothing of the VF
    node.delete(node.conf(vlan=100), first_path, cid="ctr-a")
    assert node.vfs()[0]["vlan"] == 200 and links(second) == ["lo", "net1"]
    assert node.markers()[VF[0]]["owner"]["containerID"] == "ctr-b"
    assert node.allocations() == [result["ips"][0]["address"].split("/")[0]]
    node.delete(node.conf(vlan=100), None, cid="ctr-a")
    assert node.markers()[VF[0]]["owner"]["containerID"] == "ctr-b"

    node.delete(node.conf(vlan=200), second, cid="ctr-b")
    assert links(second) == ["lo"]
    node.assert_untouched({**before, "eth2v0": node.links()["eth2v0"]})


def test_del_after_the_pod_namespace_is_gone(node: Node) -> None:
    """The address is released, the PF-side settings restored, the VF freed."""
    node.setup()
    pod = node.namespaces("pod")
    conf = node.conf(vlan=300, trust="on")
    node.add(conf, pod)
    path = pod.path
    node.namespaces.remove(pod)

    node.delete(conf, path)
    assert node.vfs()[0] == sriovlib.DEFAULT_VF
    assert node.markers() == {} and node.attachments() == [] and node.allocations() == []
    node.delete(conf, path)
    node.delete(conf, None)


def test_del_without_netns_uses_the_saved_namespace(node: Node) -> None:
    node.setup()
    before = node.links()
    pod = node.namespaces("pod")
    conf = node.conf(spoofchk="off")
    node.add(conf, pod)
    node.delete(conf, None)
    assert links(pod) == ["lo"]
    node.assert_untouched(before)


# --- DPDK ------------------------------------------------------------------------------------

def test_userspace_driver_moves_nothing(node: Node) -> None:
    """A VF bound to vfio-pci has no netdev: PF-side settings and IPAM only, the VF's
    identity in the result."""
    node.setup(drivers={3: "vfio-pci"})
    before = node.links()
    pod = node.namespaces("pod")
    conf = node.conf("1.1.0", deviceID=VF[3], vlan=42, mac="02:00:00:00:00:42")
    result = node.add(conf, pod)
    assert result["interfaces"] == [{"name": "net1", "mac": "02:00:00:00:00:42",
                                     "sandbox": pod.path, "pciID": VF[3]}]
    assert [ip["address"] for ip in result["ips"]] == ["172.16.1.10/16"]
    assert links(pod) == ["lo"] and node.links() == before
    assert node.vfs()[3]["vlan"] == 42 and node.vfs()[3]["mac"] == "02:00:00:00:00:42"
    assert node.run("CHECK", {**conf, "prevResult": result}, pod).ok() is None
    node.delete(conf, pod)
    node.assert_untouched(before)


# --- failures undo everything ----------------------------------------------------------------

def test_a_setting_the_driver_refuses_undoes_the_others(node: Node) -> None:
    node.setup(unsupported=("trust",))
    before = node.links()
    pod = node.namespaces("pod")
    error = node.run("ADD", node.conf(vlan=100, mac="02:00:00:00:00:09", trust="on"),
                     pod).error(999)
    assert "trust" in error["msg"]
    assert links(pod) == ["lo"]
    node.assert_untouched(before)


def test_failure_after_the_move_returns_the_vf(node: Node) -> None:
    """IPAM fails, or the pod already has CNI_IFNAME: the netdev is back as it was, the PF
    as it was."""
    node.setup()
    node.host.run("ip", "link", "set", "eth2v0", "up")
    before = node.links()
    pod = node.namespaces("pod")
    broken = node.conf(vlan=100, mac="02:00:00:00:00:07")
    broken["ipam"]["rangeStart"] = "10.9.0.10"  # outside the subnet: host-local refuses
    assert node.run("ADD", broken, pod).status == 1
    assert links(pod) == ["lo"]
    node.assert_untouched(before)

    pod.run("ip", "link", "add", "net1", "type", "veth", "peer", "name", "other0")
    node.run("ADD", node.conf(vlan=100, mac="02:00:00:00:00:07"), pod).error(999)
    assert links(pod) == ["lo", "other0", "net1"]
    node.assert_untouched(before)


def test_second_add_for_the_same_attachment_is_refused(node: Node) -> None:
    node.setup()
    pod = node.namespaces("pod")
    conf = node.conf()
    node.add(conf, pod)
    node.run("ADD", conf, pod).error(7)
    assert links(pod) == ["lo", "net1"] and list(node.markers()) == [VF[0]]
    node.delete(conf, pod)


# --- bad input: refused, nothing changed -----------------------------------------------------

BAD: dict[str, dict[str, Any]] = {
    "missing deviceID": {"deviceID": None},
    "VF not found": {"deviceID": "0000:03:09.0"},
    "bad PCI address": {"deviceID": "../../x"},
    "PF without vf": {"deviceID": sriovlib.PF_ADDRESS},
    "vf out of range": {"deviceID": sriovlib.PF_ADDRESS, "vf": 7},
    "vf not the VF's index": {"deviceID": VF[1], "vf": 2},
    "vlan out of range": {"vlan": 4095},
    "vlanQoS without vlan": {"vlanQoS": 3},
    "vlanQoS out of range": {"vlan": 10, "vlanQoS": 8},
    "vlanQoS with vlan 0": {"vlan": 0, "vlanQoS": 2},
    "bad vlanProto": {"vlan": 10, "vlanProto": "802.1x"},
    "vlanProto without vlan": {"vlanProto": "802.1q"},
    "802.1ad with vlan 0": {"vlan": 0, "vlanProto": "802.1ad"},
    "min above max rate": {"min_tx_rate": 300, "max_tx_rate": 200},
    "negative rate": {"max_tx_rate": -1},
    "bad spoofchk": {"spoofchk": "maybe"},
    "bad trust": {"trust": "yes"},
    "bad link_state": {"link_state": "up"},
    "bad mac": {"mac": "02:00:00"},
    "vlan not a number": {"vlan": "ten"},
    "deviceID and pciBusID disagree": {"pciBusID": VF[1]},
}


def test_bad_input_changes_nothing(node: Node) -> None:
    """Every case on one node (each is a process run; the node is the same before each)."""
    node.setup()
    before = node.links()
    pod = node.namespaces("pod")
    for case, keys in BAD.items():
        outcome = node.run("ADD", node.conf(**keys), pod)
        assert outcome.status == 1 and outcome.json()["code"] == 7, (case, outcome.stdout)
        assert links(pod) == ["lo"], case
        node.assert_untouched(before)


# --- STATUS and GC ---------------------------------------------------------------------------

def test_status_and_gc(node: Node) -> None:
    node.setup()
    pod = node.namespaces("pod")
    conf = node.conf("1.1.0", vlan=100)
    node.add(conf, pod)
    assert node.run("STATUS", conf, None).ok() is None
    assert node.run("STATUS", node.conf("1.1.0", ipam=False), None).ok() is None

    keep = {**conf, "cni.dev/valid-attachments": [{"containerID": "ctr-1", "ifname": "net1"}]}
    assert node.run("GC", keep, None).ok() is None
    assert list(node.markers()) == [VF[0]] and node.allocations() == ["172.16.1.10"]

    drop = {**conf, "cni.dev/valid-attachments": []}
    assert node.run("GC", drop, None).ok() is None
    assert node.markers() == {} and node.attachments() == [] and node.allocations() == []
    assert node.vfs()[0] == sriovlib.DEFAULT_VF


# --- in-process: the PF interface and its fakes ----------------------------------------------

def test_memory_pf_applies_groups_and_refuses_unsupported() -> None:
    physical = pf.MemoryPF(unsupported={"trust"})
    settings = pf.VfSettings(vlan=5, qos=1, proto="802.1q", spoofchk=False)
    assert settings.groups() == ["vlan", "spoofchk"]
    physical.apply(1, settings)
    assert physical.read(1).vlan == 5 and physical.read(1).spoofchk is False
    assert physical.read(0) == pf.DEFAULT
    with pytest.raises(Exception, match="trust"):
        physical.apply(1, pf.VfSettings(trust=True))
    assert physical.read(1).trust is False
    assert pf.DEFAULT.only(["rate"]) == pf.VfSettings(min_tx_rate=0, max_tx_rate=0)


def test_restore_settings_gives_back_only_what_was_changed() -> None:
    from pycni.plugins.sriov import plugin

    physical = pf.MemoryPF()
    physical.apply(2, pf.VfSettings(vlan=9, qos=0, proto="802.1q", trust=True))
    marker = {"vf": 2, "pciAddress": VF[2], "applied": ["vlan"],
              "original": pf.DEFAULT.to_dict()}
    plugin.restore_settings(physical, marker)
    assert physical.read(2).vlan == 0 and physical.read(2).trust is True


class RecordingSocket:
    """Stands for pyroute2's IPRoute: answers the PF's link dump, records `set` calls."""

    def __init__(self, dump: Any) -> None:
        self.dump, self.calls = dump, []  # type: list[dict[str, Any]]

    def link_lookup(self, ifname: str) -> list[int]:
        return [5] if ifname == "eth2" else []

    def link(self, command: str, **kwargs: Any) -> Any:
        if command == "get":
            assert kwargs == {"index": 5, "ext_mask": 1}
            return [self.dump]
        self.calls.append(kwargs)
        return []


def pf_dump() -> Any:
    """An RTM_NEWLINK of a PF with two VFs, encoded and decoded as the kernel's would be."""
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    def vf(n: int, vlan: int, proto: int) -> Any:
        return ("IFLA_VF_INFO", {"attrs": [
            ("IFLA_VF_MAC", {"vf": n, "mac": f"02:00:00:00:00:0{n}"}),
            ("IFLA_VF_VLAN", {"vf": n, "vlan": vlan, "qos": 2}),
            ("IFLA_VF_VLAN_LIST", {"attrs": [("IFLA_VF_VLAN_INFO", {
                "vf": n, "vlan": vlan, "qos": 2, "proto": proto})]}),
            ("IFLA_VF_RATE", {"vf": n, "min_tx_rate": 10, "max_tx_rate": 20}),
            ("IFLA_VF_SPOOFCHK", {"vf": n, "spoofchk": 1}),
            ("IFLA_VF_LINK_STATE", {"vf": n, "link_state": 2}),
            ("IFLA_VF_TRUST", {"vf": n, "trust": 0xFFFFFFFF})]})

    message = ifinfmsg()
    message["index"] = 5
    message["attrs"] = [("IFLA_IFNAME", "eth2"), ("IFLA_VFINFO_LIST", {"attrs": [
        vf(0, 10, 0x8100), vf(1, 11, 0x88A8)]})]
    message.encode()
    decoded = ifinfmsg(message.data)
    decoded.decode()
    return decoded


def test_netlink_pf_reads_the_vf_list_and_sets_by_group() -> None:
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    from pyroute2.requests.link import LinkIPRouteFilter

    socket = RecordingSocket(pf_dump())
    physical = pf.NetlinkPF(socket, "eth2")
    assert physical.read(1) == pf.VfSettings(
        mac="02:00:00:00:00:01", vlan=11, qos=2, proto="802.1ad", spoofchk=True, trust=None,
        link_state="disable", min_tx_rate=10, max_tx_rate=20)
    with pytest.raises(Exception, match="VF 3"):
        physical.read(3)

    physical.apply(1, pf.VfSettings(**EVERY_SETTING_ON_PF))
    assert [[k for k in call["vf"] if k != "vf"] for call in socket.calls] == [
        ["vlan"], ["rate"], ["mac"], ["spoofchk"], ["trust"], ["link_state"]]
    by_key = {next(k for k in call["vf"] if k != "vf"): call["vf"] for call in socket.calls}
    assert by_key["vlan"]["vlan"] == [{"vlan": 100, "qos": 3, "proto": 0x88A8}]
    assert by_key["rate"]["rate"] == {"min_tx_rate": 100, "max_tx_rate": 200}
    assert by_key["link_state"]["link_state"] == 1 and by_key["trust"]["trust"] == 1
    assert by_key["spoofchk"]["spoofchk"] == 0
    # pyroute2 turns each request into IFLA_VFINFO_LIST attributes that encode
    for call in socket.calls:
        message = ifinfmsg()
        message["attrs"] = [("IFLA_VFINFO_LIST", LinkIPRouteFilter("set").get_vf(dict(call["vf"])))]
        message.encode()
    plain = pf.vf_requests(0, pf.VfSettings(vlan=7, qos=1, proto="802.1q"))
    assert plain == [("vlan", {"vf": 0, "vlan": {"vlan": 7, "qos": 1}})]
