"""bridge (and cnv-bridge) as a runtime drives it: the frozen build through libcni, with
host-local IPAM, in every spec version libcni speaks (1.1.0 through cnitool's shim).

cnitool runs inside a sandbox host namespace; pods are other sandbox namespaces. IPAM keeps
its state in the test's scratch directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conformance.bridgelib import BRIDGE, NETWORK, bridge_conflist, pod_addresses
from conformance.conftest import CniTool
from tests.conftest import REPO, Netns, NetnsFactory

pytestmark = [pytest.mark.conformance, pytest.mark.kernel]

VERSIONS = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]
CHECK_VERSIONS = [v for v in VERSIONS if v != "0.3.1"]  # CHECK arrived in 0.4.0
IFNAME = "eth0"
GATEWAY = "10.22.0.1"
SEEDS = REPO / "tests" / "seeds"


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def conflist(version: str, scratch_dir: Path, plugin_type: str = "bridge") -> dict[str, Any]:
    return bridge_conflist(version, scratch_dir / "ipam", plugin_type=plugin_type,
                           isGateway=True, ipMasq=True, hairpinMode=True, mtu=1400)


def assert_bridge_result(result: dict[str, Any], version: str, pod: Netns) -> None:
    """Three interfaces (bridge, host veth, pod interface in its sandbox), IPs pointing at
    the pod interface, in the config's version."""
    assert result["cniVersion"] == version
    bridge, veth, inside = result["interfaces"]
    assert bridge["name"] == BRIDGE and "sandbox" not in bridge
    assert veth["name"].startswith("veth") and "sandbox" not in veth
    assert inside == {"name": IFNAME, "mac": pod.link(IFNAME)["address"], "sandbox": pod.path}
    assert [ip["interface"] for ip in result["ips"]] == [2]
    (ip,) = result["ips"]
    assert ip["address"] == "10.22.0.2/24" and ip["gateway"] == GATEWAY
    if version_tuple(version) < (1, 0, 0):
        assert ip["version"] == "4"
    else:
        assert "version" not in ip


def pod_ipv4(pod: Netns) -> list[str]:
    return [f"{a['local']}/{a['prefixlen']}" for entry in pod.ip_json("-4", "addr", "show")
            for a in entry.get("addr_info", []) if entry["ifname"] == IFNAME]


def ping(source: Netns, address: str) -> bool:
    """A few pings from inside `source`; True when one came back."""
    done = source.run("ping", "-c", "3", "-i", "0.2", "-w", "10", address, check=False)
    return done.returncode == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_add_check_del(cnitool: CniTool, pod_ns: Netns, host_ns: Netns, scratch_dir: Path,
                       version: str) -> None:
    cnitool.write_conf(conflist(version, scratch_dir))
    cache = cnitool.result_cache(NETWORK, IFNAME)

    result = cnitool("add", NETWORK, pod_ns.path, ifname=IFNAME).ok()

    assert_bridge_result(result, version, pod_ns)
    assert pod_ipv4(pod_ns) == ["10.22.0.2/24"]
    assert pod_ns.link(IFNAME)["mtu"] == 1400
    bridge = host_ns.link(BRIDGE)
    assert bridge["address"] == result["interfaces"][0]["mac"]
    port = host_ns.link(result["interfaces"][1]["name"])
    assert port["master"] == BRIDGE and port["address"] == result["interfaces"][1]["mac"]
    assert cache.is_file(), f"libcni cached no result at {cache}"

    check = cnitool("check", NETWORK, pod_ns.path, ifname=IFNAME)
    if version in CHECK_VERSIONS:
        check.ok()
    else:
        message = check.failed()  # libcni refuses before it runs the plugin
        assert f'configuration version "{version}" does not support the CHECK command' in message

    cnitool("del", NETWORK, pod_ns.path, ifname=IFNAME).ok()
    assert IFNAME not in [link["ifname"] for link in pod_ns.ip_json("link", "show")]
    assert host_ns.link(BRIDGE)["ifname"] == BRIDGE, "DEL must leave the bridge"
    assert not [link for link in host_ns.ip_json("link", "show")
                if link.get("master") == BRIDGE], "the host veth outlived DEL"
    assert "CNI-" not in host_ns.run("iptables-save", "-t", "nat").stdout
    assert not cache.exists(), "libcni kept the cached result after DEL"

    cnitool("del", NETWORK, pod_ns.path, ifname=IFNAME).ok()  # DEL forgives: twice is fine


