"""The Kubernetes subnet store against the test API server, both inside a sandbox namespace:
leases from podCIDRs, flanneld's annotations, the node watch, restarts and API outages."""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pycni.plugins.flannel import netconf
from pycni.plugins.flannel.lease import Lease, LeaseAttrs
from pycni.plugins.flannel.store.base import StoreError, StoreUnavailable

from pycni import netns
from tests.conftest import NetnsFactory
from tests.kubeapi import KubeApiServer, write_kubeconfig

pytest.importorskip("kubernetes")
from pycni.plugins.flannel.store.kube import KubeStore  # noqa: E402

TOKEN = "flannel-token"
CONFIG = netconf.parse({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}})
DUAL_CONFIG = netconf.parse({"Network": "10.244.0.0/16", "EnableIPv6": True,
                             "IPv6Network": "fd00:10:244::/56", "Backend": {"Type": "vxlan"}})
PREFIX = "flannel.alpha.coreos.com"
NODE1 = LeaseAttrs("192.168.0.10", "vxlan", {"VNI": 1, "VtepMAC": "0a:00:00:00:00:01"})
NODE2 = LeaseAttrs("192.168.0.20", "vxlan", {"VNI": 1, "VtepMAC": "0a:00:00:00:00:02"})


def flannel_annotations(attrs: LeaseAttrs) -> dict[str, str]:
    """What flanneld writes for a node: the exact keys and values expected on the server."""
    return {f"{PREFIX}/backend-type": attrs.backend_type,
            f"{PREFIX}/backend-data": json.dumps(attrs.backend_data, separators=(",", ":")),
            f"{PREFIX}/public-ip": attrs.public_ip,
            f"{PREFIX}/kube-subnet-manager": "true"}


@dataclass
class Cluster:
    server: KubeApiServer
    kubeconfig: Path
    stores: list[KubeStore]

    def store(self, node: str, config: netconf.NetworkConfig = CONFIG,
              kubeconfig: Path | None = None, **options: Any) -> KubeStore:
        options = {"podcidr_wait": 5.0, "request_timeout": 5.0, "retry_min": 0.05,
                   "retry_max": 0.3, **options}
        store = KubeStore(node, config, str(kubeconfig or self.kubeconfig), **options)
        self.stores.append(store)
        return store

    def node_patches(self, node: str) -> list[tuple[str, str, str]]:
        return [r for r in self.server.requests
                if r[0] == "PATCH" and r[1].startswith(f"/api/v1/nodes/{node}")]


@pytest.fixture
def cluster(netns_factory: NetnsFactory, tmp_path: Path) -> Iterator[Cluster]:
    """The API server in a sandbox namespace; the test (and so each store's watch thread,
    which inherits its creator's namespace) runs inside it too."""
    sandbox = netns_factory("kubeapi")
    sandbox.run("ip", "link", "set", "lo", "up")
    server = KubeApiServer(sandbox.path, port=0, token=TOKEN).start()
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url, TOKEN)
    stores: list[KubeStore] = []
    try:
        with netns.entered(sandbox.path):
            try:
                yield Cluster(server, kubeconfig, stores)
            finally:
                for store in stores:
                    store.close()
    finally:
        server.stop()


def settle(store: KubeStore) -> None:
    """Synced, with every wake-up so far consumed: the next wake-up is a new change."""
    assert store.wait_until_synced(10)
    while store.wait_for_change(0.3):
        pass


def eventually(store: KubeStore, condition: Callable[[], bool], rounds: int = 20) -> None:
    for _ in range(rounds):
        if condition():
            return
        store.wait_for_change(0.5)
    assert condition()


def subnets(leases: list[Lease]) -> dict[str, str]:
    return {lease.attrs.public_ip: str(lease.subnet) for lease in leases}


def test_two_nodes_lease_their_pod_cidrs(cluster: Cluster) -> None:
    cluster.server.add_node("node1", pod_cidr="10.244.1.0/24")
    cluster.server.add_node("node2", pod_cidr="10.244.2.0/24")
    store1, store2 = cluster.store("node1"), cluster.store("node2")
    assert store1.network_config() is CONFIG

    lease1 = store1.acquire_lease(NODE1)
    lease2 = store2.acquire_lease(NODE2)
    assert lease1 == Lease(ipaddress.IPv4Network("10.244.1.0/24"), NODE1, None, None)
    assert lease2.subnet == ipaddress.IPv4Network("10.244.2.0/24")
    assert lease2.expiration is None

    for name, attrs in (("node1", NODE1), ("node2", NODE2)):
        node = cluster.server.node(name)
        assert node["metadata"]["annotations"] == flannel_annotations(attrs)
        conditions = {c["type"]: c for c in node["status"]["conditions"]}
        assert conditions["NetworkUnavailable"]["status"] == "False"
        assert conditions["NetworkUnavailable"]["reason"] == "FlannelIsUp"
        assert conditions["Ready"]["status"] == "True"          # the kubelet's stays
        # annotations, then the condition: both through the status subresource (the role
        # grants nodes/status patch only, as flanneld's)
        assert cluster.node_patches(name) == [
            ("PATCH", f"/api/v1/nodes/{name}/status", "application/strategic-merge-patch+json"),
            ("PATCH", f"/api/v1/nodes/{name}/status", "application/strategic-merge-patch+json")]

    expected = {"192.168.0.10": "10.244.1.0/24", "192.168.0.20": "10.244.2.0/24"}
    eventually(store1, lambda: subnets(store1.leases()) == expected)
    peers = [lease for lease in store1.leases() if lease.subnet != lease1.subnet]
    assert peers == [lease2]


