"""STATUS and GC (spec 1.1) on every plugin type, and forwarded through the chains users run.

- Every type refuses STATUS and GC below 1.1.0 with code 1 (in-process: refused before any
  plugin code runs). At 1.1.0 each type's own file shows them working.
- flannel -> bridge -> host-local: GC keeping one attachment frees exactly the others'
  addresses, masquerade chains and saved delegates, also a second interface of the kept
  container; STATUS reports host-local's exhaustion (50) and flannel's own not-ready (50).
- multus: GC reaches the cluster network's delegate (also one given as a file that no cache
  names) and every additional network's, also a network whose only users are stale
  attachments (their leaked addresses go); STATUS forwards to every configured network and
  names the one that fails; delegates below 1.1.0 are not asked.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from pycni import registry
from tests.conftest import PYCNI, Netns, NetnsFactory, Outcome, cni_env, run_exec, run_in_process
from tests.multuslib import (
    SUBNET_ENV,
    MultusNode,
    interfaces,
    multus_node,  # noqa: F401 (the `node` fixture)
)

# --- refused below 1.1.0 ---------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
@pytest.mark.parametrize("command", ["STATUS", "GC"])
@pytest.mark.parametrize("plugin_type", sorted(registry.PLUGINS))
def test_status_and_gc_are_refused_below_1_1_0(plugin_type: str, command: str,
                                               version: str) -> None:
    conf = {"cniVersion": version, "name": "net", "type": plugin_type,
            "cni.dev/valid-attachments": []}
    error = run_in_process(registry.load(plugin_type), cni_env(command), conf).error(1)
    assert error["cniVersion"] == version
    assert command in error["msg"]


# --- flannel -> bridge -> host-local ---------------------------------------------------------

def lease(subnet: str = "10.244.3.1/24", ipmasq: bool = False) -> str:
    return (f"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={subnet}\nFLANNEL_MTU=1450\n"
            f"FLANNEL_IPMASQ={'true' if ipmasq else 'false'}\n")


class FlannelNode:
    """A sandbox node running `pycni flannel` with every path in tmp_path."""

    def __init__(self, host: Netns, namespaces: NetnsFactory, cni_bin: Path,
                 tmp: Path) -> None:
        self.host, self.namespaces, self.cni_bin, self.tmp = host, namespaces, cni_bin, tmp
        self.subnet_file = tmp / "subnet.env"
        self.subnet_file.write_text(lease())
        self.conf = {"cniVersion": "1.1.0", "name": "cbr0", "type": "flannel",
                     "subnetFile": str(self.subnet_file), "dataDir": str(tmp / "flannel"),
                     "ipam": {"dataDir": str(tmp / "ipam")}}

    def run(self, command: str, pod: Netns | None = None, cid: str = "",
            ifname: str = "eth0", **keys: Any) -> Outcome:
        env = cni_env(command, pod.path if pod else "", ifname=ifname if cid else "",
                      container_id=cid, path=str(self.cni_bin))
        return run_exec([*PYCNI, "flannel"], env, {**self.conf, **keys}, in_ns=self.host)

    def gc(self, *valid: tuple[str, str]) -> Outcome:
        return self.run("GC", **{"cni.dev/valid-attachments": [
            {"containerID": cid, "ifname": ifname} for cid, ifname in valid]})

    def allocations(self) -> dict[str, tuple[str, str]]:
        """host-local's files: address -> (container, interface)."""
        directory = self.tmp / "ipam" / "cbr0"
        found = {}
        for path in directory.glob("10.*") if directory.exists() else []:
            lines = path.read_text().splitlines()
            found[path.name] = (lines[0].strip(), lines[1].strip())
        return found

    def saved(self) -> list[str]:
        directory = self.tmp / "flannel" / "cbr0"
        return sorted(p.name for p in directory.iterdir() if p.name != "lock") \
            if directory.exists() else []

    def masqueraded(self) -> str:
        """The node's NAT rules, as text (iptables or nftables, whichever bridge used)."""
        return "\n".join(self.host.run(*cmd, check=False).stdout for cmd in (
            ("iptables-save", "-t", "nat"), ("nft", "list", "ruleset")))


@pytest.fixture
def flannel(host_ns: Netns, netns_factory: NetnsFactory, cni_bin: Path,
            tmp_path: Path) -> FlannelNode:
    return FlannelNode(host_ns, netns_factory, cni_bin, tmp_path)


