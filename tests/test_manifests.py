"""The image recipe and the Kubernetes manifests, checked offline (no cluster, no root).

Every document of build/manifests/pycni.yaml is deserialized into the official client's
model for its kind and serialized back: a misspelt or misplaced key, which the API server
would drop or reject, shows as a difference. Then what the nodes depend on: the RBAC rules,
the configurations (the users' seeds), the commands, the host paths and the probes, and that
build/Containerfile copies nothing but the build's output.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
from pathlib import PurePosixPath
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient
from pycni.plugins.flannel import agent

import pycni
from tests.conftest import REPO

MANIFEST = REPO / "build" / "manifests" / "pycni.yaml"
CONTAINERFILE = REPO / "build" / "Containerfile"
SEEDS = REPO / "tests" / "seeds"

NAMESPACE = "kube-pycni"
BIN = "/opt/pycni/bin"                       # where the image holds dist/bin
PROGRAM = f"{BIN}/pycni.bundle/pycni"        # the full program (admin commands)
IMAGE = f"localhost/pycni:{pycni.__version__}"

MODELS = {  # kind -> the client's model, in the order the file applies them
    "Namespace": "V1Namespace",
    "ServiceAccount": "V1ServiceAccount",
    "ClusterRole": "V1ClusterRole",
    "ClusterRoleBinding": "V1ClusterRoleBinding",
    "ConfigMap": "V1ConfigMap",
    "DaemonSet": "V1DaemonSet",
}

# (API group, resource) -> verbs: the least the agent and multus need.
RBAC = {
    ("", "nodes"): {"get", "list", "watch"},
    ("", "nodes/status"): {"patch"},
    ("", "pods"): {"get"},
    ("", "pods/status"): {"patch"},
    ("k8s.cni.cncf.io", "network-attachment-definitions"): {"get", "list", "watch"},
}

COMMANDS = {
    "install-cni": [PROGRAM, "install-cni", "--from", BIN, "--to", "/host/opt/cni/bin"],
    "flanneld": [PROGRAM, "flanneld", "--ip-masq", "--kube-subnet-mgr",
                 "--net-config-path", "/etc/pycni/net-conf.json", "--healthz-port", "9102"],
    "install-conf": [PROGRAM, "install-conf", "--conf", "/etc/pycni/cni-conf.json",
                     "--to", "/host/etc/cni/net.d/00-multus.conf",
                     "--wait-for", "/run/flannel/subnet.env",
                     "--kubeconfig", "/host/etc/cni/net.d/multus.d/multus.kubeconfig",
                     "--cleanup-on-exit"],
    "daemon": [PROGRAM, "daemon", "--socket", "/run/pycni/daemon.sock"],
}

# container -> mount path -> (host path, hostPath type) or ("configMap", name)
MOUNTS = {
    "install-cni": {"/host/opt/cni/bin": ("/opt/cni/bin", "DirectoryOrCreate")},
    "flanneld": {
        "/run/flannel": ("/run/flannel", "DirectoryOrCreate"),
        "/etc/pycni": ("configMap", "pycni-cfg"),
        "/run/xtables.lock": ("/run/xtables.lock", "FileOrCreate"),
    },
    "install-conf": {
        "/host/etc/cni/net.d": ("/etc/cni/net.d", "DirectoryOrCreate"),
        "/run/flannel": ("/run/flannel", "DirectoryOrCreate"),
        "/etc/pycni": ("configMap", "pycni-cfg"),
    },
    "daemon": {
        "/run/pycni": ("/run/pycni", "DirectoryOrCreate"),
        "/var/lib/cni": ("/var/lib/cni", "DirectoryOrCreate"),
        "/run/netns": ("/run/netns", "DirectoryOrCreate"),
        "/run/flannel": ("/run/flannel", "DirectoryOrCreate"),
    },
}


class StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key twice in one mapping (PyYAML keeps the last one
    silently; the API server rejects the object)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {repeated[0]!r} given twice", node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_documents(text: str | None = None) -> list[dict[str, Any]]:
    text = MANIFEST.read_text() if text is None else text
    return [doc for doc in yaml.load_all(text, Loader=StrictLoader) if doc is not None]


def document(kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in load_documents() if doc["kind"] == kind]
    return found


def round_trip(data: dict[str, Any], model: str) -> Any:
    """`data` through the client's model and back; unknown keys do not survive."""
    client = ApiClient()
    # The client's own deserializer (what `ApiClient.deserialize` runs on a response body);
    # with client-side validation on, a required field missing raises ValueError here.
    obj = client._ApiClient__deserialize(copy.deepcopy(data), model)
    return client.sanitize_for_serialization(obj)


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = document("DaemonSet")["spec"]["template"]["spec"]
    return spec


def containers() -> dict[str, dict[str, Any]]:
    spec = pod_spec()
    every = spec.get("initContainers", []) + spec["containers"]
    return {container["name"]: container for container in every}