@pytest.mark.parametrize("version", CHECK_VERSIONS)
def test_check_fails_when_the_pod_address_is_gone(cnitool: CniTool, pod_ns: Netns,
                                                  scratch_dir: Path, version: str) -> None:
    cnitool.write_conf(conflist(version, scratch_dir))
    cnitool("add", NETWORK, pod_ns.path, ifname=IFNAME).ok()
    pod_ns.run("ip", "addr", "del", "10.22.0.2/24", "dev", IFNAME)

    message = cnitool("check", NETWORK, pod_ns.path, ifname=IFNAME).failed()

    assert "10.22.0.2" in message, message
    cnitool("del", NETWORK, pod_ns.path, ifname=IFNAME).ok()


@pytest.mark.parametrize("version", VERSIONS)
def test_two_pods_ping_each_other(cnitool: CniTool, netns_factory: NetnsFactory,
                                  scratch_dir: Path, version: str) -> None:
    cnitool.write_conf(conflist(version, scratch_dir))
    pods = [netns_factory("pod"), netns_factory("pod")]
    addresses = []
    for index, pod in enumerate(pods):
        result = cnitool("add", NETWORK, pod.path, ifname=IFNAME,
                         CNI_CONTAINERID=f"{cnitool.container_id}-{index}").ok()
        addresses.append(pod_addresses(result)[0])
    assert addresses == ["10.22.0.2", "10.22.0.3"]

    assert ping(pods[0], addresses[1]), "pod 0 cannot reach pod 1"
    assert ping(pods[1], addresses[0]), "pod 1 cannot reach pod 0"
    assert ping(pods[0], GATEWAY), "pod 0 cannot reach the bridge"

    for index, pod in enumerate(pods):
        cnitool("del", NETWORK, pod.path, ifname=IFNAME,
                CNI_CONTAINERID=f"{cnitool.container_id}-{index}").ok()


@pytest.mark.parametrize("version", VERSIONS)
def test_cnv_bridge_type(cnitool: CniTool, pod_ns: Netns, scratch_dir: Path,
                         version: str) -> None:
    """`cnv-bridge` is the bridge plugin under KubeVirt's name: the same result."""
    cnitool.write_conf(conflist(version, scratch_dir, plugin_type="cnv-bridge"))

    result = cnitool("add", NETWORK, pod_ns.path, ifname=IFNAME).ok()

    assert_bridge_result(result, version, pod_ns)
    if version in CHECK_VERSIONS:
        cnitool("check", NETWORK, pod_ns.path, ifname=IFNAME).ok()
    cnitool("del", NETWORK, pod_ns.path, ifname=IFNAME).ok()
    assert IFNAME not in [link["ifname"] for link in pod_ns.ip_json("link", "show")]
    cnitool("del", NETWORK, pod_ns.path, ifname=IFNAME).ok()


def test_cnv_bridge_seed(cnitool: CniTool, pod_ns: Netns, host_ns: Netns) -> None:
    """The users' KubeVirt attachment, unchanged: L2 only on `dev-bridge`, MAC spoof check."""
    seed = json.loads((SEEDS / "nad-dev-bridge.cnv-bridge.json").read_text())
    cnitool.write_conf(seed, "10-dev-bridge.conf")
    network, bridge = seed["name"], seed["bridge"]

    result = cnitool("add", network, pod_ns.path, ifname=IFNAME).ok()

    assert result["cniVersion"] == seed["cniVersion"]
    assert [i["name"] for i in result["interfaces"]][::2] == [bridge, IFNAME]
    assert not result.get("ips")
    assert "UP" in pod_ns.link(IFNAME)["flags"]
    assert host_ns.link(result["interfaces"][1]["name"])["master"] == bridge
    rules = host_ns.run("nft", "list", "table", "bridge", "nat").stdout
    assert result["interfaces"][2]["mac"] in rules, "no MAC spoof check rule"

    cnitool("del", network, pod_ns.path, ifname=IFNAME).ok()
    rules = host_ns.run("nft", "list", "table", "bridge", "nat", check=False).stdout
    assert result["interfaces"][2]["mac"] not in rules, "the spoof check outlived DEL"
    cnitool("del", network, pod_ns.path, ifname=IFNAME).ok()
