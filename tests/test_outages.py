"""The store goes away and comes back: agents keep the data plane, plugins need no store
for DEL and say "try again later" (code 11) for ADD.

- etcd (Debian's etcd-server, tests/etcdlib.py) and the test Kubernetes API server, each in
  the underlay namespace of a two-node sandbox cluster (tests/flannelcluster.py) with real
  agents whose lease TTL is a few seconds: while the store is away longer than a renew
  period, every node's routes, FDB and neighbours to its peer stay exactly as they were and
  pods on the two nodes still ping each other; once it is back the agents renew (etcd: the
  lease's remaining TTL moves forward) and a node joining afterwards is programmed on the
  others.
- The meta plugin with the API server stopped: ADD is code 11 and creates nothing; DEL of
  a pod added before the outage succeeds and leaves nothing.
- The flannel plugin without subnet.env (agent away): ADD is code 11, DEL still succeeds.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PYCNI, Netns, NetnsFactory, Outcome, cni_env
from tests.etcdlib import EtcdServer, needs_etcd
from tests.flannelcluster import Cluster, Node, wait_for
from tests.kubeapi import KubeApiServer, write_kubeconfig
from tests.multuslib import MultusNode, assert_nothing_left, interfaces

pytestmark = pytest.mark.kernel

NET_CONF = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}
LEASE_TTL = 6          # seconds: the agents renew every TTL/2
OUTAGE = 5             # seconds without the store: longer than a renew period
PREFIX = "/coreos.com/network/subnets/"


# --- pods on a cluster node -------------------------------------------------------------------

def flannel_conf(version: str = "1.0.0") -> dict[str, Any]:
    """The seed conflist's flannel entry, with its default paths (bound per node)."""
    return {"cniVersion": version, "name": "cbr0", "type": "flannel",
            "delegate": {"hairpinMode": True, "isDefaultGateway": True}}


def pod_run(node: Node, cni_bin: Path, command: str, pod: Netns | None,
            cid: str) -> Outcome:
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           **cni_env(command, pod.path if pod else "", container_id=cid, path=str(cni_bin))}
    done = subprocess.run(node.argv(*PYCNI, "flannel"), input=json.dumps(flannel_conf()).encode(),
                          env=env, capture_output=True, timeout=120)
    return Outcome(done.returncode, done.stdout.decode(), done.stderr.decode())


def add_pod(node: Node, factory: NetnsFactory, cni_bin: Path, cid: str) -> tuple[Netns, str]:
    pod = factory("pod")
    result = pod_run(node, cni_bin, "ADD", pod, cid).ok()
    return pod, result["ips"][0]["address"].split("/")[0]


def pings(pod: Netns, address: str) -> bool:
    return pod.run("ping", "-c", "1", "-W", "1", address, check=False).returncode == 0


# --- the data plane as a user reads it ----------------------------------------------------------

def data_plane(node: Node) -> dict[str, Any]:
    """flannel.1, routes, permanent neighbours and FDB entries of a node."""
    link = node.netns.link("flannel.1")
    return {
        "mac": link["address"],
        "routes": sorted(json.dumps(r, sort_keys=True) for r in node.routes()),
        "neighbours": sorted((n["dst"], n.get("lladdr")) for n in node.neighbours("flannel.1")
                             if "PERMANENT" in n.get("state", [])),
        "fdb": sorted((f["mac"], f.get("dst")) for f in node.fdb("flannel.1") if f.get("dst")),
    }


def programmed(node: Node, peer: Node) -> bool:
    """`node` routes `peer`'s subnet over vxlan to its VTEP."""
    subnet = peer.subnet()
    gateway = subnet.split("/")[0]
    mac = peer.netns.link("flannel.1")["address"]
    view = data_plane(node)
    return (any(json.loads(r).get("dst") == subnet for r in view["routes"])
            and (gateway, mac) in view["neighbours"] and (mac, peer.address) in view["fdb"])


def alive(*nodes: Node) -> bool:
    return all(node.agent is not None and node.agent.poll() is None for node in nodes)


@pytest.fixture
def cluster(netns_factory: NetnsFactory, tmp_path: Path) -> Iterator[Cluster]:
    built = Cluster(netns_factory, tmp_path / "cluster", NET_CONF, nodes=2,
                    lease_ttl=LEASE_TTL)
    try:
        yield built
    finally:
        built.close()