def test_gc_through_flannel_frees_exactly_the_unlisted_attachments(
        flannel: FlannelNode) -> None:
    kept, gone = flannel.namespaces("pod"), flannel.namespaces("pod")
    flannel.run("ADD", kept, "ctr-kept").ok()
    flannel.run("ADD", kept, "ctr-kept", ifname="net1").ok()  # a second interface, same pod
    flannel.run("ADD", gone, "ctr-gone").ok()
    assert sorted(flannel.allocations().values()) == [
        ("ctr-gone", "eth0"), ("ctr-kept", "eth0"), ("ctr-kept", "net1")]
    assert "ctr-gone" in flannel.masqueraded()

    flannel.gc(("ctr-kept", "eth0")).ok()
    assert list(flannel.allocations().values()) == [("ctr-kept", "eth0")]
    assert flannel.saved() == ["ctr-kept:eth0"]
    assert "ctr-gone" not in flannel.masqueraded()
    assert "ctr-kept" in flannel.masqueraded()

    flannel.gc(("ctr-kept", "eth0")).ok()  # again: nothing more goes
    assert list(flannel.allocations().values()) == [("ctr-kept", "eth0")]
    flannel.run("DEL", kept, "ctr-kept").ok()
    flannel.gc().ok()
    assert flannel.allocations() == {} and flannel.saved() == []
    assert "ctr-kept" not in flannel.masqueraded()


def test_status_through_flannel_reports_host_local_and_the_agent(flannel: FlannelNode) -> None:
    flannel.subnet_file.write_text(lease("10.244.3.1/30"))  # one address for pods: .2
    assert flannel.run("STATUS").ok() is None
    pod = flannel.namespaces("pod")
    flannel.run("ADD", pod, "ctr-1").ok()
    error = flannel.run("STATUS").error(50)  # host-local's answer, through bridge
    assert "exhausted" in error["msg"] and "1 of 1 in use" in error["msg"]
    assert flannel.run("ADD", flannel.namespaces("pod"), "ctr-2").status == 1
    flannel.run("DEL", pod, "ctr-1").ok()
    assert flannel.run("STATUS").ok() is None

    flannel.subnet_file.unlink()  # the agent holds no lease (yet)
    error = flannel.run("STATUS").error(50)
    assert "flannel agent" in error["msg"] and str(flannel.subnet_file) in error["details"]
    flannel.subnet_file.write_text("FLANNEL_SUBNET=10.244.3.1/33\n")  # written wrong
    assert "flannel agent" in flannel.run("STATUS").error(50)["msg"]


def test_flannel_refuses_gc_without_the_runtimes_list(flannel: FlannelNode) -> None:
    flannel.run("ADD", flannel.namespaces("pod"), "ctr-1").ok()
    flannel.run("GC").error(7)
    assert list(flannel.allocations().values()) == [("ctr-1", "eth0")]
    assert flannel.saved() == ["ctr-1:eth0"]


# --- multus ----------------------------------------------------------------------------------

def multus_conf(node: MultusNode, *extra: dict[str, Any]) -> dict[str, Any]:
    """The seed config with every delegate at 1.1.0 (GC and STATUS exist from 1.1.0 on)."""
    conf = node.conf(cniVersion="1.1.0")
    cluster = copy.deepcopy(conf["delegates"][0])
    cluster["cniVersion"] = "1.1.0"
    conf["delegates"] = [cluster, *extra]
    return conf


