"""loopback in sandbox namespaces, for every spec version."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pycni import spec
from tests.conftest import Netns, Outcome, cni_env

Run = Callable[[str, dict[str, str], Any], Outcome]


def conf(version: str, **extra: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": "lo-net", "type": "loopback", **extra}


def lo_up(pod: Netns) -> bool:
    return "UP" in pod.link("lo")["flags"]


@pytest.mark.parametrize("version", spec.ALL)
def test_add_check_del_del(version: str, pod_ns: Netns, run_plugin: Run) -> None:
    assert not lo_up(pod_ns)
    result = run_plugin("loopback", cni_env("ADD", pod_ns.path, ifname="lo"), conf(version)).ok()
    assert lo_up(pod_ns)
    assert result["cniVersion"] == version
    if spec.at_least(version, "0.3.0"):
        assert result["interfaces"] == [
            {"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": pod_ns.path}]
        addresses = [ip["address"] for ip in result["ips"]]
        assert addresses[0] == "127.0.0.1/8"
        assert all(ip["interface"] == 0 for ip in result["ips"])
        assert all(("version" in ip) == (not spec.at_least(version, "1.0.0"))
                   for ip in result["ips"])
    else:
        assert result["ip4"] == {"ip": "127.0.0.1/8"}

    check = run_plugin("loopback", cni_env("CHECK", pod_ns.path, ifname="lo"), conf(version))
    if spec.at_least(version, "0.4.0"):
        assert check.ok() is None
    else:
        check.error(1)

    for _ in range(2):  # DEL, then DEL again
        run_plugin("loopback", cni_env("DEL", pod_ns.path, ifname="lo"), conf(version)).ok()
        assert not lo_up(pod_ns)


def test_check_reports_lo_down(pod_ns: Netns, run_plugin: Run) -> None:
    run_plugin("loopback", cni_env("ADD", pod_ns.path, ifname="lo"), conf("1.0.0")).ok()
    pod_ns.run("ip", "link", "set", "lo", "down")
    error = run_plugin("loopback", cni_env("CHECK", pod_ns.path, ifname="lo"),
                       conf("1.0.0")).error(999)
    assert "'lo' is down" in error["msg"]


def test_chained_passes_prev_result_through(pod_ns: Netns, run_plugin: Run) -> None:
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": pod_ns.path}],
            "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}]}
    result = run_plugin("loopback", cni_env("ADD", pod_ns.path, ifname="lo"),
                        conf("1.0.0", prevResult=prev)).ok()
    assert result == prev
    assert lo_up(pod_ns)


def test_del_without_netns_or_with_vanished_netns(netns_factory: Any, run_plugin: Run) -> None:
    run_plugin("loopback", cni_env("DEL", ifname="lo"), conf("1.0.0")).ok()
    gone = netns_factory("gone")
    path = gone.path
    netns_factory.remove(gone)
    run_plugin("loopback", cni_env("DEL", path, ifname="lo"), conf("1.0.0")).ok()


def test_works_on_lo_whatever_the_ifname(pod_ns: Netns, run_plugin: Run) -> None:
    result = run_plugin("loopback", cni_env("ADD", pod_ns.path, ifname="eth0"),
                        conf("1.0.0")).ok()
    assert result["interfaces"][0]["name"] == "lo" and lo_up(pod_ns)
    run_plugin("loopback", cni_env("CHECK", pod_ns.path, ifname="eth0"), conf("1.0.0")).ok()
    run_plugin("loopback", cni_env("DEL", pod_ns.path, ifname="eth0"), conf("1.0.0")).ok()
    assert not lo_up(pod_ns)


def test_add_refuses_non_loopback_address(pod_ns: Netns, run_plugin: Run) -> None:
    pod_ns.run("ip", "addr", "add", "10.9.9.9/32", "dev", "lo")
    error = run_plugin("loopback", cni_env("ADD", pod_ns.path, ifname="lo"),
                       conf("1.0.0")).error(999)
    assert "non-loopback address '10.9.9.9'" in error["msg"]


def test_status_and_gc(pod_ns: Netns, run_plugin: Run) -> None:
    assert run_plugin("loopback", cni_env("STATUS"), conf("1.1.0")).ok() is None
    gc = conf("1.1.0", **{"cni.dev/valid-attachments": []})
    assert run_plugin("loopback", cni_env("GC"), gc).ok() is None
