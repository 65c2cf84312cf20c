"""multus without the kernel: annotation parsing, delegate configs as libcni builds them,
version negotiation, the cache format, network-status entries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pycni.meta.multus import cache, definitions, delegates, plugin, selection
from pycni.meta.multus.delegates import Attachment

from pycni.errors import IncompatibleVersion, InvalidConfig
from pycni.result import Result

SEEDS = Path("/work/shared/seeds")


def test_comma_form_with_namespaces_and_interfaces() -> None:
    chosen = selection.parse("macvlan-conf, other/sriov@sriov0 ,bridge@br1", "apps")
    assert [(s.namespace, s.name, s.interface) for s in chosen] == [
        ("apps", "macvlan-conf", ""), ("other", "sriov", "sriov0"), ("apps", "bridge", "br1")]
    assert selection.parse("  ", "apps") == []


def test_json_form_of_the_seed_annotations() -> None:
    annotations = json.loads((SEEDS / "pod-annotations.json").read_text())
    business = selection.parse(json.dumps(annotations["business-app"]), "default")
    assert [(s.key, s.interface, s.ips) for s in business] == [
        ("default/business-network", "net1", ["192.168.100.10/24"])]
    assert business[0].runtime_config() == {"ips": ["192.168.100.10/24"]}
    storage = selection.parse(json.dumps(annotations["storage-app"]), "default")
    assert [s.interface for s in storage] == ["storage0", "business0"]


def test_json_form_every_key() -> None:
    [chosen] = selection.parse(json.dumps([{
        "name": "net", "namespace": "ns", "interface": "x0", "ips": ["10.1.1.5/24"],
        "mac": "02:00:00:00:00:01", "default-route": ["10.1.1.1"],
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 1000}, "cni-args": {"a": "b"}, "deviceID": "0000:03:00.1",
    }]), "default")
    assert chosen.gateways == ["10.1.1.1"] and chosen.cni_args == {"a": "b"}
    assert chosen.runtime_config() == {
        "ips": ["10.1.1.5/24"], "mac": "02:00:00:00:00:01",
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 1000}, "deviceID": "0000:03:00.1"}


@pytest.mark.parametrize(("annotation", "words"), [
    ('[{"name": ', "invalid JSON"),
    ('{"name": "x"}', "must be a JSON list"),
    ('[{"interface": "net1"}]', "without a name"),
    ('[{"name": "x", "ips": "10.0.0.1/24"}]', "list of strings"),
    ('[{"name": "x", "ips": ["300.0.0.1/24"]}]', "invalid IP"),
    ('[{"name": "x", "mac": "zz"}]', "invalid MAC"),
    ('[{"name": "x", "default-route": ["gw"]}]', "default-route"),
    ('[{"name": "x", "colour": "red"}]', "unknown key"),
    ("a/b/c", "invalid network reference"),
    ("net@", "invalid network reference"),
    ("net@averyveryverylongname", "too long"),
    ("Upper", "invalid network name"),
])
def test_bad_annotations(annotation: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        selection.parse(annotation, "default")


def test_single_config_becomes_a_list_and_plugins_get_what_libcni_gives() -> None:
    attachment = Attachment(
        "default/net", "net1",
        {"cniVersion": "0.4.0", "name": "net", "type": "macvlan",
         "capabilities": {"ips": True}, "args": {"cni": {"old": "x"}}},
        runtime={"ips": ["10.0.0.5/24"], "portMappings": []}, cni_args={"new": "y"},
        device_id="0000:03:00.2")
    assert attachment.conf["plugins"][0]["type"] == "macvlan"
    prev = Result.from_dict({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.5/24"}]})
    data = json.loads(delegates.plugin_config(attachment, 0, "0.4.0", prev))
    assert data["runtimeConfig"] == {"ips": ["10.0.0.5/24"]}  # only declared capabilities
    assert data["args"]["cni"] == {"old": "x", "new": "y"}
    assert data["deviceID"] == data["pciBusID"] == "0000:03:00.2"
    assert data["prevResult"]["cniVersion"] == "0.4.0"
    assert data["prevResult"]["ips"][0]["version"] == "4"


def test_list_name_and_version_injected() -> None:
    attachment = Attachment("n", "eth0", {"cniVersion": "1.0.0", "name": "list",
                                          "plugins": [{"type": "bridge"}, {"type": "portmap"}]})
    data = json.loads(delegates.plugin_config(attachment, 1, "0.3.1", None))
    assert (data["name"], data["cniVersion"], "prevResult" in data) == ("list", "0.3.1", False)
    with pytest.raises(InvalidConfig):
        delegates.as_list({"name": "x", "plugins": []})
    with pytest.raises(InvalidConfig):
        delegates.as_list({"name": "x"})


def test_version_negotiated_down() -> None:
    assert delegates.negotiate("1.0.0", ("0.3.1", "0.4.0", "1.0.0"), "x") == "1.0.0"
    assert delegates.negotiate("1.1.0", ("0.3.1", "0.4.0", "1.0.0"), "x") == "1.0.0"
    assert delegates.negotiate("0.4.0", ("0.1.0", "0.3.1", "1.0.0"), "x") == "0.3.1"
    with pytest.raises(IncompatibleVersion):
        delegates.negotiate("0.2.0", ("1.0.0",), "x")


def test_cache_round_trip_and_corruption(tmp_path: Path) -> None:
    attachment = Attachment("default/net", "net1", {"cniVersion": "1.0.0", "name": "net",
                                                    "type": "macvlan"},
                            versions=["1.0.0"], result={"cniVersion": "1.1.0"})
    record = cache.PodCache("ctr", "eth0", "/var/run/netns/x", "default", "pod", "uid",
                            [attachment])
    cache.save(str(tmp_path), record)
    loaded = cache.load(str(tmp_path), "ctr", "eth0")
    assert loaded is not None and loaded.to_json() == record.to_json()
    assert list(cache.names(str(tmp_path))) == [("ctr", "eth0")]
    (tmp_path / "ctr:eth0").write_text('{"format": 1}')
    with pytest.raises(cache.CorruptCache):
        cache.load(str(tmp_path), "ctr", "eth0")
    cache.remove(str(tmp_path), "ctr", "eth0")
    assert cache.load(str(tmp_path), "ctr", "eth0") is None


def test_network_status_entries() -> None:
    cluster = Attachment("default-cni-network", "eth0",
                         {"cniVersion": "0.3.1", "name": "default-cni-network", "type": "x"},
                         cluster=True, result={
                             "cniVersion": "1.1.0",
                             "interfaces": [{"name": "cni0", "mac": "aa:aa:aa:aa:aa:aa"},
                                            {"name": "eth0", "mac": "0a:00:00:00:00:01",
                                             "sandbox": "/ns"}],
                             "ips": [{"address": "10.244.1.2/24", "interface": 1}],
                             "dns": {"nameservers": ["10.96.0.10"]}})
    extra = Attachment("default/net", "net1", {"cniVersion": "0.3.1", "name": "net",
                                               "type": "x"},
                       gateways=["192.168.1.1"], device_id="0000:03:00.1", result={
                           "cniVersion": "1.1.0",
                           "interfaces": [{"name": "net1", "mac": "0a:00:00:00:00:02",
                                           "sandbox": "/ns"}],
                           "ips": [{"address": "192.168.1.5/24", "interface": 0}]})
    assert plugin.network_status([cluster, extra]) == [
        {"name": "default-cni-network", "interface": "eth0", "ips": ["10.244.1.2"],
         "mac": "0a:00:00:00:00:01", "default": False,
         "dns": {"nameservers": ["10.96.0.10"]}},
        {"name": "default/net", "interface": "net1", "ips": ["192.168.1.5"],
         "mac": "0a:00:00:00:00:02", "default": True, "dns": {},
         "device-info": {"type": "pci", "version": "1.1.0",
                         "pci": {"pci-address": "0000:03:00.1"}}},
    ]


def test_nad_config_from_spec_or_conf_dir(tmp_path: Path) -> None:
    nad = {"metadata": {"name": "business", "namespace": "default"},
           "spec": {"config": (SEEDS / "nad-business-network.macvlan.json").read_text()}}
    assert definitions.nad_config(nad, str(tmp_path))["name"] == "business"
    (tmp_path / "10-file.conf").write_text(json.dumps({"name": "filed", "type": "bridge"}))
    empty = {"metadata": {"name": "filed", "namespace": "default"}, "spec": {}}
    assert definitions.nad_config(empty, str(tmp_path))["type"] == "bridge"
    with pytest.raises(InvalidConfig, match="no spec.config"):
        definitions.nad_config({"metadata": {"name": "nope"}, "spec": {}}, str(tmp_path))
    with pytest.raises(InvalidConfig, match="not valid JSON"):
        definitions.nad_config({"metadata": {"name": "x"}, "spec": {"config": "{"}},
                               str(tmp_path))


def test_devices_from_the_kubelet_checkpoint(tmp_path: Path) -> None:
    checkpoint = tmp_path / "kubelet_internal_checkpoint"
    checkpoint.write_text(json.dumps({"Data": {"PodDeviceEntries": [
        {"PodUID": "u1", "ContainerName": "c", "ResourceName": "intel.com/sriov",
         "DeviceIDs": {"0": ["0000:03:00.1", "0000:03:00.2"]}},
        {"PodUID": "u2", "ContainerName": "c", "ResourceName": "intel.com/sriov",
         "DeviceIDs": ["0000:03:00.3"]}]}}))
    assert definitions.allocated_devices("u1", "intel.com/sriov", str(checkpoint)) == [
        "0000:03:00.1", "0000:03:00.2"]
    assert definitions.allocated_devices("u2", "intel.com/sriov", str(checkpoint)) == [
        "0000:03:00.3"]
    assert definitions.allocated_devices("u3", "intel.com/sriov", str(checkpoint)) == []


def test_seed_multus_config_loads() -> None:
    from tests.conftest import cni_env, run_in_process

    conf = json.loads((SEEDS / "multus-conf.json").read_text())
    outcome = run_in_process(plugin.PLUGIN, cni_env("VERSION"), conf)
    assert outcome.ok()["supportedVersions"]
    broken = {**conf, "delegates": [], "clusterNetwork": ""}
    run_in_process(plugin.PLUGIN, cni_env("DEL", path="/nonexistent"), broken).error(7)


class OldPlugin:
    """An executor standing for a plugin binary that speaks only up to 0.4.0."""

    SUPPORTED = ("0.3.1", "0.4.0")

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def find(self, plugin_type: str, paths: list[str]) -> str:
        return f"/fake/{plugin_type}"

    def run(self, path: str, stdin_data: bytes, environ: dict[str, str]) -> tuple[int, bytes]:
        command, version = environ["CNI_COMMAND"], json.loads(stdin_data)["cniVersion"]
        self.calls.append((command, version))
        if command == "VERSION":
            answer = {"cniVersion": "0.4.0", "supportedVersions": list(self.SUPPORTED)}
            return 0, json.dumps(answer).encode()
        if version not in self.SUPPORTED:
            return 1, json.dumps({"cniVersion": version, "code": 1,
                                  "msg": "incompatible CNI versions"}).encode()
        if command == "ADD":
            return 0, json.dumps({"cniVersion": version, "ips": [
                {"version": "4", "address": "10.0.0.2/24"}]}).encode()
        return 0, b""


def test_delegate_run_at_the_version_it_supports(monkeypatch: pytest.MonkeyPatch) -> None:
    from pycni import invoke

    fake = OldPlugin()
    monkeypatch.setattr(invoke, "EXECUTOR", fake)
    monkeypatch.setattr(delegates, "_SUPPORTED", {})
    attachment = Attachment("default/old", "net1", {"cniVersion": "1.0.0", "name": "old",
                                                    "type": "old"})
    result = delegates.add(attachment, {"CNI_COMMAND": "ADD"}, ["/fake"])
    assert [ip.address for ip in result.ips] == ["10.0.0.2/24"]
    assert attachment.versions == ["0.4.0"]
    assert fake.calls == [("ADD", "1.0.0"), ("VERSION", "1.0.0"), ("ADD", "0.4.0")]
    delegates.delete(attachment, {"CNI_COMMAND": "DEL"}, ["/fake"])
    assert fake.calls[-1] == ("DEL", "0.4.0")  # DEL at the version ADD ran at
