"""host-device in sandbox namespaces: the management-network seed, every selector, every spec
version, DEL after the pod is gone, a device renamed or its name taken, bad input.

The node is a sandbox "host" namespace; the device is a veth end named `eth2` there, its peer
in a "server" namespace standing for the management network. The plugin runs as a process in
the host namespace with host-local on CNI_PATH. PCI selectors read a fake sysfs tree
(PYCNI_SYSFS_ROOT) that points at the veth; saved state goes under the test's tmp_path
(PYCNI_HOST_DEVICE_DATA_DIR), so the seed runs with its own keys.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pycni import spec
from tests.conftest import PYCNI, REPO, Netns, NetnsFactory, Outcome, cni_env, run_exec

SEED = REPO / "tests" / "seeds" / "nad-management-network.host-device.json"
SERVER_ADDRESS = "10.0.0.100/24"
PCI_ADDRESS = "0000:00:05.0"
KERNEL_PATH = f"/sys/devices/pci0000:00/{PCI_ADDRESS}"
REFERENCE = Path("/usr/lib/cni/host-device")


@dataclass
class Node:
    """The sandbox node: its namespace, the management server, CNI_PATH and data folders."""

    host: Netns
    namespaces: NetnsFactory
    cni_bin: Path
    tmp: Path

    @property
    def ipam_dir(self) -> Path:
        return self.tmp / "ipam"

    @property
    def state_dir(self) -> Path:
        return self.tmp / "state"

    @property
    def sysfs(self) -> Path:
        return self.tmp / "sys"

    def device(self, name: str = "eth2", mtu: int = 1500) -> tuple[str, Netns]:
        """A veth end `name` on the node (down, as a spare NIC), its peer `srv0` up in a
        server namespace holding SERVER_ADDRESS. Returns the device's MAC and the server."""
        server = self.namespaces("server")
        self.host.run("ip", "link", "add", name, "mtu", str(mtu), "type", "veth", "peer",
                      "name", "srv0", "netns", server.name)
        server.run("ip", "addr", "add", SERVER_ADDRESS, "dev", "srv0")
        server.run("ip", "link", "set", "srv0", "up")
        return str(self.host.link(name)["address"]), server

    def fake_pci(self, netdev: str = "eth2", driver: str = "e1000e") -> None:
        """sysfs entries for a PCI NIC whose netdev is `netdev` (an empty net folder when
        the driver is a userspace one, as for a device bound to vfio-pci)."""
        device = self.sysfs / "devices" / "pci0000:00" / PCI_ADDRESS
        (self.sysfs / "bus" / "pci" / "drivers" / driver).mkdir(parents=True)
        (device / "net").mkdir(parents=True)
        if driver not in ("vfio-pci", "uio_pci_generic", "igb_uio"):
            (device / "net" / netdev).mkdir()
        (device / "driver").symlink_to(f"../../../bus/pci/drivers/{driver}")
        (self.sysfs / "bus" / "pci" / "devices").mkdir(parents=True)
        (self.sysfs / "bus" / "pci" / "devices" / PCI_ADDRESS).symlink_to(device)

    def conf(self, version: str = "1.0.0", ipam: bool = True, **keys: Any) -> dict[str, Any]:
        """A config for network "mgmt"; the device is `eth2` unless `keys` select another
        way (or `device=""`, none)."""
        if not {"hwaddr", "kernelpath", "pciBusID", "runtimeConfig"} & set(keys):
            keys.setdefault("device", "eth2")
        conf: dict[str, Any] = {"cniVersion": version, "name": "mgmt", "type": "host-device",
                                **keys}
        if ipam:
            conf["ipam"] = {"type": "host-local", "dataDir": str(self.ipam_dir),
                            "subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10",
                            "gateway": "10.0.0.1"}
        return conf

    def run(self, command: str, conf: Any, pod: Netns | str | None, cid: str = "ctr-1",
            ifname: str = "net1", program: str | None = None) -> Outcome:
        path = pod.path if isinstance(pod, Netns) else (pod or "")
        env = cni_env(command, path, ifname=ifname, container_id=cid, path=str(self.cni_bin),
                      PYCNI_HOST_DEVICE_DATA_DIR=str(self.state_dir),
                      PYCNI_SYSFS_ROOT=str(self.sysfs))
        argv = [program] if program else [*PYCNI, "host-device"]
        return run_exec(argv, env, conf, in_ns=self.host)

    def add(self, conf: Any, pod: Netns, cid: str = "ctr-1") -> Any:
        return self.run("ADD", conf, pod, cid).ok()

    def delete(self, conf: Any, pod: Netns | str | None, cid: str = "ctr-1") -> Outcome:
        outcome = self.run("DEL", conf, pod, cid)
        outcome.ok()
        return outcome

    def allocations(self) -> list[str]:
        directory = self.ipam_dir / "mgmt"
        return sorted(p.name for p in directory.iterdir() if is_address(p.name)) \
            if directory.exists() else []

    def saved(self) -> list[str]:
        directory = self.state_dir / "mgmt"
        return sorted(p.name for p in directory.iterdir() if p.name != "lock") \
            if directory.exists() else []

    def links(self) -> dict[str, tuple[str, int, bool]]:
        """The node's links: name -> (MAC, MTU, administratively up)."""
        return {item["ifname"]: (item["address"], item["mtu"], "UP" in item["flags"])
                for item in self.host.ip_json("link")}


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