def test_multus_gc_reaches_every_delegate_network(node: MultusNode) -> None:
    node.macvlan_nad("default", "business-network", "192.168.100.0/24", master="eth1",
                     cniVersion="1.1.0")
    conf = multus_conf(node)
    pods = {"kept": node.add_pod("kept"),
            "gone": node.add_pod("gone", networks="business-network"),
            "leak": node.add_pod("leak", networks="business-network")}
    for name, pod in pods.items():
        node.run("ADD", conf, pod, name).ok()
    assert sorted(interfaces(pods["leak"])) == ["eth0", "net1"]
    (node.cache_dir / "ctr-leak:eth0").unlink()  # its DEL never comes: only GC can free it
    held = node.all_allocations()
    assert sorted(held["default-cni-network"].values()) == ["ctr-gone", "ctr-kept", "ctr-leak"]
    assert sorted(held["business-network"].values()) == ["ctr-gone", "ctr-leak"]

    gc = {**conf, "cni.dev/valid-attachments": [{"containerID": "ctr-kept", "ifname": "eth0"}]}
    node.run("GC", gc, None, "none").ok()
    assert node.caches() == ["ctr-kept:eth0"]
    assert interfaces(pods["gone"]) == {}  # the stale attachment was DEL'd
    assert node.all_allocations() == {
        "default-cni-network": {"10.244.1.2": "ctr-kept"}}  # the leak's are freed too
    flannel_saved = node.lib_dir / "flannel" / "default-cni-network"
    assert sorted(p.name for p in flannel_saved.iterdir() if p.name != "lock") == [
        "ctr-kept:eth0"]

    node.run("DEL", conf, pods["kept"], "kept").ok()
    node.run("GC", {**conf, "cni.dev/valid-attachments": []}, None, "none").ok()
    assert node.all_allocations() == {} and node.caches() == []


def test_multus_gc_reaches_a_cluster_network_given_as_a_file(node: MultusNode) -> None:
    """No `delegates`, no cache naming the network: the configured file still gets GC."""
    cluster = multus_conf(node)["delegates"][0]
    (node.etc_dir / "10-flannel.conflist").write_text(json.dumps(cluster))
    conf = node.conf(cniVersion="1.1.0", clusterNetwork="/etc/cni/net.d/10-flannel.conflist")
    del conf["delegates"]
    node.run("ADD", conf, node.add_pod("leak"), "leak").ok()
    (node.cache_dir / "ctr-leak:eth0").unlink()  # its DEL never comes
    assert node.all_allocations() == {"default-cni-network": {"10.244.1.2": "ctr-leak"}}
    node.run("GC", {**conf, "cni.dev/valid-attachments": []}, None, "none").ok()
    assert node.all_allocations() == {}


def test_multus_status_forwards_to_every_configured_network(node: MultusNode) -> None:
    conf = multus_conf(node)
    assert node.run("STATUS", conf, None, "none").ok() is None

    # the cluster network: flannel's lease leaves one pod address, then none
    (node.run_dir / "subnet.env").write_text(SUBNET_ENV.replace("10.244.1.1/24",
                                                                "10.244.1.1/30"))
    first = node.add_pod("first")
    node.run("ADD", conf, first, "first").ok()
    error = node.run("STATUS", conf, None, "none").error(50)
    assert "default-cni-network" in error["msg"] and "exhausted" in error["msg"]
    node.run("DEL", conf, first, "first").ok()
    assert node.run("STATUS", conf, None, "none").ok() is None

    (node.run_dir / "subnet.env").unlink()  # flannel's agent is not ready
    error = node.run("STATUS", conf, None, "none").error(50)
    assert "default-cni-network" in error["msg"] and "flannel agent" in error["msg"]
    (node.run_dir / "subnet.env").write_text(SUBNET_ENV)  # a new lease: a new bridge address
    node.host.run("ip", "link", "del", "cni0")

    # an additional configured network whose range is full
    extra = {"cniVersion": "1.1.0", "name": "extra-net", "type": "macvlan", "master": "eth2",
             "ipam": {"type": "host-local", "subnet": "172.30.0.0/30"}}
    conf = multus_conf(node, extra)
    assert node.run("STATUS", conf, None, "none").ok() is None
    second = node.add_pod("second")
    node.run("ADD", conf, second, "second").ok()
    assert interfaces(second)["net1"] == ["172.30.0.2/30"]
    error = node.run("STATUS", conf, None, "none").error(50)
    assert "extra-net" in error["msg"] and "exhausted" in error["msg"]
    node.run("DEL", conf, second, "second").ok()
    assert node.run("STATUS", conf, None, "none").ok() is None
    assert node.all_allocations() == {}


def test_multus_status_before_1_1_0_delegates_asks_nothing(node: MultusNode) -> None:
    """A delegate list below 1.1.0 has no STATUS: multus does not invent one for it."""
    (node.run_dir / "subnet.env").unlink()
    conf = node.conf(cniVersion="1.1.0")  # the seed's delegates stay at 0.3.1
    assert node.run("STATUS", conf, None, "none").ok() is None
