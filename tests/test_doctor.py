"""`pycni doctor`: each failure of the users' table injected into a sandbox node, found, and
given its fix.

The node is a sandbox network namespace (an underlay `eth0`, `flannel.1` with one peer's
route, neighbour and FDB entries, `cni0`) and temporary directories for the CNI configs,
binaries, flannel's subnet.env and file store, host-local's allocations and the NADs. The
doctor runs in-process with its thread inside that namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pycni import doctor, netns
from tests.conftest import Netns, NetnsFactory

SEEDS = Path("/work/shared/seeds")
PEER_MAC = "aa:bb:cc:00:00:02"
PEER_IP = "192.168.0.20"
PEER_SUBNET = "10.244.2.0/24"
LEASE = {"BackendType": "vxlan", "Expiration": "2099-01-01T00:00:00.000000Z"}
BINARIES = ("multus", "flannel", "portmap", "bridge", "host-local", "macvlan", "sriov")


@dataclass
class Node:
    ns: Netns
    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "net.d"

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def nads(self) -> Path:
        return self.root / "nads"

    @property
    def ipam(self) -> Path:
        return self.root / "networks"

    def args(self) -> list[str]:
        root = self.root
        return ["--cni-conf-dir", str(self.conf), "--cni-bin-dir", str(self.bin),
                "--subnet-file", str(root / "subnet.env"), "--store-dir", str(root / "store"),
                "--ipam-dir", str(self.ipam), "--nad-dir", str(self.nads),
                "--pod-annotations", str(root / "pod-annotations.json")]

    def ip(self, *args: str) -> None:
        self.ns.run(*args)


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def build_kernel(node: Node) -> str:
    """eth0 underlay, flannel.1 holding 10.244.1.0/32, cni0 at the lease's MTU, and the peer
    programmed as the agent does; the VTEP MAC of flannel.1."""
    for cmd in (
        "ip link set lo up",
        "ip link add eth0 type veth peer name eth0-peer",   # no dummy module here
        "ip addr add 192.168.0.10/24 dev eth0",
        "ip link set eth0-peer up",
        "ip link set eth0 up",
        "ip link add flannel.1 type vxlan id 1 local 192.168.0.10 dev eth0 dstport 8472 "
        "nolearning",
        "ip link set flannel.1 mtu 1450 up",
        "ip addr add 10.244.1.0/32 dev flannel.1",
        "ip link add cni0 type bridge",
        "ip link set cni0 mtu 1450 up",
        "ip addr add 10.244.1.1/24 dev cni0",
        f"ip route add {PEER_SUBNET} via 10.244.2.0 dev flannel.1 onlink",
        f"ip neigh add 10.244.2.0 lladdr {PEER_MAC} dev flannel.1 nud permanent",
        f"bridge fdb append {PEER_MAC} dev flannel.1 dst {PEER_IP}",
    ):
        node.ip(*cmd.split())
    return str(node.ns.link("flannel.1")["address"])


def build_files(node: Node, vtep_mac: str) -> None:
    root = node.root
    multus = json.loads((SEEDS / "multus-conf.json").read_text())
    kubeconfig = root / "multus.kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    kubeconfig.chmod(0o600)
    multus["kubeconfig"] = str(kubeconfig)
    write_json(node.conf / "00-multus.conf", multus).chmod(0o600)
    shutil.copy(SEEDS / "10-flannel.conflist", node.conf / "10-flannel.conflist")
    node.bin.mkdir()
    for name in BINARIES:
        program = node.bin / name
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
    node.nads.mkdir()
    shutil.copy(SEEDS / "nad-business-network.macvlan.json", node.nads)
    (node.nads / "storage-network.yaml").write_text(
        "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\n"
        "metadata: {name: storage-network, namespace: default}\n"
        "spec:\n  config: '" + (SEEDS / "nad-storage-network.sriov.json").read_text()
        .replace("\n", " ") + "'\n")
    shutil.copy(SEEDS / "pod-annotations.json", root / "pod-annotations.json")
    (root / "subnet.env").write_text("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
                                     "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    store = root / "store"
    write_json(store / "config", json.loads((SEEDS / "net-conf.vxlan.json").read_text()))
    write_json(store / "subnets" / "10.244.1.0-24",
               {**LEASE, "PublicIP": "192.168.0.10",
                "BackendData": {"VNI": 1, "VtepMAC": vtep_mac}})
    write_json(store / "subnets" / "10.244.2.0-24",
               {**LEASE, "PublicIP": PEER_IP, "BackendData": {"VNI": 1, "VtepMAC": PEER_MAC}})
    allocation = node.ipam / "cbr0" / "10.244.1.5"
    allocation.parent.mkdir(parents=True)
    allocation.write_text("live-pod\r\neth0")   # the reference's format, made now


@pytest.fixture
def node(netns_factory: NetnsFactory, tmp_path: Path) -> Iterator[Node]:
    built = Node(netns_factory("doctor"), tmp_path)
    build_files(built, build_kernel(built))
    yield built


def run_doctor(node: Node, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    with netns.entered(node.ns.path):
        status = doctor.main([*node.args(), *extra])
    return status, capsys.readouterr().out


def lines(output: str, severity: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(severity + " ")]


def finding(output: str, severity: str, *parts: str) -> str:
    """The one line of `severity` holding every part."""
    found = [line for line in lines(output, severity) if all(p in line for p in parts)]
    assert found, f"no {severity} line with {parts} in:\n{output}"
    return found[0]


def test_healthy_node_has_no_fail(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    status, out = run_doctor(node, capsys)
    assert status == 0, out
    assert not lines(out, "FAIL") and not lines(out, "WARN"), out
    finding(out, "OK", "config: 00-multus.conf is the config in use", "1 other(s) ignored")
    finding(out, "OK", "flannel: 1 peer(s) programmed", "vxlan")
    finding(out, "OK", "mtu: FLANNEL_MTU 1450 matches flannel.1 and cni0")
    finding(out, "OK", "ipam: 1 allocation(s) in 1 network(s), none from an earlier boot")
    finding(out, "OK", "annotations: every network selected by 2 pod(s) has a definition")


# --- the users' table: meta plugin crash-looping (config file permissions) --------------------

def test_world_writable_config(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    path = node.conf / "10-flannel.conflist"
    path.chmod(0o666)
    status, out = run_doctor(node, capsys)
    assert status == 0
    line = finding(out, "WARN", f"permissions: {path} is world-writable (mode 0666)")
    assert line.endswith(f"-> fix: chmod 0644 {path}")


def test_unreadable_multus_config_crash_loops(node: Node,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = node.conf / "00-multus.conf"
    path.chmod(0o200)
    status, out = run_doctor(node, capsys)
    assert status == 1
    line = finding(out, "FAIL", f"permissions: {path} is not readable (mode 0200)",
                   "the meta plugin (Multus) will crash-loop")
    assert line.endswith(f"-> fix: chmod 0644 {path}")


def test_unreadable_multus_kubeconfig(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    kubeconfig = node.root / "multus.kubeconfig"
    kubeconfig.chmod(0o000)
    status, out = run_doctor(node, capsys)
    assert status == 1
    finding(out, "FAIL", f"multus: {kubeconfig} is not readable", "will crash-loop",
            f"fix: chmod 0644 {kubeconfig}")


def test_config_owned_by_another_user(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    path = node.conf / "10-flannel.conflist"
    os.chown(path, 4242, 4242)
    _, out = run_doctor(node, capsys)
    finding(out, "WARN", f"{path} is owned by uid 4242", f"fix: chown root:root {path}")


def test_invalid_config_json(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    path = node.conf / "10-flannel.conflist"
    path.write_text('{"name": "cbr0", "plugins": [')
    status, out = run_doctor(node, capsys)
    assert status == 1
    finding(out, "FAIL", f"config: {path} is not valid JSON", "the runtime cannot load it",
            f"fix: fix the file (python3 -m json.tool {path} shows where)")


def test_empty_config_dir(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    for path in node.conf.iterdir():
        path.unlink()
    status, out = run_doctor(node, capsys)
    assert status == 1
    finding(out, "FAIL", f"config: {node.conf} holds no .conf, .conflist or .json file")


# --- invalid attachment definition (pod creation fails: validate the JSON) --------------------

def test_invalid_nad_json(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    (node.nads / "broken.yaml").write_text(
        "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\n"
        "metadata: {name: broken-network}\n"
        "spec:\n  config: '{\"cniVersion\": \"0.3.1\", \"type\": \"macvlan\",}'\n")
    status, out = run_doctor(node, capsys)
    assert status == 1
    line = finding(out, "FAIL", "nad: NAD broken-network", "spec.config is not valid JSON",
                   "pod creation fails for pods selecting it")
    assert "-> fix: validate spec.config" in line and "json.tool" in line


def test_nad_without_cni_version_and_type(node: Node,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    write_json(node.nads / "bare.json", {
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "bare-network"}, "spec": {"config": '{"master": "eth1"}'}})
    _, out = run_doctor(node, capsys)
    finding(out, "FAIL", "NAD bare-network", "spec.config lacks cniVersion and type",
            "fix: add cniVersion and type to spec.config")


# --- attachments missing (only eth0 appears: check the definition and annotation) -------------

def test_annotation_names_missing_nad(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    (node.nads / "storage-network.yaml").unlink()
    status, out = run_doctor(node, capsys)
    assert status == 1
    line = finding(out, "FAIL", "annotations: pod storage-app selects network "
                   "'storage-network' but no NetworkAttachmentDefinition of that name exists",
                   "only eth0 appears")
    assert "-> fix: create the NAD 'storage-network' in the pod's namespace, or correct" in line
    assert "storage-app selects network 'business-network'" not in out


def test_multus_config_not_first(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    (node.conf / "00-multus.conf").rename(node.conf / "20-multus.conf")
    status, out = run_doctor(node, capsys)
    assert status == 1
    finding(out, "OK", "config: 10-flannel.conflist is the config in use")
    finding(out, "FAIL", "Multus config 20-multus.conf is not the first file",
            "so pods get only eth0", "fix: rename it to sort first (e.g. 00-multus.conf)")


def test_missing_binary_and_dangling_link(node: Node,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (node.bin / "portmap").unlink()
    (node.bin / "macvlan").unlink()
    (node.bin / "macvlan").symlink_to(node.root / "gone")
    status, out = run_doctor(node, capsys)
    assert status == 1
    finding(out, "FAIL", f"binaries: no {node.bin / 'portmap'}: type 'portmap'",
            "'failed to find plugin \"portmap\"'", "fix: install the portmap plugin in")
    finding(out, "FAIL", f"{node.bin / 'macvlan'} is a dangling symlink",
            "NAD business-network", "fix: reinstall the plugins (make install)")


def test_flannel_delegate_bridge_needed(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    (node.bin / "bridge").unlink()
    _, out = run_doctor(node, capsys)
    finding(out, "FAIL", "type 'bridge'", "flannel's delegate")


# --- high latency (MTU and interface type) ----------------------------------------------------

def test_cni0_mtu_above_lease(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    node.ip("ip", "link", "set", "cni0", "mtu", "1500")
    status, out = run_doctor(node, capsys)
    assert status == 1
    line = finding(out, "FAIL", "mtu: cni0 MTU 1500 is above FLANNEL_MTU 1450", "high latency")
    assert "-> fix: ip link set cni0 mtu 1450" in line


def test_lease_mtu_above_device(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    (node.root / "subnet.env").write_text("FLANNEL_NETWORK=10.244.0.0/16\n"
                                          "FLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1500\n")
    _, out = run_doctor(node, capsys)
    finding(out, "FAIL", "FLANNEL_MTU 1500 differs from flannel.1 MTU 1450",
            "fix: restart the agent")


def test_vxlan_mtu_above_underlay(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    node.ip("ip", "link", "set", "eth0", "mtu", "1400")   # the kernel keeps flannel.1 at 1450
    _, out = run_doctor(node, capsys)
    finding(out, "FAIL", "flannel.1 MTU 1450 exceeds underlay eth0 MTU 1400 - 50",
            "fix: ip link set flannel.1 mtu 1350")


def test_non_veth_port_on_cni0(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    node.ip("ip", "link", "add", "stray0", "mtu", "1450", "type", "vxlan", "id", "9", "dstport",
            "4790", "dev", "eth0")
    node.ip("ip", "link", "set", "stray0", "master", "cni0")
    _, out = run_doctor(node, capsys)
    finding(out, "WARN", "stray0 on cni0 is a vxlan link, not a pod's veth")


# --- flannel: subnet file, device, peers -------------------------------------------------------

def test_missing_route_and_fdb_for_peer(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    node.ip("ip", "route", "del", PEER_SUBNET)
    node.ip("bridge", "fdb", "del", PEER_MAC, "dev", "flannel.1", "dst", PEER_IP)
    status, out = run_doctor(node, capsys)
    assert status == 1
    peer = f"peer {PEER_IP} ({PEER_SUBNET})"
    line = finding(out, "FAIL", f"flannel: no route to {peer} via 10.244.2.0 dev flannel.1")
    assert "fix: restart the agent (pycni flanneld)" in line
    assert f"ip route replace {PEER_SUBNET} via 10.244.2.0 dev flannel.1 onlink" in line
    line = finding(out, "FAIL", f"no FDB entry {PEER_MAC} -> {PEER_IP} on flannel.1")
    assert f"bridge fdb append {PEER_MAC} dev flannel.1 dst {PEER_IP}" in line
    assert "no neighbour entry" not in out


def test_missing_neighbour(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    node.ip("ip", "neigh", "del", "10.244.2.0", "dev", "flannel.1")
    _, out = run_doctor(node, capsys)
    finding(out, "FAIL", f"no neighbour entry 10.244.2.0 -> {PEER_MAC} on flannel.1",
            "nud permanent")


def test_stray_entries_of_a_gone_peer(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    (node.root / "store" / "subnets" / "10.244.2.0-24").unlink()
    status, out = run_doctor(node, capsys)
    assert status == 0
    finding(out, "WARN", f"stray route {PEER_SUBNET} via 10.244.2.0", "ip route del")
    finding(out, "WARN", f"stray neighbour entry 10.244.2.0 -> {PEER_MAC}")
    finding(out, "WARN", f"stray FDB entry {PEER_MAC} -> {PEER_IP}")


def test_missing_flannel_device(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    node.ip("ip", "link", "del", "flannel.1")
    _, out = run_doctor(node, capsys)
    finding(out, "FAIL", "flannel: no flannel.1 device", "fix: restart the agent")


def test_vtep_mac_differs_from_lease(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    node.ip("ip", "link", "set", "flannel.1", "address", "02:00:00:00:00:99")
    _, out = run_doctor(node, capsys)
    finding(out, "FAIL", "flannel.1 MAC 02:00:00:00:00:99 differs from the VtepMAC")


def test_missing_subnet_file(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    (node.root / "subnet.env").unlink()
    status, out = run_doctor(node, capsys)
    assert status == 1
    finding(out, "FAIL", "subnet.env is missing", "pods fail with code 11",
            "fix: start the agent (pycni flanneld)")


# --- leaked allocations -----------------------------------------------------------------------

def test_leaked_allocation_from_earlier_boot(node: Node,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    old = node.ipam / "cbr0" / "10.244.1.9"
    old.write_text("rebooted-pod\r\neth0")
    os.utime(old, (1_000_000, 1_000_000))   # older than this boot, no metadata: leaked
    status, out = run_doctor(node, capsys)
    assert status == 0
    line = finding(out, "WARN", "ipam: network cbr0: 1 allocation(s) from an earlier boot "
                   "leaked: 10.244.1.9 (rebooted-pod/eth0)")
    assert line.endswith(f"-> fix: pycni ipam --data-dir {node.ipam} gc cbr0")
    assert "live-pod" not in out


def test_json_output(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    (node.bin / "portmap").unlink()
    status, out = run_doctor(node, capsys, "--json")
    assert status == 1
    report = json.loads(out)
    assert report["ok"] is False
    failed = [f for f in report["findings"] if f["severity"] == "FAIL"]
    assert [f["check"] for f in failed] == ["binaries"]
    assert failed[0]["fix"].startswith("install the portmap plugin")


def test_as_a_program_in_the_sandbox(node: Node) -> None:
    node.ip("ip", "link", "set", "cni0", "mtu", "1500")
    done = node.ns.run(sys.executable, "-m", "pycni.doctor", *node.args(), check=False)
    assert done.returncode == 1, done.stderr
    finding(done.stdout, "FAIL", "mtu: cni0 MTU 1500 is above FLANNEL_MTU 1450")
