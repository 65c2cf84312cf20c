"""The users' default pod network end to end: flannel agents on three sandbox nodes, pods made
through libcni from the seed conflist (flannel + portmap) unchanged, and the traffic flows of
shared/seeds/README.md traced on the wire.

Flows: pod to pod on one node (across cni0); pod to pod across nodes (VXLAN on UDP 8472 with
VNI 1 between the nodes' addresses, or plain routing with host-gw and DirectRouting); pod to an
"outside" server, masqueraded to the node's address.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from conformance.flannellib import PROGRAM, SEEDS, Pod, add_pod, capture
from tests.conftest import NetnsFactory
from tests.etcdlib import EtcdServer
from tests.flannelcluster import OUTSIDE_ADDRESS, Cluster, Node, wait_for
from tests.kubeapi import KubeApiServer, write_kubeconfig

pytestmark = [pytest.mark.conformance, pytest.mark.kernel]


@pytest.fixture
def cluster_factory(built: None, netns_factory: NetnsFactory,
                    tmp_path: Path) -> Iterator[Any]:
    made: list[tuple[Cluster, list[Pod]]] = []

    def make(net_conf: str, nodes: int = 3) -> tuple[Cluster, Any]:
        conf = json.loads((SEEDS / f"net-conf.{net_conf}.json").read_text())
        cluster = Cluster(netns_factory, tmp_path / f"c{len(made)}", conf, nodes,
                          program=PROGRAM)
        pods: list[Pod] = []
        made.append((cluster, pods))
        cluster.start()

        def add(node: Node) -> Pod:
            pod = add_pod(netns_factory, node)
            pods.append(pod)
            return pod
        return cluster, add

    yield make
    for cluster, pods in made:
        for pod in pods:
            pod.delete()
        cluster.close()


def test_vxlan_flows_through_libcni_with_the_seed_conflist(cluster_factory: Any) -> None:
    cluster, add_pod = cluster_factory("vxlan")
    node1, node2, _ = cluster.nodes
    a, b = add_pod(node1), add_pod(node1)
    c = add_pod(node2)
    for pod in (a, b, c):
        gateway = str(pod.result["ips"][0]["gateway"])
        assert pod.address.startswith(gateway.rsplit(".", 1)[0] + ".")
        routes = {r["dst"]: r.get("gateway") for r in pod.netns.ip_json("route", "show")}
        assert routes["default"] == gateway and routes["10.244.0.0/16"] == gateway
        assert pod.netns.link("eth0")["mtu"] == 1450
    cni0 = node1.ip_json("-4", "addr", "show", "dev", "cni0")[0]["addr_info"][0]
    assert f"{cni0['local']}/{cni0['prefixlen']}" == node1.wait_ready()["FLANNEL_SUBNET"]

    # 1. same node: across cni0, nothing on the underlay
    assert a.ping(b.address).returncode == 0

    # 4. across nodes: VXLAN between the node addresses, UDP 8472, VNI 1; 1400 bytes, DF set
    lines = capture(cluster.underlay, "br0", "-T vxlan udp port 8472",
                    lambda: a.ping(c.address, size=1400))
    seen = "\n".join(lines)
    assert f"IP {node1.address}." in seen and f"> {node2.address}.8472: VXLAN" in seen, seen
    assert "vni 1" in seen and f"{a.address} > {c.address}: ICMP echo request" in seen, seen
    assert "length 1408" in seen, seen          # 1400 bytes of payload, unfragmented
    assert a.ping(c.address, size=1400).returncode == 0

    # 3. outside: masqueraded to the node's address
    seen = capture(cluster.outside, "eth0", "icmp[icmptype] == icmp-echo",
                   lambda: a.ping(OUTSIDE_ADDRESS))
    assert a.ping(OUTSIDE_ADDRESS).returncode == 0
    assert seen and re.search(rf"IP {re.escape(node1.address)} > {OUTSIDE_ADDRESS}", seen[0]), \
        seen


@pytest.mark.parametrize("net_conf", ["host-gw", "vxlan-directrouting"])
def test_routed_backends_carry_pod_traffic_without_encapsulation(
        cluster_factory: Any, net_conf: str) -> None:
    cluster, add_pod = cluster_factory(net_conf, nodes=2)
    node1, node2 = cluster.nodes
    a, c = add_pod(node1), add_pod(node2)
    expected_mtu = 1500 if net_conf == "host-gw" else 1450
    assert a.netns.link("eth0")["mtu"] == expected_mtu
    plain = capture(cluster.underlay, "br0", f"icmp and host {c.address}",
                    lambda: a.ping(c.address))
    assert plain and f"{a.address} > {c.address}" in plain[0], plain
    tunnelled = capture(cluster.underlay, "br0", "udp port 8472",
                        lambda: a.ping(c.address))
    assert tunnelled == []
    assert a.ping(c.address, size=1400).returncode == 0


def test_del_leaves_nothing_behind(cluster_factory: Any) -> None:
    cluster, add_pod = cluster_factory("vxlan", nodes=1)
    (node,) = cluster.nodes
    pod = add_pod(node)
    pod.delete()
    assert pod.netns.run("ip", "link", "show", "eth0", check=False).returncode != 0
    veths = [link for link in node.ip_json("link", "show") if link.get("master") == "cni0"]
    assert veths == []
    allocations = list((node.lib_dir / "networks" / "cbr0").glob("10.244.*"))
    assert allocations == []
    assert list((node.lib_dir / "flannel").rglob("*:*")) == []


@pytest.mark.parametrize("store", ["etcd", "kube"])
def test_frozen_agent_on_the_etcd_and_kubernetes_stores(built: None, store: str,
                                                       netns_factory: NetnsFactory,
                                                       tmp_path: Path) -> None:
    conf = json.loads((SEEDS / "net-conf.vxlan.json").read_text())
    cluster = Cluster(netns_factory, tmp_path / "cluster", conf, 2, program=PROGRAM)
    with ExitStack() as stack:
        stack.callback(cluster.close)
        if store == "etcd":
            etcd = EtcdServer(cluster.underlay, "192.168.0.1", tmp_path / "etcd")
            etcd.start()
            stack.callback(etcd.stop)
            etcd.etcdctl("put", "/coreos.com/network/config", json.dumps(conf))
            cluster.extra_store_args = ["--etcd-endpoints", etcd.url]
        else:
            server = stack.enter_context(KubeApiServer(cluster.underlay.path, host="192.168.0.1",
                                                       port=6443))
            for number, node in enumerate(cluster.nodes, 1):
                server.add_node(node.name, pod_cidr=f"10.244.{number * 10}.0/24")
            kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url)
            cluster.extra_store_args = ["--kube-subnet-mgr", "--kubeconfig-file",
                                        str(kubeconfig)]
        cluster.start()
        first, second = cluster.nodes
        assert first.subnet() != second.subnet()
        assert wait_for(lambda: second.subnet() in {
            r["dst"] for r in first.routes() if r.get("dev") == "flannel.1"}, 5), first.routes()