def test_nodes_without_flannel_are_not_peers(cluster: Cluster) -> None:
    cluster.server.add_node("node1", pod_cidr="10.244.1.0/24")
    cluster.server.add_node("plain", pod_cidr="10.244.7.0/24")
    cluster.server.add_node("no-cidr", annotations=flannel_annotations(NODE2))
    store = cluster.store("node1")
    store.acquire_lease(NODE1)
    settle(store)
    assert subnets(store.leases()) == {"192.168.0.10": "10.244.1.0/24"}


def test_peer_changes_wake_the_waiter(cluster: Cluster) -> None:
    server = cluster.server
    server.add_node("node1", pod_cidr="10.244.1.0/24")
    store = cluster.store("node1")
    store.acquire_lease(NODE1)
    settle(store)

    server.add_node("node3", pod_cidr="10.244.3.0/24",
                    annotations=flannel_annotations(NODE2))
    assert store.wait_for_change(5)
    assert subnets(store.leases())["192.168.0.20"] == "10.244.3.0/24"

    server.annotate_node("node3", **{f"{PREFIX}/backend-data":
                                     '{"VNI":1,"VtepMAC":"0a:00:00:00:00:33"}'})
    assert store.wait_for_change(5)
    peer = next(lease for lease in store.leases() if lease.attrs.public_ip == "192.168.0.20")
    assert peer.attrs.backend_data["VtepMAC"] == "0a:00:00:00:00:33"

    server.annotate_node("node1", unrelated="label")       # not a lease change
    assert not store.wait_for_change(0.5)

    server.delete_node("node3")
    assert store.wait_for_change(5)
    assert subnets(store.leases()) == {"192.168.0.10": "10.244.1.0/24"}


def test_a_node_annotated_later_joins(cluster: Cluster) -> None:
    cluster.server.add_node("node1", pod_cidr="10.244.1.0/24")
    cluster.server.add_node("node2", pod_cidr="10.244.2.0/24")
    store1 = cluster.store("node1")
    store1.acquire_lease(NODE1)
    settle(store1)
    cluster.store("node2").acquire_lease(NODE2)               # another agent starts
    assert store1.wait_for_change(5)
    assert subnets(store1.leases())["192.168.0.20"] == "10.244.2.0/24"


def test_restart_reuses_the_subnet_and_annotations(cluster: Cluster) -> None:
    cluster.server.add_node("node1", pod_cidr="10.244.1.0/24")
    first = cluster.store("node1")
    lease = first.acquire_lease(NODE1)
    first.close()
    annotations = cluster.server.node("node1")["metadata"]["annotations"]
    first_patches = len(cluster.node_patches("node1"))       # annotations and the condition

    again = cluster.store("node1").acquire_lease(NODE1)
    assert again == lease
    assert cluster.server.node("node1")["metadata"]["annotations"] == annotations
    # the 2nd time only the condition: the annotations are already right
    assert len(cluster.node_patches("node1")) == first_patches + 1


def test_renew_puts_back_removed_annotations(cluster: Cluster) -> None:
    cluster.server.add_node("node1", pod_cidr="10.244.1.0/24")
    store = cluster.store("node1")
    lease = store.acquire_lease(NODE1)
    assert store.renew_lease(lease) == lease
    cluster.server.annotate_node("node1", **{f"{PREFIX}/public-ip": None,
                                             f"{PREFIX}/kube-subnet-manager": None})
    assert store.renew_lease(lease) == lease
    assert cluster.server.node("node1")["metadata"]["annotations"] == flannel_annotations(NODE1)

    cluster.server.update_node("node1", lambda n: n["spec"].update(
        podCIDR="10.244.9.0/24", podCIDRs=["10.244.9.0/24"]))
    with pytest.raises(StoreError, match="10.244.9.0/24"):
        store.renew_lease(lease)
    cluster.server.delete_node("node1")
    with pytest.raises(StoreError, match="no longer exists"):
        store.renew_lease(lease)


