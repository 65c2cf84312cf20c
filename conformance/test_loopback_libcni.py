"""loopback as a runtime drives it: the frozen build through libcni, in every spec version.

Each test runs `dist/cnitool` inside a sandbox host namespace against a sandbox pod namespace
and looks at the pod with `ip -j`, and at libcni's result cache.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from conformance.conftest import DIST_BIN, CniTool
from tests.conftest import Netns

pytestmark = [pytest.mark.conformance, pytest.mark.kernel]

VERSIONS = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]
CHECK_VERSIONS = [v for v in VERSIONS if v != "0.3.1"]  # CHECK arrived in 0.4.0
NETWORK = "lo-net"


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def loopback_conflist(version: str, name: str = NETWORK, plugins: int = 1) -> dict[str, Any]:
    return {"cniVersion": version, "name": name,
            "plugins": [{"type": "loopback"} for _ in range(plugins)]}


def lo_is_up(pod: Netns) -> bool:
    return "UP" in pod.link("lo")["flags"]


def has_ipv6_loopback(pod: Netns) -> bool:
    addresses = pod.ip_json("-6", "addr", "show", "dev", "lo")
    return any(a["local"] == "::1" for link in addresses for a in link.get("addr_info", []))


def assert_loopback_result(result: dict[str, Any], version: str, pod: Netns) -> None:
    """The ADD result of a lone loopback: `lo` in the pod, its loopback addresses."""
    assert result["cniVersion"] == version
    interface = result["interfaces"][0]
    assert interface["name"] == "lo"
    assert interface.get("sandbox") == pod.path
    expected = {"127.0.0.1/8"} | ({"::1/128"} if has_ipv6_loopback(pod) else set())
    assert {ip["address"] for ip in result["ips"]} == expected
    for ip in result["ips"]:
        assert ip.get("interface") == 0
        if version_tuple(version) < (1, 0, 0):  # 0.3.x/0.4.0 results carry the family
            assert ip["version"] == ("6" if ":" in ip["address"] else "4")
        else:
            assert "version" not in ip


@pytest.mark.parametrize("version", VERSIONS)
def test_add_check_del(cnitool: CniTool, pod_ns: Netns, version: str) -> None:
    cnitool.write_conf(loopback_conflist(version))
    assert not lo_is_up(pod_ns)  # a new namespace starts with lo down
    cache = cnitool.result_cache(NETWORK)

    result = cnitool("add", NETWORK, pod_ns.path).ok()
    assert_loopback_result(result, version, pod_ns)
    assert lo_is_up(pod_ns)
    assert cache.is_file(), f"libcni cached no result at {cache}"
    assert json.loads(cache.read_text())["containerId"] == cnitool.container_id

    check = cnitool("check", NETWORK, pod_ns.path)
    if version in CHECK_VERSIONS:
        check.ok()
    else:
        message = check.failed()  # libcni refuses before it runs the plugin
        assert f'configuration version "{version}" does not support the CHECK command' in message

    cnitool("del", NETWORK, pod_ns.path).ok()
    assert not lo_is_up(pod_ns)
    assert not cache.exists(), "libcni kept the cached result after DEL"

    cnitool("del", NETWORK, pod_ns.path).ok()  # DEL forgives: twice is fine


@pytest.mark.parametrize("version", VERSIONS)
def test_chained_twice_returns_the_first_result(cnitool: CniTool, pod_ns: Netns,
                                                version: str) -> None:
    cnitool.write_conf(loopback_conflist(version), "10-single.conflist")
    cnitool.write_conf(loopback_conflist(version, "lo-chain", plugins=2), "20-chain.conflist")
    alone = cnitool("add", NETWORK, pod_ns.path).ok()
    cnitool("del", NETWORK, pod_ns.path).ok()

    chained = cnitool("add", "lo-chain", pod_ns.path).ok()

    assert chained == alone
    assert lo_is_up(pod_ns)
    cnitool("del", "lo-chain", pod_ns.path).ok()
    assert not lo_is_up(pod_ns)


STUB_PLUGIN = """#!/bin/sh
# A stand-in first plugin: ADD prints a fixed result, other commands succeed silently.
cat >/dev/null
case "$CNI_COMMAND" in
    ADD) cat "$(dirname "$0")/stub-result.json" ;;
    VERSION) echo '{"cniVersion":"1.0.0","supportedVersions":["0.3.1","0.4.0","1.0.0"]}' ;;
esac
"""


def stub_result(version: str, pod: Netns) -> dict[str, Any]:
    """A result no loopback would build, so passing it through is visible."""
    address: dict[str, Any] = {"interface": 0, "address": "10.244.0.5/24",
                               "gateway": "10.244.0.1"}
    if version_tuple(version) < (1, 0, 0):
        address["version"] = "4"
    return {
        "cniVersion": version,
        "interfaces": [{"name": "eth0", "mac": "0a:58:0a:f4:00:05", "sandbox": pod.path}],
        "ips": [address],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.0.1"}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["cluster.local"]},
    }


@pytest.mark.parametrize("version", VERSIONS)
def test_chained_after_another_plugin_passes_prev_result_through(
        cnitool: CniTool, pod_ns: Netns, scratch_dir: Path, version: str) -> None:
    stub_dir = scratch_dir / "stub"
    stub_dir.mkdir()
    (stub_dir / "stub").write_text(STUB_PLUGIN)
    (stub_dir / "stub").chmod(0o755)
    expected = stub_result(version, pod_ns)
    (stub_dir / "stub-result.json").write_text(json.dumps(expected))
    cnitool.write_conf({"cniVersion": version, "name": "chain",
                        "plugins": [{"type": "stub"}, {"type": "loopback"}]})
    cni_path = f"{stub_dir}:{DIST_BIN}"

    result = cnitool("add", "chain", pod_ns.path, CNI_PATH=cni_path).ok()

    assert result == expected
    assert lo_is_up(pod_ns)
    cnitool("del", "chain", pod_ns.path, CNI_PATH=cni_path).ok()


@pytest.mark.parametrize("version", CHECK_VERSIONS)
def test_check_fails_when_lo_was_set_down(cnitool: CniTool, pod_ns: Netns,
                                          version: str) -> None:
    cnitool.write_conf(loopback_conflist(version))
    cnitool("add", NETWORK, pod_ns.path).ok()
    pod_ns.run("ip", "link", "set", "lo", "down")

    message = cnitool("check", NETWORK, pod_ns.path).failed()

    assert re.search(r"\blo\b", message), f"the error does not name the interface: {message}"
    cnitool("del", NETWORK, pod_ns.path).ok()


@pytest.mark.parametrize("version", VERSIONS)
def test_single_plugin_conf_file(cnitool: CniTool, pod_ns: Netns, version: str) -> None:
    cnitool.write_conf({"cniVersion": version, "name": NETWORK, "type": "loopback"},
                       "10-lo.conf")

    result = cnitool("add", NETWORK, pod_ns.path).ok()
    assert_loopback_result(result, version, pod_ns)
    assert lo_is_up(pod_ns)
    if version in CHECK_VERSIONS:
        cnitool("check", NETWORK, pod_ns.path).ok()
    cnitool("del", NETWORK, pod_ns.path).ok()
    assert not lo_is_up(pod_ns)
    assert not cnitool.result_cache(NETWORK).exists()
