"""ipvlan and vlan in sandbox namespaces, on the business network of tests/test_macvlan.py.

Kernels without the ipvlan or 8021q module cannot create these links: that is found once per
session by trying in a sandbox namespace, and the tests that need the link skip saying so.
Configuration handling, validation, the error a missing module gives, DEL, STATUS and GC are
tested on every kernel.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pycni import spec
from tests.conftest import IS_ROOT, PYCNI, REPO, Netns, NetnsFactory, cni_env, run_exec
from tests.test_macvlan import (
    FIRST,
    GATEWAY,
    SERVER_ADDRESS,
    Business,
    addresses,
    business_network,
    details,
    links,
    nothing_left,
    ping,
)

VLAN_SEED = REPO / "tests" / "seeds" / "nad-vlan-network.vlan.json"
PROBES = {"ipvlan": (("type", "ipvlan", "mode", "l2"), "ipvlan"),
          "vlan": (("type", "vlan", "id", "5"), "8021q")}


@pytest.fixture
def business(host_ns: Netns, netns_factory: NetnsFactory, cni_bin: Path,
             tmp_path: Path) -> Business:
    return business_network(host_ns, netns_factory, cni_bin, tmp_path)


@pytest.fixture(scope="session")
def missing_modules() -> Iterator[dict[str, str]]:
    """Link kinds this kernel cannot create, with the reason: tried once in a sandbox."""
    if not IS_ROOT:
        yield {}
        return
    factory = NetnsFactory()
    try:
        probe = factory("probe")
        probe.run("ip", "link", "add", "probe0", "type", "veth", "peer", "name", "probe1")
        missing = {}
        for kind, (arguments, module) in PROBES.items():
            done = probe.run("ip", "link", "add", f"probe-{kind}", "link", "probe0", *arguments,
                             check=False)
            if done.returncode:
                missing[kind] = f"this kernel has no {module} module: {done.stderr.strip()}"
        yield missing
    finally:
        factory.remove_all()


@pytest.fixture
def with_ipvlan(missing_modules: dict[str, str]) -> None:
    if "ipvlan" in missing_modules:
        pytest.skip(missing_modules["ipvlan"])


@pytest.fixture
def with_vlan(missing_modules: dict[str, str]) -> None:
    if "vlan" in missing_modules:
        pytest.skip(missing_modules["vlan"])


def ipvlan(business: Business, version: str = "1.0.0", **keys: Any) -> dict[str, Any]:
    keys.setdefault("mode", "l2")
    return business.conf(version, plugin="ipvlan", **keys)


def vlan(business: Business, version: str = "1.0.0", **keys: Any) -> dict[str, Any]:
    conf = business.conf(version, plugin="vlan", vlanId=100, **keys)
    del conf["mode"]
    return conf


def host_local(business: Business, conf: dict[str, Any], pod: Netns) -> Any:
    """host-local alone, with the plugin's config: the allocation the plugin's ADD holds."""
    return run_exec([*PYCNI, "host-local"],
                    cni_env("ADD", pod.path, ifname="net1", path=str(business.cni_bin)),
                    conf, in_ns=business.host).ok()


# --- ipvlan on a kernel with the module ------------------------------------------------------

@pytest.mark.usefixtures("with_ipvlan")
@pytest.mark.parametrize("version", spec.ALL)
def test_ipvlan_every_version(version: str, business: Business) -> None:
    conf = ipvlan(business, version, mtu=1400)
    pod = business.pod()
    result = business.add(conf, pod)
    net1 = details(pod, "net1")
    assert net1["linkinfo"]["info_kind"] == "ipvlan"
    assert net1["linkinfo"]["info_data"]["mode"] == "l2"
    assert net1["mtu"] == 1400
    assert net1["address"] == business.host.link("eth1")["address"]  # the master's MAC
    assert addresses(pod, "net1") == [FIRST]
    if spec.at_least(version, "0.3.0"):
        assert result["interfaces"] == [{"name": "net1", "mac": net1["address"],
                                         "sandbox": pod.path}]
        assert [ip["interface"] for ip in result["ips"]] == [0]
    check = business.check(conf, result, pod)
    if spec.at_least(version, "0.4.0"):
        assert check.ok() is None
    else:
        check.error(1)
    assert ping(pod, SERVER_ADDRESS.split("/")[0])
    for _ in range(2):
        business.delete(conf, pod)
        assert links(pod) == ["lo"] and business.allocations() == {}


@pytest.mark.usefixtures("with_ipvlan")
@pytest.mark.parametrize("mode", ["l2", "l3", "l3s"])
def test_ipvlan_modes(mode: str, business: Business) -> None:
    conf = ipvlan(business, mode=mode)
    pod = business.pod()
    result = business.add(conf, pod)
    assert details(pod, "net1")["linkinfo"]["info_data"]["mode"] == mode
    business.check(conf, result, pod).ok()
    other = "l3" if mode != "l3" else "l2"
    assert "mode" in business.check({**conf, "mode": other}, result, pod).error(999)["msg"]
    business.delete(conf, pod)


@pytest.mark.usefixtures("with_ipvlan")
def test_ipvlan_chained_takes_master_and_addresses_from_prev_result(business: Business) -> None:
    conf = ipvlan(business, ipam=False)
    del conf["master"]
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth1"}],
            "ips": [{"address": "192.168.100.50/16", "gateway": GATEWAY, "interface": 0}]}
    pod = business.pod()
    result = business.add({**conf, "prevResult": prev}, pod)
    assert addresses(pod, "net1") == ["192.168.100.50/16"]
    assert result["interfaces"][0]["name"] == "net1"
    business.check(conf, result, pod).ok()
    business.delete(conf, pod)
    assert links(pod) == ["lo"]


@pytest.mark.usefixtures("with_ipvlan")
def test_ipvlan_link_in_container_and_master_gone(business: Business) -> None:
    pod = business.pod()
    pod.run("ip", "link", "add", "ens9", "type", "veth", "peer", "name", "ens9-peer")
    conf = ipvlan(business, master="ens9", linkInContainer=True)
    result = business.add(conf, pod)
    assert details(pod, "net1")["link"] == "ens9"
    business.check(conf, result, pod).ok()
    pod.run("ip", "link", "del", "ens9")
    business.delete(conf, pod)
    business.delete(conf, pod)
    assert business.allocations() == {}


# --- vlan on a kernel with the module --------------------------------------------------------

@pytest.mark.usefixtures("with_vlan")
@pytest.mark.parametrize("version", spec.ALL)
def test_vlan_every_version(version: str, business: Business) -> None:
    """The pod's traffic leaves eth1 tagged: the server answers on its VLAN 100 interface."""
    business.server.run("ip", "link", "add", "link", "eth0", "name", "eth0.100", "type",
                        "vlan", "id", "100")
    business.server.run("ip", "addr", "add", "192.168.200.1/24", "dev", "eth0.100")
    business.server.run("ip", "link", "set", "eth0.100", "up")
    conf = vlan(business, version, mtu=1400)
    conf["ipam"] = {"type": "host-local", "subnet": "192.168.200.0/24",
                    "dataDir": str(business.data_dir)}
    pod = business.pod()
    result = business.add(conf, pod)
    net1 = details(pod, "net1")
    assert net1["linkinfo"]["info_kind"] == "vlan"
    assert net1["linkinfo"]["info_data"]["id"] == 100
    assert net1["mtu"] == 1400
    assert addresses(pod, "net1") == ["192.168.200.2/24"]
    check = business.check(conf, result, pod)
    if spec.at_least(version, "0.4.0"):
        assert check.ok() is None
        other = business.check({**conf, "vlanId": 101}, result, pod).error(999)
        assert "VLAN ID" in other["msg"]
    else:
        check.error(1)
    assert ping(pod, "192.168.200.1")
    for _ in range(2):
        business.delete(conf, pod)
        assert links(pod) == ["lo"] and business.allocations() == {}