# --- the users' management network -----------------------------------------------------------

def test_management_network_seed(node: Node) -> None:
    """The seed NAD unchanged but for the name Multus adds and host-local's dataDir."""
    mac, _ = node.device("eth2", mtu=1450)
    conf = json.loads(SEED.read_text())
    conf["name"] = "mgmt"
    conf["ipam"]["dataDir"] = str(node.ipam_dir)
    pod = node.namespaces("pod")

    result = node.add(conf, pod)
    assert result["cniVersion"] == "0.3.1"
    assert result["interfaces"] == [{"name": "net1", "mac": mac, "sandbox": pod.path}]
    assert result["ips"] == [{"version": "4", "interface": 0, "address": "10.0.0.10/24",
                              "gateway": "10.0.0.1"}]
    assert "eth2" not in node.links()
    net1 = pod.link("net1")
    assert (net1["address"], net1["mtu"], net1.get("ifalias")) == (mac, 1450, "eth2")
    assert "UP" in net1["flags"]
    assert addresses(pod, "net1") == ["10.0.0.10/24"]
    assert pod.run("ping", "-c1", "-w8", "10.0.0.100", check=False).returncode == 0
    assert node.allocations() == ["10.0.0.10"] and node.saved() == ["ctr-1:net1"]

    node.delete(conf, pod)
    assert links(pod) == ["lo"]
    assert node.links()["eth2"] == (mac, 1450, False)
    assert node.host.link("eth2").get("ifalias") is None
    assert node.allocations() == [] and node.saved() == []


def test_del_after_the_pod_namespace_is_gone(node: Node) -> None:
    """The address is released and the state dropped (the veth stand-in dies with the
    namespace; a real NIC would fall back to the machine's namespace)."""
    node.device()
    pod = node.namespaces("pod")
    conf = node.conf()
    node.add(conf, pod)
    path = pod.path
    node.namespaces.remove(pod)

    node.delete(conf, path)
    assert node.allocations() == [] and node.saved() == []
    node.delete(conf, path)
    node.delete(conf, None)


def test_del_without_netns_uses_the_saved_namespace(node: Node) -> None:
    mac, _ = node.device()
    pod = node.namespaces("pod")
    conf = node.conf()
    node.add(conf, pod)
    node.delete(conf, None)
    assert links(pod) == ["lo"] and node.links()["eth2"][0] == mac
    assert node.allocations() == [] and node.saved() == []


# --- every version ---------------------------------------------------------------------------

@pytest.mark.parametrize("version", spec.ALL)
def test_add_check_del_every_version(version: str, node: Node) -> None:
    mac, _ = node.device()
    pod = node.namespaces("pod")
    conf = node.conf(version, dns={"nameservers": ["10.0.0.53"]})
    result = node.add(conf, pod)

    assert result["cniVersion"] == version
    assert result["dns"] == {"nameservers": ["10.0.0.53"]}
    if spec.at_least(version, "0.3.0"):
        expected: dict[str, Any] = {"name": "net1", "mac": mac, "sandbox": pod.path}
        if spec.at_least(version, "1.1.0"):
            expected["mtu"] = 1500
        assert result["interfaces"] == [expected]
        assert [(ip["address"], ip["interface"]) for ip in result["ips"]] == [
            ("10.0.0.10/24", 0)]
    else:
        assert result["ip4"] == {"ip": "10.0.0.10/24", "gateway": "10.0.0.1"}
    assert pod.link("net1")["address"] == mac

    check = node.run("CHECK", {**conf, "prevResult": result}, pod)
    if spec.at_least(version, "0.4.0"):
        assert check.ok() is None
    else:
        check.error(1)

    for _ in range(2):  # DEL, then DEL again
        node.delete(conf, pod)
        assert links(pod) == ["lo"] and node.links()["eth2"][0] == mac
        assert node.allocations() == [] and node.saved() == []


