"""Crash safety: an ADD killed with SIGKILL right after any of its side effects, then DEL (or,
once the pod is gone, GC with an empty valid list), leaves the node exactly as it was.

Each scenario runs on a sandbox node (a "host" namespace) with state directories under the
test's tmp path and CNI_PATH holding our plugins as programs, so delegates (host-local) run
as separate processes as a runtime would have them. A warm-up ADD+DEL first makes what a
node keeps between pods (the bridge, the shared firewall chains, lock files): that is the
"before". A traced ADD then numbers every side effect of the whole run (`pycni.faults`),
delegates included. For each number N: a fresh pod, an ADD killed at point N, then DEL, and
the node's kernel state (`conformance.kernelstate.snapshot`: links, addresses, routes,
sysctls, qdiscs, filters, iptables, nftables) and state files must equal the before; a
normal ADD then gets the first address again (IPAM ranges hold one address, so a leaked
allocation would make it fail).

The default run kills a spread of points in each scenario (20 points in all, each followed
by DEL, and by GC for a few); `-m stress` kills every point of every scenario, with DEL and
with GC.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conformance import kernelstate
from pycni import faults
from tests.conftest import PYCNI, Netns, NetnsFactory, Outcome, cni_env

VERSION = "1.1.0"
POD_ADDRESS = "10.77.0.2"
State = tuple[dict[str, Any], dict[str, bytes | None]]  # kernel snapshot, state files
SETTLE_TRIES = 6


# --- running a plugin that may be killed ------------------------------------------------------

@dataclass
class Node:
    host: Netns
    namespaces: NetnsFactory
    cni_bin: Path
    tmp: Path

    def run(self, plugin: str, command: str, conf: dict[str, Any], pod: Netns | None,
            at: int = 0, trace: Path | None = None, cid: str = "ctr-crash") -> Outcome:
        """One plugin run in the host namespace, counting its fault points; killed at the
        `at`th when given. The plugin leads a session of its own: the kill reaches only it
        and its delegates."""
        counter = self.tmp / "fault-counter"
        counter.unlink(missing_ok=True)
        env = cni_env(command, netns=pod.path if pod else "", container_id=cid,
                      path=str(self.cni_bin))
        env.update({"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                    faults.COUNTER: str(counter), faults.AT: str(at)})
        if "PYTHONPATH" in os.environ:
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        if trace is not None:
            env[faults.TRACE] = str(trace)
        done = subprocess.run(["ip", "netns", "exec", self.host.name, *PYCNI, plugin],
                              input=json.dumps(conf).encode(), env=env, capture_output=True,
                              timeout=120, start_new_session=True)
        return Outcome(done.returncode, done.stdout.decode(), done.stderr.decode())


def tree(*roots: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and directory (None) under the roots."""
    found: dict[str, bytes | None] = {}
    for root in roots:
        for directory, dirs, files in os.walk(root):
            for name in dirs:
                found[os.path.join(directory, name)] = None
            for name in files:
                path = os.path.join(directory, name)
                found[path] = Path(path).read_bytes()
    return found


def diff(before: Any, after: Any) -> list[str]:
    return kernelstate.differences(after, before)


# --- scenarios --------------------------------------------------------------------------------

@dataclass
class Scenario:
    """A plugin, its config for a pod, what the runtime sets up around a pod, and its state
    directories."""

    name: str
    plugin: str
    node_setup: Callable[[Node], None]
    conf: Callable[[Node, Netns], dict[str, Any]]
    pod_setup: Callable[[Node, Netns], None] = lambda node, pod: None
    state: Callable[[Node], list[Path]] = lambda node: [node.tmp / "ipam"]
    address: str | None = POD_ADDRESS  # what a normal ADD must get
    gc: bool = True  # a pod gone, GC returns the node too
    sample: int = 0  # points killed in the default run (0: all)
    pod_leaves_node_state: bool = False  # pod_setup changes the node (a veth's host end)