@pytest.mark.usefixtures("with_vlan")
def test_vlan_seed(business: Business) -> None:
    business.host.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer")
    conf = {**json.loads(VLAN_SEED.read_text()), "name": "vlan-network"}
    conf["ipam"]["dataDir"] = str(business.data_dir)
    pod = business.pod()
    result = business.add(conf, pod)
    assert result["ips"] == [{"version": "4", "interface": 0, "address": "10.100.0.10/24",
                              "gateway": "10.100.0.1"}]
    assert details(pod, "net1")["linkinfo"]["info_data"]["id"] == 100
    business.host.run("ip", "link", "del", "eth0")  # DEL without the master
    business.delete(conf, pod)
    assert business.allocations("vlan-network") == {}


# --- on every kernel: validation, the missing module, DEL, STATUS, GC ------------------------

BAD_CONFIGS: list[tuple[str, dict[str, Any], str]] = [
    ("ipvlan", {"mode": "l4"}, "l4"),
    ("ipvlan", {"master": "eth9"}, "eth9"),
    ("ipvlan", {"master": ""}, "master"),  # no master and no default route on the node
    ("ipvlan", {"mtu": 9000}, "1500"),
    ("ipvlan", {"ipam": None}, "ipam"),
    ("vlan", {"master": ""}, "master"),
    ("vlan", {"vlanId": None}, "vlanId"),
    ("vlan", {"vlanId": 4095}, "4095"),
    ("vlan", {"vlanId": -1}, "-1"),
    ("vlan", {"master": "eth9"}, "eth9"),
    ("vlan", {"mtu": 9000}, "1500"),
    ("vlan", {"mtu": -5}, "MTU"),
    ("vlan", {"ipam": None}, "ipam"),
]