def outage_keeps_the_data_plane(cluster: Cluster, factory: NetnsFactory, cni_bin: Path,
                                stop: Any, start: Any) -> tuple[Netns, str]:
    """Pods on both nodes; the store stopped for OUTAGE seconds: nothing of the data plane
    changes and the pods still ping; the store started again. A pod (and its address)."""
    first, second = cluster.nodes
    assert wait_for(lambda: programmed(first, second) and programmed(second, first), 15)
    pod_a, address_a = add_pod(first, factory, cni_bin, "ctr-a")
    pod_b, address_b = add_pod(second, factory, cni_bin, "ctr-b")
    assert wait_for(lambda: pings(pod_a, address_b), 10)
    before = [data_plane(node) for node in cluster.nodes]

    stop()
    time.sleep(OUTAGE)
    assert alive(first, second)
    assert [data_plane(node) for node in cluster.nodes] == before
    assert pings(pod_a, address_b) and pings(pod_b, address_a)
    # ADD needs only the node's lease, which the agent keeps: pods still start
    pod_c, address_c = add_pod(first, factory, cni_bin, "ctr-c")
    assert pings(pod_c, address_b)
    # DEL needs nothing of the store
    pod_run(first, cni_bin, "DEL", pod_c, "ctr-c").ok()
    start()
    return pod_a, address_a


def join_after_return(cluster: Cluster, factory: NetnsFactory, cni_bin: Path,
                      pod_a: Netns, prepare: Any = None) -> None:
    """A third node joins once the store is back: the others program it, pods reach it."""
    first, second = cluster.nodes
    third = cluster.add_node(3)
    cluster.nodes.append(third)
    if prepare is not None:
        prepare(third)
    third.start_agent()
    third.wait_ready()
    assert wait_for(lambda: programmed(first, third) and programmed(second, third), 15), (
        data_plane(first))
    assert wait_for(lambda: programmed(third, first) and programmed(third, second), 15)
    _, address_d = add_pod(third, factory, cni_bin, "ctr-d")
    assert wait_for(lambda: pings(pod_a, address_d), 10)


@needs_etcd
def test_etcd_stopped_and_restarted(cluster: Cluster, netns_factory: NetnsFactory,
                                    cni_bin: Path, tmp_path: Path) -> None:
    etcd = EtcdServer(cluster.underlay, "192.168.0.1", tmp_path / "etcd")
    etcd.start()
    try:
        etcd.etcdctl("put", "/coreos.com/network/config", json.dumps(NET_CONF))
        cluster.store = "etcd"
        cluster.extra_store_args = ["--etcd-endpoints", etcd.url]
        cluster.start()
        first, _ = cluster.nodes
        key = f"{PREFIX}{first.subnet().replace('/', '-')}"

        def lease_of_first() -> tuple[str, int]:
            """(lease ID, seconds left) of the first node's subnet key."""
            answer = json.loads(etcd.etcdctl("get", "-w", "json", key).stdout)
            lease_id = format(int(answer["kvs"][0]["lease"]), "x")
            ttl = json.loads(etcd.etcdctl("lease", "timetolive", "-w", "json",
                                          lease_id).stdout)["ttl"]
            return lease_id, int(ttl)

        keys = sorted(etcd.etcdctl("get", "--prefix", "--keys-only", PREFIX).stdout.split())
        pod_a, _ = outage_keeps_the_data_plane(cluster, netns_factory, cni_bin, etcd.stop,
                                               etcd.start)
        # back: the agent renews, and the key outlives its TTL: its expiry moved forward
        renewals = first.agent_log.read_text().count("renewed lease")
        assert wait_for(lambda: first.agent_log.read_text().count("renewed lease")
                        > renewals, 4 * LEASE_TTL)
        lease_id, left = lease_of_first()
        time.sleep(LEASE_TTL + 1)
        assert lease_of_first()[1] > 0, (lease_id, left)
        assert sorted(etcd.etcdctl("get", "--prefix", "--keys-only",
                                   PREFIX).stdout.split()) == keys
        join_after_return(cluster, netns_factory, cni_bin, pod_a)
    finally:
        cluster.close()
        etcd.stop()


