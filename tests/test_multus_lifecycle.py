"""multus over a pod's life in a sandbox node: hot-plug, CHECK, STATUS, GC, a corrupt
cache, and the seed business NAD's own default route beside the cluster network's.

Same node as test_multus.py (`tests/multuslib.py`); split from it to keep each file short.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import NetnsFactory
from tests.multuslib import (
    STORAGE_SUBNET,
    MultusNode,
    assert_nothing_left,
    default_routes,
    interfaces,
    seed,
)

pytestmark = pytest.mark.kernel

ANNOTATIONS = seed("pod-annotations.json")


@pytest.fixture
def node(netns_factory: NetnsFactory, tmp_path: Path, cni_bin: Path) -> Iterator[MultusNode]:
    built = MultusNode(netns_factory, tmp_path, cni_bin)
    try:
        yield built
    finally:
        built.close()


def test_hotplug_attach_and_detach(node: MultusNode) -> None:
    node.business_nad()
    node.macvlan_nad("default", "storage-network", STORAGE_SUBNET)
    pod = node.add_pod("vm", networks="business-network")
    conf = node.conf()
    node.run("ADD", conf, pod, "vm").ok()
    attached = node.hotplug("attach", pod, "vm", "storage-network").ok()
    assert attached["interface"] == "net2"
    assert interfaces(pod)["net2"] == ["172.16.0.2/16"]
    assert [s["interface"] for s in node.network_status("vm")] == ["eth0", "net1", "net2"]
    node.hotplug("detach", None, "vm", "storage-network").ok()
    assert sorted(interfaces(pod)) == ["eth0", "net1"]
    assert [s["interface"] for s in node.network_status("vm")] == ["eth0", "net1"]
    assert node.allocations("storage-network") == {}
    # attach again, then the pod's DEL removes the hot-plugged one with the rest
    node.hotplug("attach", pod, "vm", "storage-network@extra0").ok()
    assert sorted(interfaces(pod)) == ["eth0", "extra0", "net1"]
    node.run("DEL", conf, pod, "vm").ok()
    assert interfaces(pod) == {}
    assert_nothing_left(node)


def test_corrupt_cache_is_removed_after_a_best_effort_del(node: MultusNode) -> None:
    pod = node.add_pod("corrupt")
    conf = node.conf()
    node.run("ADD", conf, pod, "corrupt").ok()
    (node.cache_dir / "ctr-corrupt:eth0").write_text("{not json")
    node.run("DEL", conf, pod, "corrupt").ok()
    assert interfaces(pod) == {}
    assert_nothing_left(node)


def test_status_and_gc(node: MultusNode, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    conf = node.conf(cniVersion="1.1.0", readinessindicatorfile=str(ready))
    node.run("STATUS", conf, None, "none").error(50)
    ready.write_text("")
    node.run("STATUS", conf, None, "none").ok()
    pods = {name: node.add_pod(name) for name in ("kept", "gone")}
    for name, pod in pods.items():
        node.run("ADD", conf, pod, name).ok()
    gc = {**conf, "cni.dev/valid-attachments": [{"containerID": "ctr-kept", "ifname": "eth0"}]}
    node.run("GC", gc, None, "none").ok()
    assert node.caches() == ["ctr-kept:eth0"]
    assert interfaces(pods["gone"]) == {}
    assert node.allocations("default-cni-network") == {"10.244.1.2": "ctr-kept"}
    node.run("DEL", conf, pods["kept"], "kept").ok()
    assert_nothing_left(node)


def test_seed_business_nad_unchanged_beside_a_default_cluster_route(node: MultusNode) -> None:
    node.business_nad()
    pod = node.add_pod("seed", networks=ANNOTATIONS["business-app"])
    try:
        node.run("ADD", node.conf(), pod, "seed").ok()
        gateways = sorted((r.get("gateway"), r["dev"]) for r in default_routes(pod))
        assert gateways == sorted([("10.244.1.1", "eth0"), ("192.168.100.1", "net1")])
    finally:
        node.run("DEL", node.conf(), pod, "seed")
    assert_nothing_left(node)