def option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def host_path_of(container: dict[str, Any], path: str) -> str:
    """The host path behind `path` in `container` (through its hostPath mounts)."""
    volumes = {volume["name"]: volume for volume in pod_spec()["volumes"]}
    target = PurePosixPath(path)
    for mount in container.get("volumeMounts", []):
        mounted = PurePosixPath(mount["mountPath"])
        if target == mounted or mounted in target.parents:
            host = volumes[mount["name"]].get("hostPath")
            assert host, f"{path} is under {mounted}, which is not a hostPath"
            return str(PurePosixPath(host["path"]) / target.relative_to(mounted))
    raise AssertionError(f"{path} is not under any mount of {container['name']}")


# --- the documents as the API server would read them ------------------------------------------

def test_documents_are_the_expected_kinds() -> None:
    documents = load_documents()
    assert [doc["kind"] for doc in documents] == list(MODELS)
    for doc in documents:
        assert doc["metadata"]["name"], doc["kind"]
        if doc["kind"] in ("ServiceAccount", "ConfigMap", "DaemonSet"):
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["kind"]
        else:
            assert "namespace" not in doc["metadata"], doc["kind"]
    assert document("Namespace")["metadata"]["name"] == NAMESPACE
    assert document("ServiceAccount")["metadata"]["name"] == "pycni"
    assert document("ConfigMap")["metadata"]["name"] == "pycni-cfg"
    assert document("DaemonSet")["metadata"]["name"] == "pycni-ds"


@pytest.mark.parametrize("kind", list(MODELS))
def test_document_survives_the_client_models(kind: str) -> None:
    data = document(kind)
    assert data["apiVersion"] == ("rbac.authorization.k8s.io/v1" if kind.startswith("Cluster")
                                  else "apps/v1" if kind == "DaemonSet" else "v1")
    assert round_trip(data, MODELS[kind]) == data


def test_round_trip_catches_a_misspelt_key() -> None:
    """The check above is only as good as this: the model drops keys it does not know."""
    data = document("DaemonSet")
    data["spec"]["template"]["spec"]["hostNetwok"] = True
    assert round_trip(data, "V1DaemonSet") != data


def test_loader_refuses_a_repeated_key() -> None:
    with pytest.raises(yaml.constructor.ConstructorError, match="'image' given twice"):
        load_documents("kind: Pod\nimage: a\nimage: b\n")


def test_round_trip_catches_a_missing_required_field() -> None:
    data = document("DaemonSet")
    del data["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(ValueError, match="name"):
        round_trip(data, "V1DaemonSet")


# --- RBAC --------------------------------------------------------------------------------------

def test_cluster_role_is_least_privilege() -> None:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in document("ClusterRole")["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no URLs, no names
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == RBAC


def test_binding_gives_the_role_to_the_daemonset_account() -> None:
    binding = document("ClusterRoleBinding")
    role = document("ClusterRole")["metadata"]["name"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": role}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pycni",
                                    "namespace": NAMESPACE}]
    assert pod_spec()["serviceAccountName"] == "pycni"


# --- configuration -----------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "seed"), [("cni-conf.json", "multus-conf.json"),
                                           ("net-conf.json", "net-conf.vxlan.json")])
def test_configmap_holds_the_seed(key: str, seed: str) -> None:
    text = document("ConfigMap")["data"][key]
    original = (SEEDS / seed).read_text()
    assert json.loads(text) == json.loads(original)
    assert text == original  # the users' file as they wrote it


def test_multus_kubeconfig_is_where_install_conf_writes_it() -> None:
    """The conf names a host path; install-conf writes it through its /host mount."""
    conf = json.loads(document("ConfigMap")["data"]["cni-conf.json"])
    install_conf = containers()["install-conf"]
    command = install_conf["command"]
    assert host_path_of(install_conf, option(command, "--kubeconfig")) == conf["kubeconfig"]
    assert host_path_of(install_conf, option(command, "--to")) == "/etc/cni/net.d/00-multus.conf"


# --- the pod -----------------------------------------------------------------------------------