def test_kubernetes_api_stopped_and_started(cluster: Cluster, netns_factory: NetnsFactory,
                                            cni_bin: Path, tmp_path: Path) -> None:
    pytest.importorskip("kubernetes")
    with KubeApiServer(cluster.underlay.path, host="192.168.0.1", port=6443,
                       token="agent-token") as server:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url, "agent-token")
        for node, cidr in zip(cluster.nodes, ("10.244.7.0/24", "10.244.9.0/24"), strict=True):
            server.add_node(node.name, pod_cidr=cidr, address=node.address)
        cluster.store = "kube"
        cluster.extra_store_args = ["--kube-subnet-mgr", "--kubeconfig-file", str(kubeconfig)]
        cluster.start()
        first, _ = cluster.nodes
        pod_a, _ = outage_keeps_the_data_plane(cluster, netns_factory, cni_bin, server.stop,
                                               server.start)
        # back: the agent's store calls succeed again (its Kubernetes lease has no expiry
        # to renew, as flanneld's: the watch and the listing resume), annotations intact
        def quiet() -> bool:
            failures = first.agent_log.read_text().count("store unavailable")
            time.sleep(3)
            return first.agent_log.read_text().count("store unavailable") == failures
        assert wait_for(quiet, 20)
        annotations = server.node("node1")["metadata"]["annotations"]
        assert annotations["flannel.alpha.coreos.com/public-ip"] == first.address
        join_after_return(cluster, netns_factory, cni_bin, pod_a,
                          prepare=lambda third: server.add_node(
                              third.name, pod_cidr="10.244.3.0/24", address=third.address))
        cluster.close()


# --- the meta plugin with the API server stopped ------------------------------------------------

@pytest.fixture
def multus_node(netns_factory: NetnsFactory, tmp_path: Path,
                cni_bin: Path) -> Iterator[MultusNode]:
    built = MultusNode(netns_factory, tmp_path, cni_bin)
    try:
        yield built
    finally:
        built.close()


def test_multus_add_is_try_again_later_without_the_api_and_del_needs_none(
        multus_node: MultusNode) -> None:
    node = multus_node
    node.business_nad()
    conf = node.conf()
    before = node.add_pod("before", networks=[{"name": "business-network",
                                               "interface": "net1"}])
    node.run("ADD", conf, before, "before").ok()
    during = node.add_pod("during")

    node.api.stop()
    error = node.run("ADD", conf, during, "during").error(11)
    assert "Kubernetes API" in error["msg"], error
    assert interfaces(during) == {}
    assert node.caches() == ["ctr-before:eth0"]
    assert set(node.all_allocations()) == {"default-cni-network", "business-network"}
    assert node.allocations("default-cni-network") == {"10.244.1.2": "ctr-before"}
    node.run("DEL", conf, during, "during").ok()   # a failed ADD's DEL: nothing to do
    node.run("DEL", conf, before, "before").ok()
    assert interfaces(before) == {}
    assert_nothing_left(node)

    node.api.start()
    node.run("ADD", conf, during, "during").ok()
    assert interfaces(during) == {"eth0": ["10.244.1.3/24"]}  # round robin goes on
    node.run("DEL", conf, during, "during").ok()
    assert_nothing_left(node)


# --- the flannel plugin without subnet.env ------------------------------------------------------

def test_flannel_without_subnet_env(multus_node: MultusNode) -> None:
    """The agent is away (no subnet.env): ADD is code 11 and creates nothing, DEL of a pod
    added before works from the saved delegate."""
    node = multus_node
    conf = {"cniVersion": "1.0.0", "name": "cbr0", "type": "flannel"}
    pod = node.add_pod("kept")

    def run(command: str, target: Netns, cid: str) -> Outcome:
        return node.exec([*PYCNI, "flannel"],
                         cni_env(command, target.path, container_id=cid,
                                 path=str(node.cni_bin)), conf)

    run("ADD", pod, "ctr-kept").ok()
    (node.run_dir / "subnet.env").unlink()
    late = node.add_pod("late")
    error = run("ADD", late, "ctr-late").error(11)
    assert "/run/flannel/subnet.env" in error["msg"], error
    assert interfaces(late) == {}
    assert sorted(p.name for p in (node.lib_dir / "flannel" / "cbr0").iterdir()) == [
        "ctr-kept:eth0"]
    run("DEL", pod, "ctr-kept").ok()
    run("DEL", late, "ctr-late").ok()
    assert interfaces(pod) == {} and node.all_allocations() == {}
    assert list((node.lib_dir / "flannel" / "cbr0").iterdir()) == []