@pytest.mark.parametrize(("plugin", "keys", "says"), BAD_CONFIGS, ids=[
    f"{plugin}-" + ",".join(f"{key}={value}" for key, value in keys.items())
    for plugin, keys, _ in BAD_CONFIGS])
def test_bad_config_is_code_7_and_creates_nothing(plugin: str, keys: dict[str, Any], says: str,
                                                  business: Business) -> None:
    conf = (ipvlan if plugin == "ipvlan" else vlan)(business)
    conf.update(keys)
    for key in [k for k, v in keys.items() if v is None]:
        del conf[key]
    pod = business.pod()
    error = business.run("ADD", conf, pod).error(7)
    assert says in error["msg"]
    nothing_left(business, pod)


def test_chained_ipvlan_master_from_prev_result(business: Business) -> None:
    """Chained without `master`, the previous result's single interface is the master."""
    conf = ipvlan(business, ipam=False)
    del conf["master"]
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth7"}],
            "ips": [{"address": "192.168.100.50/16", "interface": 0}]}
    pod = business.pod()
    error = business.run("ADD", {**conf, "prevResult": prev}, pod).error(7)
    assert "eth7" in error["msg"]
    two = {**prev, "interfaces": [{"name": "eth1"}, {"name": "eth7"}]}
    error = business.run("ADD", {**conf, "prevResult": two}, pod).error(7)
    assert "single named interface" in error["msg"]
    nothing_left(business, pod)


@pytest.mark.parametrize("plugin", ["ipvlan", "vlan"])
def test_missing_module_error_creates_nothing(plugin: str, business: Business,
                                              missing_modules: dict[str, str]) -> None:
    """What the plugin says on a kernel without the module (the reference's code, 999)."""
    if plugin not in missing_modules:
        pytest.skip(f"this kernel has the {plugin} module")
    conf = (ipvlan if plugin == "ipvlan" else vlan)(business)
    pod = business.pod()
    error = business.run("ADD", conf, pod).error(999)
    module = "ipvlan" if plugin == "ipvlan" else "8021q"
    assert f"failed to create {plugin} on master 'eth1'" in error["msg"]
    assert f"this kernel has no {module} module" in error["msg"]
    nothing_left(business, pod)


@pytest.mark.parametrize("plugin", ["ipvlan", "vlan"])
def test_del_gives_the_address_back_without_pod_or_master(plugin: str,
                                                          business: Business) -> None:
    """DEL needs neither the namespace, nor the link, nor the master; repeated, it works."""
    conf = (ipvlan if plugin == "ipvlan" else vlan)(business)
    pod = business.pod()
    host_local(business, conf, pod)  # what ADD held
    assert business.allocations() == {"192.168.100.10": "ctr-1"}
    business.delete(conf, pod)  # the namespace without the link
    assert business.allocations() == {}
    host_local(business, conf, pod)
    path = pod.path
    business.namespaces.remove(pod)
    business.host.run("ip", "link", "del", "eth1")
    business.run("DEL", conf, netns=path).ok()
    business.run("DEL", conf, netns=path).ok()
    assert business.allocations() == {}


@pytest.mark.parametrize("plugin", ["ipvlan", "vlan"])
def test_check_refuses_another_kind(plugin: str, business: Business) -> None:
    """CHECK finds a macvlan where the config says ipvlan or vlan."""
    pod = business.pod()
    macvlan_conf = business.conf()
    result = business.add(macvlan_conf, pod)
    conf = (ipvlan if plugin == "ipvlan" else vlan)(business)
    error = business.check(conf, result, pod).error(999)
    assert f"not {plugin}" in error["msg"]
    business.delete(macvlan_conf, pod)


@pytest.mark.parametrize("plugin", ["ipvlan", "vlan"])
def test_status_and_gc_reach_ipam(plugin: str, business: Business) -> None:
    conf = (ipvlan if plugin == "ipvlan" else vlan)(business, "1.1.0")
    host_local(business, conf, business.pod())
    assert business.run("STATUS", conf).ok() is None
    business.run("GC", {**conf, "cni.dev/valid-attachments": []}).ok()
    assert business.allocations() == {}
