"""bandwidth chained after our bridge, in sandbox namespaces: measured rates both ways, every
spec version, CHECK, DEL in every circumstance, GC, and bad input.

Pods are made by the bridge plugin (host-local a real delegate on CNI_PATH), then bandwidth
runs with bridge's result as prevResult, as a runtime chains them. Throughput is measured
with iperf3 between the shaped pod and a second pod on the same bridge. The machine's own
namespace is never touched.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from typing import Any

import pytest

from pycni import spec
from tests.conftest import PYCNI, Netns, Outcome, cni_env, run_exec
from tests.test_bridge import Node, node

__all__ = ["node"]  # the fixture, shared

RATE = 20_000_000  # bits per second
BURST = 1_000_000  # bits: far above rate/HZ, so tbf holds the rate without starving TCP


def bandwidth_conf(version: str = "1.0.0", prev: Any = None, **keys: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {"cniVersion": version, "name": "net1", "type": "bandwidth", **keys}
    if prev is not None:
        conf["prevResult"] = prev
    return conf


def run(node: Node, command: str, conf: Any, pod: Netns | None, cid: str = "ctr-1") -> Outcome:
    env = cni_env(command, pod.path if pod else "", container_id=cid, path=str(node.cni_bin))
    return run_exec([*PYCNI, "bandwidth"], env, conf, in_ns=node.host)


def host_end(node: Node, pod: Netns) -> str:
    """The host end of the pod's eth0, found by its peer index (legacy results name none)."""
    index = pod.link("eth0")["link_index"]
    return next(link["ifname"] for link in node.host.ip_json("link")
                if link["ifindex"] == index)


def qdisc_kinds(netns: Netns, dev: str) -> set[str]:
    found = json.loads(netns.run("tc", "-j", "qdisc", "show", "dev", dev).stdout or "[]")
    return {q["kind"] for q in found}


def ifbs(netns: Netns) -> list[dict[str, Any]]:
    return [link for link in netns.ip_json("-d", "link")
            if link.get("linkinfo", {}).get("info_kind") == "ifb"]


def address(result: dict[str, Any]) -> str:
    entry = result["ips"][0] if "ips" in result else result["ip4"]
    return str(entry.get("address") or entry["ip"]).split("/")[0]


def shaped_pod(node: Node, version: str = "1.0.0", cid: str = "ctr-1",
               **keys: Any) -> tuple[Netns, Any, Any]:
    """A bridge pod with bandwidth chained after it: (pod, bridge result, bandwidth result)."""
    pod = node.pod()
    conf = node.conf(version)
    prev = node.add(conf, pod, cid)
    shaped = run(node, "ADD", bandwidth_conf(version, prev, **keys), pod, cid).ok()
    return pod, prev, shaped


# --- the rates, measured ---------------------------------------------------------------------

