"""multus in a sandbox node: the users' seed config and NADs, the test API server, real
delegates (flannel -> bridge + host-local, portmap, macvlan) found on CNI_PATH.

Every run of the plugin happens in the sandbox node (`tests/multuslib.py`): its netns, and
its own /run/flannel, /var/lib/cni and /etc/cni/net.d bound over the machine's in a private
mount namespace, so the seed configs run unchanged. The storage NAD of the seeds is SR-IOV;
its stand-in here is a macvlan NAD named `storage-network` on `eth2`.
"""

from __future__ import annotations

import json

import pytest

from tests.multuslib import (
    STORAGE_SUBNET,
    MultusNode,
    assert_nothing_left,
    default_routes,
    interfaces,
    multus_node,  # noqa: F401 (the `node` fixture)
    seed,
)

pytestmark = pytest.mark.kernel

ANNOTATIONS = seed("pod-annotations.json")


def test_cluster_network_from_the_seed_config(node: MultusNode) -> None:
    pod = node.add_pod("web")
    conf = node.conf(cniVersion="1.0.0")
    result = node.run("ADD", conf, pod, "web").ok()
    assert result["cniVersion"] == "1.0.0"
    assert interfaces(pod) == {"eth0": ["10.244.1.2/24"]}
    assert [ip["address"] for ip in result["ips"]] == ["10.244.1.2/24"]
    assert any(i["name"] == "eth0" and i.get("sandbox") == pod.path
               for i in result["interfaces"])
    assert node.allocations("default-cni-network") == {"10.244.1.2": "ctr-web"}
    assert node.caches() == ["ctr-web:eth0"]
    status = node.network_status("web")
    assert status == [{"name": "default-cni-network", "interface": "eth0",
                       "ips": ["10.244.1.2"], "mac": pod.link("eth0")["address"],
                       "default": True, "dns": {}}]
    node.run("CHECK", conf, pod, "web").ok()
    node.run("DEL", conf, pod, "web").ok()
    assert interfaces(pod) == {}
    assert_nothing_left(node)
    node.run("DEL", conf, pod, "web").ok()


def test_business_app_then_del_with_the_api_down(node: MultusNode) -> None:
    """The seed `business-app` selection on the seed business NAD: net1 at 192.168.100.10;
    network-status on the pod; DEL needs no API: it runs from the cache."""
    node.business_nad()
    pod = node.add_pod("business", networks=ANNOTATIONS["business-app"])
    conf = node.conf()
    node.run("ADD", conf, pod, "business").ok()
    found = interfaces(pod)
    assert found == {"eth0": ["10.244.1.2/24"], "net1": ["192.168.100.10/16"]}
    assert pod.link("net1")["link_type"] == "ether"
    status = node.network_status("business")
    assert status == [
        {"name": "default-cni-network", "interface": "eth0", "ips": ["10.244.1.2"],
         "mac": pod.link("eth0")["address"], "default": True, "dns": {}},
        {"name": "default/business-network", "interface": "net1", "ips": ["192.168.100.10"],
         "mac": pod.link("net1")["address"], "default": False, "dns": {}},
    ]
    cached = json.loads((node.cache_dir / "ctr-business:eth0").read_text())
    assert [(a["name"], a["ifname"]) for a in cached["attachments"]] == [
        ("default-cni-network", "eth0"), ("default/business-network", "net1")]
    assert cached["attachments"][1]["conf"]["plugins"][0]["master"] == "eth1"

    node.api.stop()
    node.run("DEL", conf, pod, "business").ok()
    assert interfaces(pod) == {}
    assert_nothing_left(node)
    node.run("DEL", conf, pod, "business").ok()


def test_storage_app_named_interfaces_nad_and_pod_deleted(node: MultusNode) -> None:
    """`storage-app`: storage0 and business0. Then the NADs and the pod are deleted before
    DEL, which still releases everything."""
    from tests.kubeapi import NADS, PODS

    node.business_nad()
    node.macvlan_nad("default", "storage-network", STORAGE_SUBNET)
    pod = node.add_pod("storage", networks=ANNOTATIONS["storage-app"])
    conf = node.conf()
    node.run("ADD", conf, pod, "storage").ok()
    found = interfaces(pod)
    assert sorted(found) == ["business0", "eth0", "storage0"]
    assert found["storage0"] == ["172.16.0.2/16"]
    assert found["business0"] == ["192.168.100.10/16"]
    assert [(s["name"], s["interface"]) for s in node.network_status("storage")] == [
        ("default-cni-network", "eth0"), ("default/storage-network", "storage0"),
        ("default/business-network", "business0")]
    node.api.delete(NADS, "business-network", "default")
    node.api.delete(NADS, "storage-network", "default")
    node.api.delete(PODS, "storage", "default")
    node.run("DEL", conf, pod, "storage").ok()
    assert interfaces(pod) == {}
    assert_nothing_left(node)