def test_l2_only_and_old_versions(node: Node) -> None:
    """Without IPAM the attachment is L2 only (0.3.0 and later can say so)."""
    mac, _ = node.device()
    pod = node.namespaces("pod")
    node.run("ADD", node.conf("0.2.0", ipam=False, device="eth2"), pod).error(1)
    assert "eth2" in node.links() and links(pod) == ["lo"]

    conf = node.conf("1.0.0", ipam=False, device="eth2")
    result = node.add(conf, pod)
    assert result == {"cniVersion": "1.0.0", "interfaces": [
        {"name": "net1", "mac": mac, "sandbox": pod.path}]}
    assert "UP" in pod.link("net1")["flags"] and addresses(pod, "net1") == []
    node.delete(conf, pod)
    assert "eth2" in node.links()


# --- selectors -------------------------------------------------------------------------------

@pytest.mark.parametrize("selector", ["device", "hwaddr", "kernelpath", "pciBusID", "deviceID"])
def test_every_selector(selector: str, node: Node) -> None:
    """Each way to name the device finds it; `mtu` applies in the pod and is undone on DEL."""
    mac, _ = node.device(mtu=1500)
    node.fake_pci("eth2")
    keys: dict[str, Any] = {
        "device": {"device": "eth2"},
        "hwaddr": {"hwaddr": mac.upper().replace(":", "-")},
        "kernelpath": {"kernelpath": KERNEL_PATH},
        "pciBusID": {"pciBusID": PCI_ADDRESS},
        "deviceID": {"capabilities": {"deviceID": True},
                     "runtimeConfig": {"deviceID": PCI_ADDRESS}},
    }[selector]
    pod = node.namespaces("pod")
    conf = node.conf("1.1.0", mtu=1300, **keys)
    result = node.add(conf, pod)

    [interface] = result["interfaces"]
    assert (interface["name"], interface["mac"], interface["mtu"]) == ("net1", mac, 1300)
    assert interface.get("pciID") == (PCI_ADDRESS if selector in ("pciBusID", "deviceID")
                                      else None)
    assert pod.link("net1")["mtu"] == 1300 and "eth2" not in node.links()

    node.delete(conf, pod)
    assert node.links()["eth2"] == (mac, 1500, False)


def test_userspace_driver_moves_nothing(node: Node) -> None:
    """A PCI device bound to vfio-pci has no netdev: the reference's DPDK mode (IPAM only)."""
    node.fake_pci(driver="vfio-pci")
    pod = node.namespaces("pod")
    conf = node.conf("1.0.0", pciBusID=PCI_ADDRESS)
    result = node.add(conf, pod)
    assert "interfaces" not in result
    assert [ip["address"] for ip in result["ips"]] == ["10.0.0.10/24"]
    assert links(pod) == ["lo"] and node.saved() == ["ctr-1:net1"]
    assert node.run("CHECK", {**conf, "prevResult": result}, pod).ok() is None
    node.delete(conf, pod)
    assert node.allocations() == [] and node.saved() == []


# --- the device changes while attached -------------------------------------------------------

def test_renamed_in_pod_and_its_name_taken_on_the_node(node: Node) -> None:
    """DEL finds the device by identity, not name, and returns it under a free name when
    another link took its own (the reference fails DEL there, forever)."""
    mac, _ = node.device(mtu=1480)
    pod = node.namespaces("pod")
    conf = node.conf()
    result = node.add(conf, pod)
    pod.run("ip", "link", "set", "net1", "down")
    pod.run("ip", "link", "set", "net1", "name", "renamed0")
    node.run("CHECK", {**conf, "prevResult": result}, pod).error(999)  # not under net1
    pod.run("ip", "link", "add", "net1", "type", "veth", "peer", "name", "other0")
    node.run("CHECK", {**conf, "prevResult": result}, pod).error(999)  # not the same device
    node.host.run("ip", "link", "add", "eth2", "type", "veth", "peer", "name", "other0")
    intruder = node.links()["eth2"]

    outcome = node.delete(conf, pod)
    assert links(pod) == ["lo", "other0", "net1"]  # the pod's own links stay
    assert node.links()["eth2"] == intruder
    assert node.links()["eth2-1"] == (mac, 1480, False)
    assert "eth2-1" in outcome.stderr
    assert node.allocations() == [] and node.saved() == []


def test_del_of_an_attachment_the_reference_made(node: Node) -> None:
    """No saved state: the interface's alias (the reference's record) brings it home."""
    if not REFERENCE.exists():
        pytest.skip("reference host-device not installed")
    mac, _ = node.device()
    pod = node.namespaces("pod")
    conf = node.conf("1.0.0", ipam=False, device="eth2")
    node.run("ADD", conf, pod, program=str(REFERENCE)).ok()
    assert pod.link("net1")["address"] == mac and node.saved() == []
    node.delete(conf, pod)
    assert links(pod) == ["lo"] and node.links()["eth2"][0] == mac