def iperf_rate(server: Netns, client: Netns, server_address: str) -> float:
    """Bits per second the server received over a few seconds (the first one left out)."""
    daemon = subprocess.Popen(["ip", "netns", "exec", server.name, "iperf3", "-s", "-1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):  # until the server listens
            done = client.run("iperf3", "-c", server_address, "-t", "4", "-O", "1", "-J",
                              check=False)
            report = json.loads(done.stdout or "{}")
            if "sum_received" in report.get("end", {}):  # iperf3 -J may exit 0 on refusal
                return float(report["end"]["sum_received"]["bits_per_second"])
            time.sleep(0.1)
        raise AssertionError(f"iperf3 never connected: {done.stdout}")
    finally:
        daemon.kill()
        daemon.wait()


@pytest.mark.skipif(shutil.which("iperf3") is None, reason="needs iperf3")
def test_rates_hold_in_both_directions(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    shaped, prev, _ = shaped_pod(node, ingressRate=RATE, ingressBurst=BURST,
                                 egressRate=RATE // 2, egressBurst=BURST)
    other = node.pod("other")
    other_result = node.add(node.conf(), other, "ctr-2")

    to_pod = iperf_rate(shaped, other, address(prev))
    from_pod = iperf_rate(other, shaped, address(other_result))
    with capsys.disabled():
        print(f"\nbandwidth: to the pod {to_pod / 1e6:.2f} Mbit/s (configured {RATE / 1e6}), "
              f"from the pod {from_pod / 1e6:.2f} Mbit/s (configured {RATE / 2e6})")
    assert 0.9 * RATE <= to_pod <= 1.1 * RATE
    assert 0.9 * RATE / 2 <= from_pod <= 1.1 * RATE / 2


# --- every version ---------------------------------------------------------------------------

@pytest.mark.parametrize("version", spec.ALL)
def test_add_check_del_every_version(version: str, node: Node) -> None:
    pod, prev, shaped = shaped_pod(node, version, ingressRate=RATE, ingressBurst=BURST,
                                   egressRate=RATE, egressBurst=BURST)
    assert shaped == prev  # passed through unchanged
    veth = host_end(node, pod)
    assert {"tbf", "ingress"} <= qdisc_kinds(node.host, veth)
    [ifb] = ifbs(node.host)
    assert ifb["ifname"].startswith("bwp") and len(ifb["ifname"]) == 15
    assert ifb["ifalias"] == "ctr-1/eth0"
    assert "tbf" in qdisc_kinds(node.host, ifb["ifname"])

    conf = bandwidth_conf(version, prev, ingressRate=RATE, ingressBurst=BURST,
                          egressRate=RATE, egressBurst=BURST)
    if spec.at_least(version, "0.4.0"):
        run(node, "CHECK", conf, pod).ok()

    run(node, "DEL", conf, pod).ok()
    assert ifbs(node.host) == []
    assert not {"tbf", "ingress"} & qdisc_kinds(node.host, veth)
    run(node, "DEL", conf, pod).ok()  # twice is fine
    run(node, "DEL", conf, None).ok()  # and without the namespace
    node.delete(node.conf(version), pod)


def test_runtime_config_wins_and_check_sees_the_rate(node: Node) -> None:
    runtime = {"bandwidth": {"ingressRate": RATE // 4, "ingressBurst": BURST}}
    pod, prev, _ = shaped_pod(node, ingressRate=RATE, ingressBurst=BURST,
                              runtimeConfig=runtime)
    assert ifbs(node.host) == []  # the runtime's entry has no egress
    found = json.loads(node.host.run("tc", "-j", "qdisc", "show", "dev",
                                     host_end(node, pod)).stdout)
    tbf = next(q for q in found if q["kind"] == "tbf")
    assert tbf["options"]["rate"] == RATE // 4 // 8  # bytes per second

    run(node, "CHECK", bandwidth_conf(prev=prev, ingressRate=RATE // 4, ingressBurst=BURST),
        pod).ok()
    wrong = run(node, "CHECK", bandwidth_conf(prev=prev, ingressRate=RATE,
                                              ingressBurst=BURST), pod)
    assert "rate" in wrong.error(999)["msg"]


def test_check_finds_a_missing_qdisc_and_ifb(node: Node) -> None:
    keys = {"ingressRate": RATE, "ingressBurst": BURST, "egressRate": RATE,
            "egressBurst": BURST}
    pod, prev, _ = shaped_pod(node, **keys)
    conf = bandwidth_conf(prev=prev, **keys)
    node.host.run("tc", "qdisc", "del", "dev", host_end(node, pod), "root")
    assert "tbf" in run(node, "CHECK", conf, pod).error(999)["msg"]
    run(node, "DEL", conf, pod).ok()
    run(node, "ADD", conf, pod).ok()
    node.host.run("ip", "link", "del", ifbs(node.host)[0]["ifname"])
    assert "ifb" in run(node, "CHECK", conf, pod).error(999)["msg"]


def test_no_limits_pass_the_result_through(node: Node) -> None:
    pod, prev, shaped = shaped_pod(node)
    assert shaped == prev
    assert ifbs(node.host) == []
    assert not {"tbf", "ingress"} & qdisc_kinds(node.host, host_end(node, pod))


# --- DEL and GC ------------------------------------------------------------------------------

def test_del_after_the_pod_is_gone_removes_the_ifb(node: Node) -> None:
    pod, prev, _ = shaped_pod(node, egressRate=RATE, egressBurst=BURST)
    node.delete(node.conf(), pod)
    node.namespaces.remove(pod)
    run(node, "DEL", bandwidth_conf(prev=prev, egressRate=RATE, egressBurst=BURST), pod).ok()
    assert ifbs(node.host) == []


def test_gc_removes_the_ifbs_of_stale_attachments(node: Node) -> None:
    keys = {"egressRate": RATE, "egressBurst": BURST}
    shaped_pod(node, cid="ctr-1", **keys)
    shaped_pod(node, cid="ctr-2", **keys)
    assert len(ifbs(node.host)) == 2
    conf = bandwidth_conf("1.1.0", **keys)
    other_net = {**conf, "name": "net2", "cni.dev/valid-attachments": []}
    run(node, "GC", other_net, None).ok()
    assert len(ifbs(node.host)) == 2  # another network's GC leaves ours alone
    valid = [{"containerID": "ctr-2", "ifname": "eth0"}]
    run(node, "GC", {**conf, "cni.dev/valid-attachments": valid}, None).ok()
    assert [link["ifalias"] for link in ifbs(node.host)] == ["ctr-2/eth0"]


# --- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("keys", [
    {"ingressRate": RATE},
    {"ingressBurst": BURST},
    {"egressRate": RATE},
    {"egressBurst": BURST},
    {"ingressRate": -1, "ingressBurst": BURST},
    {"egressRate": RATE, "egressBurst": -8},
    {"runtimeConfig": {"bandwidth": {"egressRate": RATE}}},
    {"ingressRate": RATE, "ingressBurst": 8 * 2**32},
])
def test_bad_rates_are_refused(keys: dict[str, Any], node: Node) -> None:
    pod = node.pod()
    prev = {"cniVersion": "1.0.0", "interfaces": [], "ips": []}
    run(node, "ADD", bandwidth_conf(prev=prev, **keys), pod).error(7)
    assert ifbs(node.host) == []


def test_prev_result_is_required(node: Node) -> None:
    pod = node.pod()
    outcome = run(node, "ADD", bandwidth_conf(ingressRate=RATE, ingressBurst=BURST), pod)
    assert "chained" in outcome.error(7)["msg"]