def test_requested_ips_cni_args_and_default_route(node: MultusNode) -> None:
    """A selection's `ips` reach host-local when the NAD declares the capability, and
    `default-route` moves the pod's default route to that attachment."""
    node.business_nad(capabilities={"ips": True}, cniVersion="1.0.0")
    pod = node.add_pod("routed", networks=[{
        "name": "business-network", "ips": ["192.168.100.77/16"],
        "default-route": ["192.168.100.1"], "cni-args": {"note": "kept"}}])
    conf = node.conf(cniVersion="1.0.0")
    result = node.run("ADD", conf, pod, "routed").ok()
    assert interfaces(pod)["net1"] == ["192.168.100.77/16"]
    assert [(r.get("gateway"), r["dev"]) for r in default_routes(pod)] == [
        ("192.168.100.1", "net1")]
    assert [ip["address"] for ip in result["ips"]] == ["10.244.1.2/24"]
    status = {s["interface"]: s["default"] for s in node.network_status("routed")}
    assert status == {"eth0": False, "net1": True}
    cached = json.loads((node.cache_dir / "ctr-routed:eth0").read_text())
    assert cached["attachments"][1]["cniArgs"] == {"note": "kept"}
    node.run("CHECK", conf, pod, "routed").ok()  # macvlan at 1.0.0 is checked for real
    pod.run("ip", "addr", "flush", "dev", "net1")
    error = node.run("CHECK", conf, pod, "routed").error(999)
    assert "default/routed" in error["msg"] and "net1" in error["msg"]
    node.run("DEL", conf, pod, "routed").ok()
    assert_nothing_left(node)


def test_namespace_isolation_refuses_other_namespaces(node: MultusNode) -> None:
    node.business_nad(namespace="other")
    pod = node.add_pod("isolated", networks="other/business-network")
    conf = node.conf(namespaceIsolation=True)
    error = node.run("ADD", conf, pod, "isolated").error(7)
    assert "default/isolated" in error["msg"] and "other/business-network" in error["msg"]
    assert interfaces(pod) == {}
    assert_nothing_left(node)
    # globalNamespaces opens a namespace to every pod
    node.run("ADD", node.conf(namespaceIsolation=True, globalNamespaces="default,other"), pod,
             "isolated").ok()
    assert sorted(interfaces(pod)) == ["eth0", "net1"]
    node.run("DEL", conf, pod, "isolated").ok()
    assert_nothing_left(node)


def test_failing_delegate_undoes_the_earlier_ones(node: MultusNode) -> None:
    node.business_nad()
    node.macvlan_nad("default", "broken", STORAGE_SUBNET, master="missing0")
    pod = node.add_pod("failing", networks="business-network,broken")
    error = node.run("ADD", node.conf(), pod, "failing").error(7)
    assert "default/failing" in error["msg"] and "default/broken" in error["msg"]
    assert interfaces(pod) == {}
    assert_nothing_left(node)


@pytest.mark.parametrize(("annotation", "words"), [
    ("[{\"name\": ", "invalid JSON"),
    ("not-there", "default/not-there not found"),
    ("business-network@averyveryverylongname", "too long"),
    ("[{\"name\": \"business-network\", \"ips\": [\"nonsense\"]}]", "invalid IP"),
])
def test_bad_input_is_a_config_error_naming_the_pod(node: MultusNode, annotation: str,
                                                    words: str) -> None:
    node.business_nad()
    pod = node.add_pod("bad", networks=annotation)
    error = node.run("ADD", node.conf(), pod, "bad").error(7)
    assert "default/bad" in error["msg"] and words in error["msg"], error
    assert interfaces(pod) == {}
    assert_nothing_left(node)
