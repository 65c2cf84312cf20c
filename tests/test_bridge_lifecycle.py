"""bridge over a pod's life: DEL in every circumstance, a failed ADD, CHECK finding damage,
GC and STATUS, the MAC spoof check, and the users' cnv-bridge seed as given.

Same sandbox as test_bridge.py (whose `Node` helpers these use): the plugin runs inside a
sandbox host namespace, host-local is a real delegate on CNI_PATH, dataDir is in tmp_path.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO, Netns
from tests.test_bridge import (
    GATEWAY4,
    SUBNET4,
    SUBNET6,
    Node,
    addresses,
    host_veth,
    links,
    node,
    ping,
    pod_entry,
    unreachable,
    veths,
)

__all__ = ["node"]  # the fixture, shared

SEEDS = REPO / "tests" / "seeds"


# --- DEL -------------------------------------------------------------------------------------

def test_del_without_netns_then_with_then_again(node: Node) -> None:
    conf = node.conf(subnets=(SUBNET4, SUBNET6), isGateway=True, ipMasq=True,
                     ipMasqBackend="iptables", macspoofchk=True)
    pod = node.pod()
    node.add(conf, pod)
    rules = node.rules()
    assert rules.count('id: \\"ctr-1\\"') == 6  # per family: jump, accept, masquerade
    assert "cni-br-iface-ctr-1-eth0" in node.spoof_rules()
    assert len(node.allocations()) == 2

    node.delete(conf, None)  # no CNI_NETNS: the address and the rules go all the same
    assert node.allocations() == {}
    assert "ctr-1" not in node.rules() and "CNI-" not in node.rules()
    assert "ctr-1" not in node.spoof_rules()
    assert len(veths(node.host)) == 1  # the pod still holds its end

    for _ in range(2):
        node.delete(conf, pod)
        assert veths(node.host) == [] and links(pod) == ["lo"]


def test_del_after_the_pod_namespace_vanished(node: Node) -> None:
    conf = node.conf(ipMasq=True, ipMasqBackend="nftables", macspoofchk=True)
    pod = node.pod()
    node.add(conf, pod)
    node.namespaces.remove(pod)
    node.delete(conf, pod)
    assert veths(node.host) == [] and node.allocations() == {}
    assert "ctr-1" not in node.rules() and "ctr-1" not in node.spoof_rules()


# --- a failed ADD -----------------------------------------------------------------------------

def test_failure_after_ipam_add_leaves_nothing_and_force_address_replaces(node: Node) -> None:
    node.host.run("ip", "link", "add", "cni0", "type", "bridge")
    node.host.run("ip", "addr", "add", "10.99.0.1/24", "dev", "cni0")
    conf = node.conf(isGateway=True, ipMasq=True, macspoofchk=True)
    pod = node.pod()

    error = node.run("ADD", conf, pod).error(999)
    assert "'cni0' already has an IP address different from 10.22.0.1/24" in error["msg"]
    assert "forceAddress" in error["msg"] and "ip addr del 10.99.0.1/24" in error["msg"]
    assert veths(node.host) == [] and links(pod) == ["lo"]
    assert node.allocations() == {}
    assert "CNI-" not in node.rules() and "ctr-1" not in node.spoof_rules()
    assert addresses(node.host, "cni0") == ["10.99.0.1/24"]

    result = node.add({**conf, "forceAddress": True}, pod)
    assert addresses(node.host, "cni0") == ["10.22.0.1/24"]
    assert list(node.allocations().values()) == ["ctr-1"]
    assert result["ips"][0]["gateway"] == GATEWAY4
    assert ping(pod, GATEWAY4)


# --- CHECK ------------------------------------------------------------------------------------

def test_check_reports_what_is_missing(node: Node) -> None:
    conf = node.conf(version="1.1.0", isDefaultGateway=True)
    pod = node.pod()
    result = node.add(conf, pod)
    node.check(conf, result, pod).ok()
    error = node.run("CHECK", conf, pod).error(7)
    assert "prevResult" in error["msg"]

    pod.run("ip", "route", "del", "default")
    error = node.check(conf, result, pod).error(999)
    assert f"route 0.0.0.0/0 via {GATEWAY4} missing" in error["msg"]
    pod.run("ip", "route", "add", "default", "via", GATEWAY4, "dev", "eth0")

    veth = host_veth(result)
    node.host.run("ip", "link", "set", veth, "nomaster")
    error = node.check(conf, result, pod).error(999)
    assert "'eth0' is not a port of 'cni0'" in error["msg"]
    node.host.run("ip", "link", "set", veth, "master", "cni0")
    node.check(conf, result, pod).ok()

    pod.run("ip", "addr", "del", "10.22.0.2/24", "dev", "eth0")
    error = node.check(conf, result, pod).error(999)
    assert "'eth0' lacks address 10.22.0.2/24" in error["msg"]


# --- GC and STATUS ----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_gc_removes_what_unlisted_attachments_hold(backend: str, node: Node) -> None:
    conf = node.conf(version="1.1.0", ipMasq=True, ipMasqBackend=backend, macspoofchk=True)
    pods = {cid: node.pod() for cid in ("ctr-keep", "ctr-gone")}
    for cid, pod in pods.items():
        node.add(conf, pod, cid)
    assert sorted(node.allocations().values()) == ["ctr-gone", "ctr-keep"]
    for cid in pods:
        assert cid in node.rules() and f"cni-br-iface-{cid}-eth0" in node.spoof_rules()

    valid = [{"containerID": "ctr-keep", "ifname": "eth0"}]
    assert node.run("GC", {**conf, "cni.dev/valid-attachments": valid}).ok() is None
    assert list(node.allocations().values()) == ["ctr-keep"]
    rules, spoof_rules = node.rules(), node.spoof_rules()
    assert "ctr-keep" in rules and "ctr-gone" not in rules
    assert "cni-br-iface-ctr-keep-eth0" in spoof_rules and "ctr-gone" not in spoof_rules


def test_status_is_the_ipam_plugins(node: Node) -> None:
    conf = node.conf(version="1.1.0", subnets=())
    assert node.run("STATUS", conf).ok() is None  # L2 only: nothing to ask
    conf["ipam"] = {"type": "host-local", "dataDir": str(node.data_dir),
                    "ranges": [[{"subnet": SUBNET4, "rangeStart": "10.22.0.10",
                                 "rangeEnd": "10.22.0.10"}]]}
    assert node.run("STATUS", conf).ok() is None
    node.add(conf, node.pod())
    error = node.run("STATUS", conf).error(50)  # host-local's answer: the range is full
    assert "exhausted" in error["msg"]


# --- MAC spoof check --------------------------------------------------------------------------

def test_macspoofchk_drops_a_forged_source_mac(node: Node) -> None:
    conf = node.conf(bridge="br-spoof", macspoofchk=True)
    pod_a, pod_b = node.pod("a"), node.pod("b")
    result_a = node.add(conf, pod_a, "ctr-a")
    node.add(conf, pod_b, "ctr-b")
    real_mac = pod_entry(result_a)["mac"]
    rules = node.spoof_rules()
    assert "cni-br-iface-ctr-a-eth0" in rules and "cni-br-iface-ctr-b-eth0" in rules
    assert f"ether saddr {real_mac} return" in rules
    assert f'iifname "{host_veth(result_a)}"' in rules

    assert ping(pod_a, "10.22.0.3")
    pod_a.run("ip", "link", "set", "eth0", "address", "02:00:00:00:be:ef")
    assert unreachable(pod_a, "10.22.0.3")
    pod_a.run("ip", "link", "set", "eth0", "address", real_mac)
    assert ping(pod_a, "10.22.0.3")

    node.delete(conf, pod_a, "ctr-a")
    rules = node.spoof_rules()
    assert "ctr-a" not in rules and "cni-br-iface-ctr-b-eth0" in rules
    node.delete(conf, pod_b, "ctr-b")
    assert "cni-br-iface" not in node.spoof_rules()


# --- the users' cnv-bridge NetworkAttachmentDefinition ----------------------------------------

def test_cnv_bridge_seed_as_given(node: Node) -> None:
    seed_bytes = (SEEDS / "nad-dev-bridge.cnv-bridge.json").read_bytes()
    program = str(Path(node.cni_bin) / "cnv-bridge")
    pods: dict[str, Netns] = {"vm-a": node.pod("a"), "vm-b": node.pod("b")}
    for number, (cid, pod) in enumerate(pods.items(), start=1):
        result = node.run("ADD", seed_bytes, pod, cid, program=program).ok()
        assert result["cniVersion"] == "0.3.1" and "ips" not in result
        assert [i["name"] for i in result["interfaces"]][::2] == ["dev-bridge", "eth0"]
        assert "UP" in pod.link("eth0")["flags"]
        assert pod.ip_json("-4", "addr", "show", "dev", "eth0") == []
        assert addresses(pod, "eth0") == []  # nor global IPv6: only the kernel's link-local
        assert f"cni-br-iface-{cid}-eth0" in node.spoof_rules()
        pod.run("ip", "addr", "add", f"192.168.77.{number}/24", "dev", "eth0")
    assert ping(pods["vm-a"], "192.168.77.2") and ping(pods["vm-b"], "192.168.77.1")

    for cid, pod in pods.items():
        node.run("DEL", seed_bytes, pod, cid, program=program).ok()
    assert veths(node.host) == [] and "cni-br-iface" not in node.spoof_rules()