def test_pod_runs_on_every_node_in_the_host_namespaces() -> None:
    daemonset = document("DaemonSet")
    spec = pod_spec()
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert spec["hostNetwork"] is True
    assert spec["hostPID"] is True  # the daemon reads callers' /proc/<pid>/ns
    assert {"operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["priorityClassName"] == "system-node-critical"


def test_every_container_runs_the_full_program() -> None:
    found = containers()
    assert [c["name"] for c in pod_spec()["initContainers"]] == ["install-cni"]
    assert set(found) == set(COMMANDS)
    for name, container in found.items():
        assert container["image"] == IMAGE, name
        assert "args" not in container, name
        assert container["command"] == COMMANDS[name], name


def test_only_the_daemon_is_privileged() -> None:
    found = containers()
    assert found["daemon"]["securityContext"] == {"privileged": True}
    flanneld = found["flanneld"]["securityContext"]
    assert flanneld["privileged"] is False
    assert set(flanneld["capabilities"]["add"]) == {"NET_ADMIN", "NET_RAW"}
    for name in ("install-cni", "install-conf"):
        assert not found[name].get("securityContext", {}).get("privileged"), name


def test_mounts_and_host_paths() -> None:
    volumes = {volume["name"]: volume for volume in pod_spec()["volumes"]}
    for name, container in containers().items():
        actual = {}
        for mount in container["volumeMounts"]:
            volume = volumes[mount["name"]]
            if "configMap" in volume:
                actual[mount["mountPath"]] = ("configMap", volume["configMap"]["name"])
            else:
                actual[mount["mountPath"]] = (volume["hostPath"]["path"],
                                              volume["hostPath"]["type"])
        assert actual == MOUNTS[name], name
    daemon_mounts = {m["mountPath"]: m for m in containers()["daemon"]["volumeMounts"]}
    assert daemon_mounts["/run/netns"]["mountPropagation"] == "HostToContainer"


def test_paths_in_commands_are_mounted() -> None:
    """Each file a command reads or writes is on a volume of its container."""
    found = containers()
    host = {
        ("install-cni", "--to"): "/opt/cni/bin",
        ("install-conf", "--wait-for"): "/run/flannel/subnet.env",
        ("daemon", "--socket"): "/run/pycni/daemon.sock",
    }
    for (name, flag), expected in host.items():
        assert host_path_of(found[name], option(found[name]["command"], flag)) == expected
    for name, flag in (("flanneld", "--net-config-path"), ("install-conf", "--conf")):
        path = PurePosixPath(option(found[name]["command"], flag))
        mounts = {PurePosixPath(m["mountPath"]) for m in found[name]["volumeMounts"]}
        assert path.parent in mounts, (name, path)
        assert path.name in document("ConfigMap")["data"], (name, path)


def test_agent_reads_the_node_name_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    flanneld = containers()["flanneld"]
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} \
        in flanneld["env"]
    monkeypatch.setenv("NODE_NAME", "node-7")
    options = agent.parse_args(flanneld["command"][2:])  # the agent takes every flag given
    assert options.node_name == "node-7"
    assert options.kube_subnet_mgr and options.ip_masq
    assert options.net_config_path == "/etc/pycni/net-conf.json"
    assert options.healthz_port == 9102


def test_probes_use_the_health_port() -> None:
    flanneld = containers()["flanneld"]
    port = int(option(flanneld["command"], "--healthz-port"))
    assert flanneld["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    assert flanneld["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    # No `host` above: the kubelet probes the pod's address, the node's (hostNetwork), where
    # the agent listens unless --healthz-ip says otherwise.
    assert "--healthz-ip" not in flanneld["command"]


def test_resources_are_bounded() -> None:
    for name, container in containers().items():
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), name
        assert "memory" in resources["limits"], name


def test_subcommands_are_in_pycni_help() -> None:
    done = subprocess.run([sys.executable, "-m", "pycni", "help"], cwd=REPO,
                          capture_output=True, text=True, check=True)
    listed = set(re.findall(r"^  (\S+)", done.stdout, flags=re.MULTILINE))
    wanted = {container["command"][1] for container in containers().values()}
    missing = sorted(wanted - listed)
    assert not missing, (
        f"the manifests run `pycni {' / '.join(missing)}`, which `pycni help` does not list; "
        "install-cni and install-conf are being added in parallel (issue 11): this passes "
        "once they land")


# --- the image ---------------------------------------------------------------------------------

def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Containerfile, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_containerfile_copies_only_the_build_output() -> None:
    steps = instructions()
    assert steps[0] == ("FROM", "debian:12-slim")
    assert not [args for word, args in steps if word == "ADD"]
    copies = [[word for word in shlex.split(args) if not word.startswith("--")]
              for word, args in steps if word == "COPY"]
    assert copies == [["dist/bin/", f"{BIN}/"]]
    for *sources, _ in copies:
        for source in sources:
            assert PurePosixPath(source).parts[0] == "dist", source


def test_containerfile_runs_the_full_program_with_its_tools() -> None:
    steps = dict(instructions())
    assert json.loads(steps["ENTRYPOINT"]) == [PROGRAM]
    # The image's path to the program is the build's (dist/bin copied to BIN): the Makefile
    # moves the bundle to dist/bin/pycni.bundle, whose full program the spec names `pycni`.
    assert PurePosixPath(PROGRAM).relative_to(BIN) == PurePosixPath("pycni.bundle", "pycni")
    assert "dist/bin/pycni.bundle" in (REPO / "Makefile").read_text()
    assert 'name="pycni"' in (REPO / "build" / "pycni.spec").read_text()
    assert option(COMMANDS["install-cni"], "--from") == BIN
    packages = set(shlex.split(steps["RUN"]))
    assert {"iptables", "nftables", "iproute2", "conntrack"} <= packages
