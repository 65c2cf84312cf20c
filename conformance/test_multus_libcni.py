"""multus as a runtime drives it: the frozen build through libcni (dist/cnitool,
CNI_PATH=dist/bin) with the seed multus config as the file in NETCONFPATH.

cnitool runs inside the sandbox node of `tests.multuslib` (its netns, its /run/flannel,
/var/lib/cni and /etc/cni/net.d, the test API server), so the seed config, its kubeconfig
path and its flannel delegate run unchanged. The pod is stored in the API with the seed
`business-app` annotation, and CNI_ARGS carry the pod's name as kubelet passes them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conformance.conftest import CNITOOL, DIST_BIN
from tests.conftest import REPO, Netns, NetnsFactory, Outcome
from tests.multuslib import MultusNode, assert_nothing_left, interfaces, seed

pytestmark = [pytest.mark.conformance, pytest.mark.kernel]

SEED_CONF = REPO / "tests" / "seeds" / "multus-conf.json"
NETWORK = "multus-cni-network"  # the seed config's name
POD = "business"
ANNOTATION = seed("pod-annotations.json")["business-app"]
CLUSTER_ADDRESS, BUSINESS_ADDRESS = "10.244.1.2/24", "192.168.100.10/16"  # NAD subnet: /16
NODE_LINKS = {"lo", "eth0", "eth1", "eth1-peer", "eth2", "eth2-peer"}


@pytest.fixture
def node(built: None, netns_factory: NetnsFactory, scratch_dir: Path) -> Iterator[MultusNode]:
    """A sandbox node whose plugins are the frozen build."""
    made = MultusNode(netns_factory, scratch_dir / "node", DIST_BIN)
    try:
        yield made
    finally:
        made.close()


class Libcni:
    """cnitool in the node for one pod, with its own NETCONFPATH and libcni cache."""

    def __init__(self, node: MultusNode, workdir: Path, conf_text: str) -> None:
        self.node, self.workdir = node, workdir
        self.container_id = f"ctr-{POD}"
        (workdir / "net.d").mkdir(parents=True)
        (workdir / "net.d" / "00-multus.conf").write_text(conf_text)

    def __call__(self, verb: str, pod: Netns) -> Outcome:
        env = {"NETCONFPATH": str(self.workdir / "net.d"), "CNI_PATH": str(DIST_BIN),
               "CNI_CACHE_DIR": str(self.workdir / "cache"), "CNI_IFNAME": "eth0",
               "CNI_CONTAINERID": self.container_id,
               "CNI_ARGS": (f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={POD};"
                            f"K8S_POD_INFRA_CONTAINER_ID={self.container_id}")}
        return self.node.exec([str(CNITOOL), verb, NETWORK, pod.path], env)

    def cached_results(self) -> list[str]:
        results = self.workdir / "cache" / "results"
        return sorted(p.name for p in results.iterdir()) if results.exists() else []


def business_pod(node: MultusNode) -> Netns:
    """The seed business NAD, unchanged, and the pod annotated with `business-app`."""
    node.business_nad()
    return node.add_pod(POD, networks=ANNOTATION)


def assert_attached(node: MultusNode, pod: Netns, result: dict[str, Any], version: str,
                    tool: Libcni) -> None:
    """eth0 on the pod network (the result libcni returns), net1 a macvlan on the business
    NAD, both in network-status; libcni cached the result."""
    assert result["cniVersion"] == version
    assert [ip["address"] for ip in result["ips"]] == [CLUSTER_ADDRESS]
    assert any(i["name"] == "eth0" and i.get("sandbox") == pod.path
               for i in result["interfaces"])
    assert interfaces(pod) == {"eth0": [CLUSTER_ADDRESS], "net1": [BUSINESS_ADDRESS]}
    (net1,) = pod.ip_json("-d", "link", "show", "dev", "net1")
    assert net1["linkinfo"]["info_kind"] == "macvlan"
    status = node.network_status(POD)
    assert [(s["name"], s["interface"], s["ips"]) for s in status] == [
        ("default-cni-network", "eth0", ["10.244.1.2"]),
        ("default/business-network", "net1", ["192.168.100.10"])]
    assert node.caches() == [f"{tool.container_id}:eth0"]
    assert tool.cached_results() == [f"{NETWORK}-{tool.container_id}-eth0"]


def delete_with_the_api_down(node: MultusNode, pod: Netns, tool: Libcni) -> None:
    """DEL runs from multus' cache: every pod link and address, every lease, every host veth
    goes; only the node's bridge stays, as flannel's bridge leaves it. DEL again succeeds."""
    node.api.stop()
    tool("del", pod).ok()
    assert interfaces(pod) == {}
    assert_nothing_left(node)
    assert tool.cached_results() == []
    assert {link["ifname"] for link in node.host.ip_json("link")} == NODE_LINKS | {"cni0"}
    tool("del", pod).ok()
    assert interfaces(pod) == {}


def test_seed_config_unchanged(node: MultusNode, scratch_dir: Path) -> None:
    """The seed config as the users ship it (cniVersion 0.3.1): libcni refuses CHECK for it
    before running any plugin, so CHECK is exercised in the next test."""
    pod = business_pod(node)
    tool = Libcni(node, scratch_dir / "libcni", SEED_CONF.read_text())

    result = tool("add", pod).ok()

    assert_attached(node, pod, result, "0.3.1", tool)
    refused = tool("check", pod)
    assert refused.status != 0
    assert 'version "0.3.1" does not support the CHECK command' in refused.stderr
    delete_with_the_api_down(node, pod, tool)


def test_check_passes_from_version_0_4_0(node: MultusNode, scratch_dir: Path) -> None:
    """The seed config with only cniVersion raised to one that has CHECK: it passes. (Its
    delegates, the seed's at 0.3.1, are skipped by multus' CHECK, as the spec has them.)"""
    pod = business_pod(node)
    conf = {**json.loads(SEED_CONF.read_text()), "cniVersion": "1.0.0"}
    tool = Libcni(node, scratch_dir / "libcni", json.dumps(conf))

    result = tool("add", pod).ok()

    assert_attached(node, pod, result, "1.0.0", tool)
    tool("check", pod).ok()
    delete_with_the_api_down(node, pod, tool)