def test_api_outage_and_return(cluster: Cluster) -> None:
    server = cluster.server
    server.add_node("node1", pod_cidr="10.244.1.0/24")
    store = cluster.store("node1")
    lease = store.acquire_lease(NODE1)
    settle(store)

    server.stop()
    assert store.wait_for_change(5)                          # the watch is lost
    for call in (store.leases, lambda: store.renew_lease(lease),
                 lambda: store.acquire_lease(NODE1)):
        with pytest.raises(StoreUnavailable) as caught:
            call()
        assert server.url in str(caught.value)

    # While it is down, a node joins and the history the watch would resume from is lost.
    server.add_node("node2", pod_cidr="10.244.2.0/24", annotations=flannel_annotations(NODE2))
    server.compact()
    server.start()
    assert store.wait_until_synced(10)
    assert subnets(store.leases()) == {"192.168.0.10": "10.244.1.0/24",
                                       "192.168.0.20": "10.244.2.0/24"}
    assert store.renew_lease(lease) == lease


def test_node_without_pod_cidr_fails_after_the_wait(cluster: Cluster) -> None:
    cluster.server.add_node("bare")
    store = cluster.store("bare", podcidr_wait=0.3)
    with pytest.raises(StoreError, match="no podCIDR") as caught:
        store.acquire_lease(NODE1)
    assert not isinstance(caught.value, StoreUnavailable)
    with pytest.raises(StoreError, match="does not exist"):
        cluster.store("ghost", podcidr_wait=0.3).acquire_lease(NODE1)


def test_pod_cidr_given_during_the_wait(cluster: Cluster) -> None:
    cluster.server.add_node("late")
    store = cluster.store("late", podcidr_wait=30)
    assign = threading.Timer(0.3, cluster.server.update_node, ("late", lambda n: n["spec"].update(
        podCIDR="10.244.5.0/24", podCIDRs=["10.244.5.0/24"])))
    assign.start()
    try:
        assert str(store.acquire_lease(NODE1).subnet) == "10.244.5.0/24"
    finally:
        assign.cancel()
        assign.join()


def test_pod_cidr_outside_the_network(cluster: Cluster) -> None:
    cluster.server.add_node("node1", pod_cidr="10.99.1.0/24")
    with pytest.raises(StoreError, match="not in the flannel Network 10.244.0.0/16"):
        cluster.store("node1").acquire_lease(NODE1)


def test_dual_stack(cluster: Cluster) -> None:
    cluster.server.add_node("node1", pod_cidrs=["10.244.1.0/24", "fd00:10:244:1::/64"])
    attrs = LeaseAttrs("192.168.0.10", "vxlan", {"VNI": 1, "VtepMAC": "0a:00:00:00:00:01"},
                       public_ipv6="fd00::10",
                       backend_v6_data={"VNI": 1, "VtepMAC": "0a:00:00:00:00:61"})
    store = cluster.store("node1", DUAL_CONFIG)
    lease = store.acquire_lease(attrs)
    assert lease.subnet == ipaddress.IPv4Network("10.244.1.0/24")
    assert lease.ipv6_subnet == ipaddress.IPv6Network("fd00:10:244:1::/64")
    assert cluster.server.node("node1")["metadata"]["annotations"] == {
        **flannel_annotations(attrs), f"{PREFIX}/public-ipv6": "fd00::10",
        f"{PREFIX}/backend-v6-data": '{"VNI":1,"VtepMAC":"0a:00:00:00:00:61"}'}
    eventually(store, lambda: store.leases() == [lease])


def test_public_ip_overwrite_annotation(cluster: Cluster) -> None:
    cluster.server.add_node("node1", pod_cidr="10.244.1.0/24",
                            annotations={f"{PREFIX}/public-ip-overwrite": "203.0.113.10"})
    lease = cluster.store("node1").acquire_lease(NODE1)
    assert lease.attrs.public_ip == "203.0.113.10"
    annotations = cluster.server.node("node1")["metadata"]["annotations"]
    assert annotations[f"{PREFIX}/public-ip"] == "203.0.113.10"


def test_refused_credentials_are_an_error(cluster: Cluster, tmp_path: Path) -> None:
    cluster.server.add_node("node1", pod_cidr="10.244.1.0/24")
    wrong = write_kubeconfig(tmp_path / "wrong", cluster.server.url, "not-the-token")
    with pytest.raises(StoreError, match="401") as caught:
        cluster.store("node1", kubeconfig=wrong).acquire_lease(NODE1)
    assert not isinstance(caught.value, StoreUnavailable)


def test_unreadable_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="kubeconfig"):
        KubeStore("node1", CONFIG, str(tmp_path / "missing"))
