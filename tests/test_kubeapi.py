"""The test Kubernetes API server, driven by the official `kubernetes` client from inside a
sandbox namespace: if the real client understands it, tests built on it mean something."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pycni import netns
from tests.conftest import Netns, NetnsFactory
from tests.kubeapi import NADS, NODES, KubeApiServer, write_kubeconfig

kubernetes = pytest.importorskip("kubernetes")
from kubernetes import client, config, watch  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402

TOKEN = "test-token"
NAD_GROUP, NAD_VERSION, NAD_PLURAL = "k8s.cni.cncf.io", "v1", "network-attachment-definitions"


@pytest.fixture
def api_ns(netns_factory: NetnsFactory) -> Netns:
    ns = netns_factory("kubeapi")
    ns.run("ip", "link", "set", "lo", "up")
    return ns


@pytest.fixture
def inside(api_ns: Netns) -> Iterator[None]:
    """The test body runs inside the sandbox: the client's sockets are made there."""
    with netns.entered(api_ns.path):
        yield


@pytest.fixture
def server(api_ns: Netns) -> Iterator[KubeApiServer]:
    api = KubeApiServer(api_ns.path, port=0, token=TOKEN).start()
    try:
        yield api
    finally:
        api.stop()


def connect(server_url: str, directory: Path, token: str | None) -> Any:
    path = write_kubeconfig(directory / f"kubeconfig-{token}", server_url, token)
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(path), client_configuration=configuration)
    configuration.retries = 0
    return client.ApiClient(configuration)


@pytest.fixture
def api_client(server: KubeApiServer, tmp_path: Path, inside: None) -> Iterator[Any]:
    api = connect(server.url, tmp_path, TOKEN)
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def core(api_client: Any) -> Any:
    return client.CoreV1Api(api_client)