# --- bad input: refused, nothing changed -----------------------------------------------------

BAD = {
    "two selectors": ({"device": "eth2", "hwaddr": "02:00:00:00:00:01"}, 7),
    "none": ({"device": ""}, 7),
    "pciBusID and another deviceID": ({"pciBusID": PCI_ADDRESS,
                                       "runtimeConfig": {"deviceID": "0000:00:06.0"}}, 7),
    "no such device": ({"device": "eth9"}, 7),
    "no such MAC": ({"hwaddr": "02:00:00:00:00:99"}, 7),
    "no such PCI device": ({"pciBusID": "0000:00:07.0"}, 7),
    "bad MAC": ({"hwaddr": "02:00:00"}, 7),
    "bad PCI address": ({"pciBusID": "../../x"}, 7),
    "kernelpath outside /sys/devices": ({"kernelpath": "/sys/devices/../class/net/eth2"}, 7),
    "in use (bridge port)": ({"device": "eth2"}, 7),
    "negative MTU": ({"device": "eth2", "mtu": -1}, 7),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_changes_nothing(case: str, node: Node) -> None:
    keys, code = BAD[case]
    node.device()
    node.fake_pci("eth2")
    if case.startswith("in use"):
        node.host.run("ip", "link", "add", "br0", "type", "bridge")
        node.host.run("ip", "link", "set", "eth2", "master", "br0")
    before = node.links()
    pod = node.namespaces("pod")
    error = node.run("ADD", node.conf(**keys), pod).error(code)
    if case.startswith("in use"):
        assert "br0" in error["msg"]
    assert node.links() == before and links(pod) == ["lo"]
    assert node.allocations() == [] and node.saved() == []


def test_failure_after_the_move_returns_the_device(node: Node) -> None:
    """The pod already has CNI_IFNAME, or IPAM fails: the device is back as it was."""
    mac, _ = node.device(mtu=1460)
    node.host.run("ip", "link", "set", "eth2", "up")
    pod = node.namespaces("pod")
    pod.run("ip", "link", "add", "net1", "type", "veth", "peer", "name", "other0")
    before = node.links()
    node.run("ADD", node.conf(device="eth2", mtu=1300), pod).error(999)
    assert node.links() == before and node.host.link("eth2").get("ifalias") is None

    pod.run("ip", "link", "del", "net1")
    broken = node.conf(device="eth2")
    broken["ipam"]["rangeStart"] = "10.9.0.10"  # outside the subnet: host-local refuses
    assert node.run("ADD", broken, pod).status == 1
    assert node.links() == before and links(pod) == ["lo"]
    assert node.allocations() == [] and node.saved() == []
    assert "UP" in node.host.link("eth2")["flags"]  # it was up before ADD


def test_second_add_for_the_same_attachment_is_refused(node: Node) -> None:
    node.device()
    pod = node.namespaces("pod")
    conf = node.conf(device="eth2")
    node.add(conf, pod)
    node.run("ADD", conf, pod).error(7)
    assert pod.link("net1") and node.saved() == ["ctr-1:net1"]
    node.delete(conf, pod)


# --- STATUS and GC ---------------------------------------------------------------------------

def test_status_and_gc(node: Node) -> None:
    node.device()
    pod = node.namespaces("pod")
    conf = node.conf("1.1.0")
    node.add(conf, pod)
    assert node.run("STATUS", conf, None).ok() is None
    assert node.run("STATUS", node.conf("1.1.0", ipam=False), None).ok() is None

    keep = {**conf, "cni.dev/valid-attachments": [{"containerID": "ctr-1", "ifname": "net1"}]}
    assert node.run("GC", keep, None).ok() is None
    assert node.saved() == ["ctr-1:net1"] and node.allocations() == ["10.0.0.10"]

    drop = {**conf, "cni.dev/valid-attachments": []}
    assert node.run("GC", drop, None).ok() is None
    assert node.saved() == [] and node.allocations() == []
    assert os.path.exists(pod.path)


# --- the temporary namespace -----------------------------------------------------------------

def test_temporary_namespace_is_empty_and_leaves_nothing(netns_factory: NetnsFactory) -> None:
    """netns.temporary: a fresh namespace (only `lo`), this thread back home, and no trace
    once the block ends (nothing names it on disk)."""
    from pycni import link, netns

    home = os.stat(netns.own_path()).st_ino
    with netns.temporary() as path:
        assert os.stat(path).st_ino != home
        assert os.stat(netns.own_path()).st_ino == home
        with link.socket(path) as scratch:
            assert [item.get_attr("IFLA_IFNAME") for item in scratch.get_links()] == ["lo"]
    with pytest.raises(FileNotFoundError):
        os.stat(path)