def host_local(node: Node) -> dict[str, Any]:
    return {"type": "host-local", "dataDir": str(node.tmp / "ipam"),
            "ranges": [[{"subnet": "10.77.0.0/24", "rangeStart": POD_ADDRESS,
                         "rangeEnd": POD_ADDRESS, "gateway": "10.77.0.1"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}


def bridge_conf(node: Node, pod: Netns) -> dict[str, Any]:
    return {"cniVersion": VERSION, "name": "crashnet", "type": "bridge",
            "bridge": "cnicrash0", "isGateway": True, "ipMasq": True,
            "ipam": host_local(node)}


def macvlan_setup(node: Node) -> None:
    node.host.run("ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth1peer")
    node.host.run("ip", "link", "set", "eth1", "up")
    node.host.run("ip", "link", "set", "eth1peer", "up")


def macvlan_conf(node: Node, pod: Netns) -> dict[str, Any]:
    return {"cniVersion": VERSION, "name": "crashmv", "type": "macvlan", "master": "eth1",
            "mode": "bridge", "ipam": host_local(node)}


def host_device_setup(node: Node) -> None:
    node.host.run("ip", "link", "add", "eth2", "mtu", "1400", "type", "veth", "peer", "name",
                  "eth2peer")
    node.host.run("ip", "link", "set", "eth2", "up")


def host_device_conf(node: Node, pod: Netns) -> dict[str, Any]:
    return {"cniVersion": VERSION, "name": "crashhd", "type": "host-device", "device": "eth2",
            "dataDir": str(node.tmp / "host-device"), "ipam": host_local(node)}


def pod_result(pod: Netns, host_end: str | None = None) -> dict[str, Any]:
    interfaces = [{"name": "eth0", "sandbox": pod.path}]
    if host_end:
        interfaces.insert(0, {"name": host_end})
    return {"cniVersion": VERSION, "interfaces": interfaces,
            "ips": [{"address": f"{POD_ADDRESS}/24", "gateway": "10.77.0.1",
                     "interface": len(interfaces) - 1}]}


def portmap_setup(node: Node) -> None:
    # the node's route towards pods, so portmap's localhost forwarding has a link to enable
    node.host.run("ip", "link", "add", "podnet0", "type", "veth", "peer", "name", "podnet1")
    node.host.run("ip", "addr", "add", "10.77.0.1/24", "dev", "podnet0")
    node.host.run("ip", "link", "set", "podnet0", "up")


def portmap_conf(node: Node, pod: Netns) -> dict[str, Any]:
    return {"cniVersion": VERSION, "name": "crashpm", "type": "portmap", "backend": "iptables",
            "capabilities": {"portMappings": True},
            "runtimeConfig": {"portMappings": [
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": 8053, "containerPort": 53, "protocol": "udp"}]},
            "prevResult": pod_result(pod)}


def bandwidth_pod(node: Node, pod: Netns) -> None:
    """What bridge would have made: a veth, its pod end eth0."""
    node.host.run("ip", "link", "add", host_end(pod), "type", "veth", "peer", "name", "eth0",
                  "netns", pod.name)
    node.host.run("ip", "link", "set", host_end(pod), "up")


def host_end(pod: Netns) -> str:
    return "veth" + pod.name[-8:]  # masked by kernelstate like the plugins' veth names


def bandwidth_conf(node: Node, pod: Netns) -> dict[str, Any]:
    return {"cniVersion": VERSION, "name": "crashbw", "type": "bandwidth",
            "ingressRate": 8_000_000, "ingressBurst": 80_000,
            "egressRate": 8_000_000, "egressBurst": 80_000,
            "prevResult": pod_result(pod, host_end(pod))}


SCENARIOS = {
    "bridge": Scenario("bridge", "bridge", lambda node: None, bridge_conf, sample=8),
    "macvlan": Scenario("macvlan", "macvlan", macvlan_setup, macvlan_conf, sample=3),
    "host-device": Scenario("host-device", "host-device", host_device_setup, host_device_conf,
                            state=lambda node: [node.tmp / "ipam", node.tmp / "host-device"],
                            # a veth end lent to a pod dies with the pod's namespace: only
                            # DEL can give it back
                            gc=False, sample=4),
    "portmap": Scenario("portmap", "portmap", portmap_setup, portmap_conf, state=lambda n: [],
                        address=None, sample=3),
    "bandwidth": Scenario("bandwidth", "bandwidth", lambda node: None, bandwidth_conf,
                          pod_setup=bandwidth_pod, pod_leaves_node_state=True,
                          state=lambda n: [], address=None, sample=3),
}


# --- the procedure ----------------------------------------------------------------------------

@pytest.fixture
def node(host_ns: Netns, netns_factory: NetnsFactory, cni_bin: Path,
         tmp_path: Path) -> Node:
    host_ns.run("ip", "link", "set", "lo", "up")
    return Node(host_ns, netns_factory, cni_bin, tmp_path)


def new_pod(node: Node, scenario: Scenario) -> Netns:
    pod = node.namespaces("pod")
    pod.run("ip", "link", "set", "lo", "up")
    scenario.pod_setup(node, pod)
    return pod


def state_of(node: Node, scenario: Scenario) -> State:
    kernelstate.settle_dad(node.host.name)
    return kernelstate.snapshot(node.host.name), tree(*scenario.state(node))


def stable_state(node: Node, scenario: Scenario) -> State:
    """The node's state once the kernel has settled what it updates on its own after a
    change (a bridge's carrier goes a moment after its last port)."""
    state = state_of(node, scenario)
    for _ in range(SETTLE_TRIES):
        time.sleep(0.3)
        again = state_of(node, scenario)
        if again == state:
            break
        state = again
    return state


def settled_differences(node: Node, scenario: Scenario,
                        before: State) -> list[str]:
    """How the node differs from `before`, given the kernel a moment to settle what it
    updates on its own after a change (a bridge's carrier once its last port left)."""
    for _ in range(SETTLE_TRIES):
        after = state_of(node, scenario)
        problems = diff(before[0], after[0]) + diff(before[1], after[1])
        if not problems:
            break
        time.sleep(0.5)
    return problems


def add_del(node: Node, scenario: Scenario) -> Any:
    """A normal ADD then DEL; the ADD's result."""
    pod = new_pod(node, scenario)
    try:
        result = node.run(scenario.plugin, "ADD", scenario.conf(node, pod), pod).ok()
        node.run(scenario.plugin, "DEL", scenario.conf(node, pod), pod).ok()
    finally:
        node.namespaces.remove(pod)
    return result


def traced_points(node: Node, scenario: Scenario) -> list[str]:
    """The numbered side effects of one ADD, which is then undone by DEL."""
    trace = node.tmp / "trace"
    trace.unlink(missing_ok=True)
    pod = new_pod(node, scenario)
    try:
        node.run(scenario.plugin, "ADD", scenario.conf(node, pod), pod, trace=trace).ok()
        node.run(scenario.plugin, "DEL", scenario.conf(node, pod), pod).ok()
    finally:
        node.namespaces.remove(pod)
    lines = trace.read_text().splitlines()
    assert [int(line.split(" ", 1)[0]) for line in lines] == list(range(1, len(lines) + 1))
    return [line.split(" ", 1)[1] for line in lines]


def kill_and_recover(node: Node, scenario: Scenario, at: int, what: str, gc: bool,
                     before: State) -> None:
    """ADD killed at point `at`, then DEL (or: the pod goes, then GC); the node must be as
    before."""
    pod = new_pod(node, scenario)
    if scenario.pod_leaves_node_state and not gc:
        # With DEL the pod stays, and so does the runtime's part of it on the node (what
        # bandwidth shapes); with GC the pod is gone first.
        before = stable_state(node, scenario)
    conf = scenario.conf(node, pod)
    trace = node.tmp / "trace"
    trace.unlink(missing_ok=True)
    killed = node.run(scenario.plugin, "ADD", conf, pod, at=at, trace=trace)
    where = f"{scenario.name} killed at point {at} ({what})"
    assert killed.status == -9, f"{where}: status {killed.status}\n{killed.stderr}"
    assert killed.stdout == "", f"{where}: printed {killed.stdout!r}"
    last = trace.read_text().splitlines()[-1]
    masks = kernelstate.Masks()
    assert masks.text(last) == masks.text(f"{at} {what}"), (
        f"{where}: the run took another path, last point {last!r}")
    if gc:
        node.namespaces.remove(pod)
        gc_conf = {**conf, "cni.dev/valid-attachments": []}
        gc_conf.pop("prevResult", None)
        node.run(scenario.plugin, "GC", gc_conf, None).ok()
    else:
        node.run(scenario.plugin, "DEL", conf, pod).ok()
    problems = settled_differences(node, scenario, before)
    if not gc:
        node.namespaces.remove(pod)
    assert not problems, f"{where}, then {'GC' if gc else 'DEL'}:\n" + "\n".join(problems)


def chosen(points: int, sample: int) -> list[int]:
    """`sample` points spread over 1..points (all when 0 or more than there are)."""
    if not sample or sample >= points:
        return list(range(1, points + 1))
    return sorted({1 + round(i * (points - 1) / (sample - 1)) for i in range(sample)})


def exercise(node: Node, scenario: Scenario, exhaustive: bool,
             capsys: pytest.CaptureFixture[str]) -> None:
    scenario.node_setup(node)
    first = add_del(node, scenario)  # warm-up: what the node keeps between pods
    points = traced_points(node, scenario)
    before = stable_state(node, scenario)
    kills = 0
    every = exhaustive or not scenario.sample
    for at in (range(1, len(points) + 1) if every else chosen(len(points), scenario.sample)):
        kill_and_recover(node, scenario, at, points[at - 1], gc=False, before=before)
        kills += 1
    if scenario.gc:
        for at in (range(1, len(points) + 1) if exhaustive else chosen(len(points), 3)):
            kill_and_recover(node, scenario, at, points[at - 1], gc=True, before=before)
            kills += 1
    again = add_del(node, scenario)
    if scenario.address:
        assert again["ips"][0]["address"] == first["ips"][0]["address"] == f"{POD_ADDRESS}/24"
    with capsys.disabled():
        print(f"\n{scenario.name}: {len(points)} points, {kills} kills: "
              + "; ".join(f"{n}. {w}" for n, w in enumerate(points, 1)))


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_killed_add_then_del_restores_the_node(name: str, node: Node,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    exercise(node, SCENARIOS[name], exhaustive=False, capsys=capsys)


@pytest.mark.stress
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_point_with_del_and_gc(name: str, node: Node,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    exercise(node, SCENARIOS[name], exhaustive=True, capsys=capsys)


def test_points_cost_nothing_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the variables a point does nothing (and never kills the caller)."""
    monkeypatch.delenv(faults.COUNTER, raising=False)
    faults.point("anything")
    assert not faults.active()


def test_points_count_and_trace_without_killing(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(faults.COUNTER, str(tmp_path / "counter"))
    monkeypatch.setenv(faults.TRACE, str(tmp_path / "trace"))
    monkeypatch.delenv(faults.AT, raising=False)
    faults.point("one")
    faults.point("two")
    assert (tmp_path / "counter").read_text() == "2"
    assert (tmp_path / "trace").read_text() == "1 one\n2 two\n"