def status_of(error: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(error.body)
    return body


def test_list_get_and_resource_versions(server: KubeApiServer, core: Any) -> None:
    server.add_node("node1", pod_cidr="10.244.1.0/24")
    server.add_node("node2", pod_cidr="10.244.2.0/24", address="192.168.0.20")
    listed = core.list_node()
    assert [n.metadata.name for n in listed.items] == ["node1", "node2"]
    assert listed.metadata.resource_version == str(server.resource_version)
    node = core.read_node("node2")
    assert node.spec.pod_cidr == "10.244.2.0/24"
    assert node.spec.pod_cidrs == ["10.244.2.0/24"]
    assert node.status.addresses[0].address == "192.168.0.20"
    versions = [int(n.metadata.resource_version) for n in listed.items]
    assert versions[0] < versions[1]


def test_patch_annotations_and_status(server: KubeApiServer, core: Any) -> None:
    server.add_node("node1", pod_cidr="10.244.1.0/24")
    before = int(server.node("node1")["metadata"]["resourceVersion"])
    core.patch_node("node1", {"metadata": {"annotations": {"a": "1", "b": "2"}}})
    core.patch_node("node1", [{"op": "remove", "path": "/metadata/annotations/b"}])
    node = server.node("node1")
    assert node["metadata"]["annotations"] == {"a": "1"}
    assert int(node["metadata"]["resourceVersion"]) > before
    methods = [(m, p, t) for m, p, t in server.requests if m == "PATCH"]
    assert methods == [("PATCH", "/api/v1/nodes/node1", "application/strategic-merge-patch+json"),
                       ("PATCH", "/api/v1/nodes/node1", "application/json-patch+json")]

    # The status subresource merges conditions by type and leaves the spec alone.
    condition = {"type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp",
                 "message": "up", "lastTransitionTime": "2026-01-01T00:00:00Z",
                 "lastHeartbeatTime": "2026-01-01T00:00:00Z"}
    core.patch_node_status("node1", {"status": {"conditions": [condition]},
                                     "spec": {"podCIDR": "10.9.9.0/24"}})
    node = server.node("node1")
    assert {c["type"]: c["status"] for c in node["status"]["conditions"]} == {
        "Ready": "True", "NetworkUnavailable": "False"}
    assert node["spec"]["podCIDR"] == "10.244.1.0/24"
    # ...and the main path leaves the status alone.
    core.patch_node("node1", {"status": {"conditions": []}})
    assert len(server.node("node1")["status"]["conditions"]) == 2


def test_merge_patch_and_no_op_patch(server: KubeApiServer, core: Any) -> None:
    server.add_node("node1", annotations={"keep": "x", "drop": "y"})
    core.patch_node("node1", {"metadata": {"annotations": {"drop": None}}},
                    _content_type="application/merge-patch+json")
    assert server.node("node1")["metadata"]["annotations"] == {"keep": "x"}
    version = server.resource_version
    core.patch_node("node1", {"metadata": {"annotations": {"keep": "x"}}})
    assert server.resource_version == version


def test_watch_from_resource_version(server: KubeApiServer, core: Any) -> None:
    server.add_node("node1")
    server.add_node("node2")
    start = core.list_node().metadata.resource_version
    server.add_node("node3", pod_cidr="10.244.3.0/24")
    server.annotate_node("node1", example="yes")
    server.delete_node("node2")
    events = [(e["type"], e["object"].metadata.name)
              for e in watch.Watch().stream(core.list_node, resource_version=start,
                                            timeout_seconds=1)]
    assert events == [("ADDED", "node3"), ("MODIFIED", "node1"), ("DELETED", "node2")]


def test_watch_streams_live_events(server: KubeApiServer, core: Any) -> None:
    start = core.list_node().metadata.resource_version
    seen: list[tuple[str, str]] = []
    arrived = threading.Event()
    watcher = watch.Watch()

    def follow() -> None:
        for event in watcher.stream(core.list_node, resource_version=start, timeout_seconds=10):
            seen.append((event["type"], event["object"].metadata.name))
            arrived.set()
            watcher.stop()

    thread = threading.Thread(target=follow)    # made inside the sandbox: inherits it
    thread.start()
    try:
        server.add_node("late")
        assert arrived.wait(10)
    finally:
        server.stop()                             # ends the stream even if the test failed
        thread.join()
    assert seen == [("ADDED", "late")]


def test_watch_without_version_starts_with_current_state(server: KubeApiServer,
                                                         core: Any) -> None:
    server.add_node("node1")
    events = [(e["type"], e["object"].metadata.name)
              for e in watch.Watch().stream(core.list_node, timeout_seconds=1)]
    assert events == [("ADDED", "node1")]


def test_watch_after_compaction_is_gone(server: KubeApiServer, core: Any) -> None:
    server.add_node("node1")
    start = core.list_node().metadata.resource_version
    server.add_node("node2")
    server.compact()
    with pytest.raises(ApiException) as caught:
        list(watch.Watch().stream(core.list_node, resource_version=start, timeout_seconds=1))
    assert caught.value.status == 410


def test_missing_object_is_a_404_status(server: KubeApiServer, core: Any) -> None:
    with pytest.raises(ApiException) as caught:
        core.read_node("nowhere")
    assert caught.value.status == 404
    status = status_of(caught.value)
    assert (status["kind"], status["reason"], status["code"]) == ("Status", "NotFound", 404)
    assert "nowhere" in status["message"]
    with pytest.raises(ApiException) as caught:
        core.read_namespaced_pod("nothing", "default")
    assert caught.value.status == 404


def test_conflicts(server: KubeApiServer, core: Any) -> None:
    server.add_node("node1")
    with pytest.raises(ApiException) as caught:
        core.create_node({"metadata": {"name": "node1"}})
    assert caught.value.status == 409
    assert status_of(caught.value)["reason"] == "AlreadyExists"
    stale = core.read_node("node1")
    server.annotate_node("node1", changed="yes")
    stale.metadata.annotations = {"mine": "yes"}
    with pytest.raises(ApiException) as caught:
        core.replace_node("node1", stale)
    assert caught.value.status == 409
    assert status_of(caught.value)["reason"] == "Conflict"


def test_create_and_delete_nodes_through_the_api(server: KubeApiServer, core: Any) -> None:
    created = core.create_node({"metadata": {"name": "node9"},
                                "spec": {"podCIDR": "10.244.9.0/24"}})
    assert created.metadata.uid
    assert server.node("node9")["spec"]["podCIDR"] == "10.244.9.0/24"
    core.delete_node("node9")
    assert server.list(NODES) == []


def test_bad_or_missing_token_is_401(server: KubeApiServer, tmp_path: Path,
                                     inside: None) -> None:
    server.add_node("node1")
    for token in ("wrong", None):
        with connect(server.url, tmp_path, token) as api:
            with pytest.raises(ApiException) as caught:
                client.CoreV1Api(api).list_node()
            assert caught.value.status == 401
            assert status_of(caught.value)["reason"] == "Unauthorized"


def test_pods(server: KubeApiServer, core: Any) -> None:
    server.add_pod("demo", "web", node_name="node1", annotations={"k8s.v1.cni.cncf.io/networks":
                                                                    "macvlan-conf"})
    pod = core.read_namespaced_pod("web", "demo")
    assert pod.spec.node_name == "node1"
    assert pod.metadata.annotations["k8s.v1.cni.cncf.io/networks"] == "macvlan-conf"
    core.patch_namespaced_pod("web", "demo", {"metadata": {"annotations": {
        "k8s.v1.cni.cncf.io/network-status": "[]"}}})
    core.patch_namespaced_pod_status("web", "demo", {"status": {"phase": "Running"}})
    stored = server.pod("demo", "web")
    assert stored["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"] == "[]"
    assert stored["status"]["phase"] == "Running"
    with pytest.raises(ApiException) as caught:
        core.read_namespaced_pod("web", "other")
    assert caught.value.status == 404


def test_network_attachment_definitions(server: KubeApiServer, api_client: Any) -> None:
    custom = client.CustomObjectsApi(api_client)
    body = {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": "macvlan-conf"},
            "spec": {"config": json.dumps({"cniVersion": "1.0.0", "type": "macvlan"})}}
    custom.create_namespaced_custom_object(NAD_GROUP, NAD_VERSION, "demo", NAD_PLURAL, body)
    got = custom.get_namespaced_custom_object(NAD_GROUP, NAD_VERSION, "demo", NAD_PLURAL,
                                              "macvlan-conf")
    assert json.loads(got["spec"]["config"])["type"] == "macvlan"
    assert got["metadata"]["namespace"] == "demo"
    server.add_nad("demo", "bridge-conf", {"cniVersion": "1.0.0", "type": "bridge"})
    listed = custom.list_namespaced_custom_object(NAD_GROUP, NAD_VERSION, "demo", NAD_PLURAL)
    assert [item["metadata"]["name"] for item in listed["items"]] == [
        "bridge-conf", "macvlan-conf"]
    with pytest.raises(ApiException) as caught:
        custom.get_namespaced_custom_object(NAD_GROUP, NAD_VERSION, "other", NAD_PLURAL,
                                            "macvlan-conf")
    assert caught.value.status == 404
    with pytest.raises(ApiException) as caught:
        custom.create_namespaced_custom_object(NAD_GROUP, NAD_VERSION, "demo", NAD_PLURAL, body)
    assert caught.value.status == 409
    custom.delete_namespaced_custom_object(NAD_GROUP, NAD_VERSION, "demo", NAD_PLURAL,
                                           "macvlan-conf")
    assert [n["metadata"]["name"] for n in server.list(NADS, "demo")] == ["bridge-conf"]


def test_stop_and_start_keep_objects(server: KubeApiServer, core: Any) -> None:
    import urllib3

    server.add_node("node1")
    core.list_node()
    server.stop()
    with pytest.raises(urllib3.exceptions.HTTPError):
        core.list_node(_request_timeout=5)
    server.start()
    assert [n.metadata.name for n in core.list_node().items] == ["node1"]


def test_reached_from_another_namespace(netns_factory: NetnsFactory, tmp_path: Path) -> None:
    """The cluster layout: the API on the underlay, agents in their own namespaces."""
    underlay, node = netns_factory("underlay"), netns_factory("node")
    underlay.run("ip", "link", "add", "api0", "type", "veth", "peer", "name", "eth0",
                 "netns", node.name)
    underlay.run("ip", "addr", "add", "192.168.0.1/24", "dev", "api0")
    underlay.run("ip", "link", "set", "api0", "up")
    node.run("ip", "addr", "add", "192.168.0.10/24", "dev", "eth0")
    node.run("ip", "link", "set", "eth0", "up")
    with KubeApiServer(underlay.path, host="192.168.0.1", port=6443) as server:
        server.add_node("node1", pod_cidr="10.244.1.0/24")
        assert server.url == "http://192.168.0.1:6443"
        with netns.entered(node.path), connect(server.url, tmp_path, None) as api:
            names = [n.metadata.name for n in client.CoreV1Api(api).list_node().items]
    assert names == ["node1"]
