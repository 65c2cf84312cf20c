"""macvlan, host-device, static, tuning, bandwidth, portmap, loopback, ipvlan and vlan against
the reference plugins (Debian's containernetworking-plugins 1.1.1), through libcni, with the
same configurations.

Each case runs twice, in twin sandboxes (each its own "host" and "pod" namespace, prepared
alike: an uplink veth pair as the macvlan/ipvlan/vlan master, a veth end for host-device):
once with CNI_PATH=/usr/lib/cni, once with CNI_PATH=dist/bin, with the same network name and
container ID. Per aspect the test compares the ADD result (random names and MACs masked), the
pod's and the host's kernel state (`conformance.kernelstate`: links and their kind, mode, MTU,
flags, master; addresses; routes; sysctls; qdiscs and filters; iptables, ip6tables and nft),
CHECK, and what DEL leaves. The bridge itself is compared in test_bridge_reference.py; here it
is only the first plugin of the chained cases.

libcni re-serializes results, so the plugins' own output is compared too, exec'ing each
plugin of the chain directly with the previous one's output as `prevResult`.

Each difference is either a bug of ours (an `xfail(strict=True)` naming it, in KNOWN_BUGS) or
a deliberate one listed in docs/differences.md and shown by a test of its own below: a whole
(aspect, case) in DELIBERATE, or a detail every comparison leaves out (the txqueuelen the
reference zeroes, the IFB's alias, the sysctls our tuning restores, empty firewall tables).
After DEL the links' carrier and operational state are not compared: the kernel updates them
asynchronously.

The runs are started together on first use (Runs), WORKERS at a time, each in its own
namespaces; ipvlan and vlan skip, naming the module, where the kernel cannot create them.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conformance.conftest import DIST_BIN, CniTool, missing_build
from conformance.kernelstate import (
    MAC_TEXT,
    VETH_NAME,
    Masks,
    aspect_params,
    differences,
    settle_dad,
    snapshot,
    version_params,
)
from tests.conftest import IS_ROOT, Netns, NetnsFactory, cni_env, run_exec

pytestmark = [pytest.mark.conformance, pytest.mark.kernel]

REFERENCE_BIN = Path("/usr/lib/cni")
SIDES = {"reference": REFERENCE_BIN, "ours": DIST_BIN}
VERSIONS = ["0.4.0", "1.0.0"]
NETWORK = "diffnet"
UPLINK, UPLINK_PEER = "uplink0", "uplink1"  # the master of macvlan, ipvlan, vlan
DEVICE, DEVICE_PEER = "hostdev0", "hostdev1"  # what host-device moves into the pod
TUNED_MAC = "c2:00:00:00:10:01"
PORT_MAPPINGS = {"portMappings": [
    {"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"},
    {"hostPort": 18053, "containerPort": 53, "protocol": "udp"}]}


def host_local(workdir: Path, *ranges: tuple[str, str]) -> dict[str, Any]:
    return {"type": "host-local", "dataDir": str(workdir / "ipam"),
            "ranges": [[{"subnet": subnet, "gateway": gateway}] for subnet, gateway in ranges],
            "routes": [{"dst": "0.0.0.0/0"}]}


def bridge(workdir: Path) -> dict[str, Any]:
    return {"type": "bridge", "bridge": "cni0", "isGateway": True,
            "ipam": host_local(workdir, ("10.24.0.0/24", "10.24.0.1"))}


def macvlan(mode: str, ipam: dict[str, Any] | None, **keys: Any) -> dict[str, Any]:
    plugin = {"type": "macvlan", "master": UPLINK, "mode": mode, **keys}
    if ipam:
        plugin["ipam"] = ipam
    return plugin


STATIC = {"type": "static",
          "addresses": [{"address": "10.23.1.5/24", "gateway": "10.23.1.1"},
                        {"address": "fd23:1::5/64", "gateway": "fd23:1::1"}],
          "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.0.2.0/24", "gw": "10.23.1.254"},
                     {"dst": "::/0"}],
          "dns": {"nameservers": ["10.23.1.53"], "domain": "example.test",
                  "search": ["example.test"]}}


def make_uplink(host: Netns, pod: Netns) -> None:
    host.run("ip", "link", "add", UPLINK, "type", "veth", "peer", "name", UPLINK_PEER)
    for name in (UPLINK, UPLINK_PEER):
        host.run("ip", "link", "set", name, "up")


def make_device(host: Netns, pod: Netns) -> None:
    host.run("ip", "link", "add", DEVICE, "mtu", "1450", "type", "veth", "peer", "name",
             DEVICE_PEER)
    host.run("ip", "link", "set", DEVICE_PEER, "up")


@dataclass(frozen=True)
class Case:
    """One configuration: its plugins (given the side's scratch directory), how both
    sandboxes are prepared, and what the runtime passes."""

    plugins: Callable[[Path], list[dict[str, Any]]]
    setup: Callable[[Netns, Netns], None] = make_uplink
    ifname: str = "eth0"
    cap_args: dict[str, Any] | None = None
    module: tuple[str, str] | None = None  # (link kind, kernel module) the case needs
    extra_sysctls: tuple[str, ...] = ()
    keep_macs: tuple[str, ...] = ()
    with_check: bool = True


CASES: dict[str, Case] = {
    "macvlan-bridge": Case(lambda w: [macvlan("bridge", host_local(
        w, ("10.23.0.0/24", "10.23.0.1"), ("fd23::/64", "fd23::1")), mtu=1400)]),
    "macvlan-private-static": Case(lambda w: [macvlan("private", STATIC)]),
    "macvlan-l2": Case(lambda w: [macvlan("bridge", None)]),
    "host-device": Case(lambda w: [{
        "type": "host-device", "device": DEVICE, "dataDir": str(w / "host-device"),
        "ipam": host_local(w, ("10.25.0.0/24", "10.25.0.1"))}], setup=make_device),
    "tuning-macvlan": Case(lambda w: [
        macvlan("bridge", host_local(w, ("10.23.0.0/24", "10.23.0.1"))),
        {"type": "tuning", "dataDir": str(w / "tuning"), "mtu": 1300, "mac": TUNED_MAC,
         "promisc": True, "sysctl": {"net.ipv4.conf.eth0.arp_filter": "1",
                                     "net.core.somaxconn": "512"}}],
        extra_sysctls=("ipv4/conf/eth0/arp_filter",), keep_macs=(TUNED_MAC,)),
    "tuning-bridge": Case(lambda w: [
        bridge(w),
        {"type": "tuning", "dataDir": str(w / "tuning"), "mtu": 1400, "promisc": True,
         "allmulti": True, "sysctl": {"net.ipv4.conf.eth0.arp_filter": "1"}}],
        setup=lambda host, pod: None, extra_sysctls=("ipv4/conf/eth0/arp_filter",)),
    "bandwidth-bridge": Case(lambda w: [
        bridge(w),
        {"type": "bandwidth", "ingressRate": 1000000, "ingressBurst": 100000,
         "egressRate": 2000000, "egressBurst": 200000}], setup=lambda host, pod: None),
    "portmap-bridge": Case(lambda w: [
        bridge(w), {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}],
        setup=lambda host, pod: None, cap_args=PORT_MAPPINGS),
    "loopback": Case(lambda w: [{"type": "loopback"}], setup=lambda host, pod: None,
                     ifname="lo"),
    "ipvlan": Case(lambda w: [{"type": "ipvlan", "master": UPLINK, "mode": "l2",
                               "ipam": host_local(w, ("10.26.0.0/24", "10.26.0.1"))}],
                   module=("ipvlan", "ipvlan")),
    "vlan": Case(lambda w: [{"type": "vlan", "master": UPLINK, "vlanId": 100, "mtu": 1400,
                             "ipam": host_local(w, ("10.27.0.0/24", "10.27.0.1"))}],
                 module=("vlan", "8021q")),
}

ASPECTS = ["result", "pod_links", "pod_addresses", "pod_routes", "pod_sysctls", "pod_qdiscs",
           "host_links", "host_addresses", "host_routes", "host_sysctls", "host_qdiscs",
           "firewall", "check", "del", "del_again", "del_pod", "del_host"]

BRIDGE_CASES = {"tuning-bridge", "bandwidth-bridge", "portmap-bridge"}
# Links whose txqueuelen the reference sets to 0 (Go's zero value sent as IFLA_TXQLEN) and
# ours leaves at the kernel's default: a deliberate difference, left out of every comparison
# and shown by test_txqueuelen_is_the_kernel_default. The bridge's veth pair is
# test_bridge_reference.py's.
TXQLEN_ZERO_KINDS = {"macvlan", "ipvlan", "vlan", "ifb"}
# Sysctls our tuning puts back on DEL and the reference leaves (test_tuning_restores_sysctls).
TUNED_SYSCTLS = {"tuning-macvlan": ("core/somaxconn",)}
# (aspect, case) compared by their own tests below, as docs/differences.md describes them.
DELIBERATE = {("result", "bandwidth-bridge"), ("result", "loopback"),
              ("host_qdiscs", "bandwidth-bridge"), ("check", "portmap-bridge"),
              ("del_again", "host-device"), ("del_host", "host-device")}

# (aspect, case) -> why ours differs: a bug, to fix in ours. None known.
KNOWN_BUGS: dict[tuple[str, str], str] = {}


def params() -> Iterator[Any]:
    return aspect_params(ASPECTS, CASES, VERSIONS, DELIBERATE, KNOWN_BUGS,
                         lambda aspect, case: aspect != "check" or CASES[case].with_check)


# --- running both sides ---------------------------------------------------------------------

def conflist(case: str, version: str, workdir: Path) -> dict[str, Any]:
    return {"cniVersion": version, "name": NETWORK, "plugins": CASES[case].plugins(workdir)}


def masks_for(case: str) -> Masks:
    return Masks(keep_macs=CASES[case].keep_macs)


def masked_result(result: Any, pod: Netns, masks: Masks) -> Any:
    """The result with what is random per run masked: veth names, MACs (but a MAC the case
    sets), the pod namespace's path."""
    if not isinstance(result, dict):
        return result
    result = json.loads(json.dumps(result))
    for interface in result.get("interfaces", []):
        if "mac" in interface:
            interface["mac"] = (masks.mac(interface["mac"])
                                if MAC_TEXT.fullmatch(interface["mac"]) else "<bad mac>")
        if VETH_NAME.match(interface.get("name", "")):
            interface["name"] = "<veth>"
        if interface.get("sandbox") == pod.path:
            interface["sandbox"] = "<pod>"
    return result


def allocations(workdir: Path) -> list[str]:
    """host-local's allocation files (`<dataDir>/<network>/<address>`)."""
    return sorted(path.name for path in (workdir / "ipam").glob("*/*")
                  if path.is_file() and (":" in path.name or path.name.count(".") == 3))


def look(case: str, host: Netns, pod: Netns) -> dict[str, Any]:
    masks, extra = masks_for(case), CASES[case].extra_sysctls
    return {"host": snapshot(host.name, masks), "pod": snapshot(pod.name, masks, extra)}


def run_side(side: str, case: str, version: str, container_id: str,
             workdir: Path) -> dict[str, Any]:
    """ADD, look, CHECK, DEL, look, DEL again: one side, in its own fresh namespaces."""
    spec = CASES[case]
    factory = NetnsFactory()
    try:
        host, pod = factory(f"{side[:3]}-host"), factory(f"{side[:3]}-pod")
        spec.setup(host, pod)
        tool = CniTool(host, workdir, cni_path=SIDES[side])
        tool.container_id = container_id
        tool.write_conf(conflist(case, version, workdir))
        env = {"CAP_ARGS": json.dumps(spec.cap_args)} if spec.cap_args else {}
        before = look(case, host, pod)
        add = tool("add", NETWORK, pod.path, ifname=spec.ifname, **env)
        settle_dad(host.name, pod.name)
        added = look(case, host, pod)
        added_allocations = allocations(workdir)
        check = (tool("check", NETWORK, pod.path, ifname=spec.ifname, **env)
                 if spec.with_check else None)
        delete = tool("del", NETWORK, pod.path, ifname=spec.ifname, **env)
        settle_dad(host.name, pod.name)
        deleted = look(case, host, pod)
        again = tool("del", NETWORK, pod.path, ifname=spec.ifname, **env)
        result = json.loads(add.stdout) if add.status == 0 and add.stdout.strip() else None
        return {"container_id": container_id, "add": (add.status, add.stderr),
                "result": masked_result(result, pod, masks_for(case)),
                "before": before, "added": added, "deleted": deleted,
                "allocations": {"added": added_allocations, "deleted": allocations(workdir)},
                "check": (check.status, check.stderr) if check else None,
                "del": (delete.status, delete.stderr), "del_again": (again.status, again.stderr)}
    finally:
        factory.remove_all()


def exec_chain(side: str, case: str, version: str, workdir: Path) -> list[tuple[str, Any, Any]]:
    """ADD through the chain, each plugin exec'd with the previous one's output as
    `prevResult`, then DEL in reverse, in fresh namespaces: per plugin its type, its ADD
    outcome (result masked) and its DEL outcome."""
    spec = CASES[case]
    factory = NetnsFactory()
    try:
        host, pod = factory(f"{side[:3]}-host"), factory(f"{side[:3]}-pod")
        spec.setup(host, pod)
        extra = {"runtimeConfig": spec.cap_args} if spec.cap_args else {}
        confs, prev, adds = [], None, []
        for plugin in spec.plugins(workdir):
            conf = {"cniVersion": version, "name": NETWORK, **plugin, **extra}
            if prev is not None:
                conf["prevResult"] = prev
            env = cni_env("ADD", pod.path, spec.ifname, "ctr-direct", path=str(SIDES[side]))
            add = run_exec([str(SIDES[side] / plugin["type"])], env, conf, in_ns=host)
            confs.append(conf)
            adds.append(add)
            if add.status != 0:
                break
            prev = add.json()
        deletes: list[Any] = []
        for conf in reversed(confs):
            env = cni_env("DEL", pod.path, spec.ifname, "ctr-direct", path=str(SIDES[side]))
            conf = {**conf, **({"prevResult": prev} if prev is not None else {})}
            deletes.insert(0, run_exec([str(SIDES[side] / conf["type"])], env, conf,
                                       in_ns=host))
        for add in adds:
            if add.status == 0 and add.stdout.strip():
                add.stdout = json.dumps(masked_result(add.json(), pod, masks_for(case)))
        return [(conf["type"], add, delete)
                for conf, add, delete in zip(confs, adds, deletes, strict=True)]
    finally:
        factory.remove_all()


def run_both(case: str, version: str, workdir: Path) -> dict[str, dict[str, Any]]:
    """Both sides through libcni (same container ID), then each chain exec'd directly."""
    container_id = f"ctr-{uuid.uuid4().hex[:12]}"
    both = {side: run_side(side, case, version, container_id,
                           workdir / f"{case}-{version}-{side}") for side in SIDES}
    for side in SIDES:
        both[side]["printed"] = exec_chain(side, case, version,
                                           workdir / f"{case}-{version}-{side}-direct")
    return both


WORKERS = 3


class Runs:
    """Both sides' runs per (case, version). The first use starts them all, WORKERS at a
    time: a run is frozen execs (CPU) and waits for the kernel (IPv6 duplicate address
    detection), so overlapping them cuts the module's time on two cores; every run has its
    own namespaces and directories."""

    def __init__(self, workdir: Path, missing_modules: dict[str, str],
                 wanted: list[tuple[str, str]]) -> None:
        self.workdir, self.missing_modules, self.wanted = workdir, missing_modules, wanted
        self.pool = ThreadPoolExecutor(max_workers=WORKERS)
        self.started: dict[tuple[str, str], Future[dict[str, dict[str, Any]]]] = {}

    def skip_if_unsupported(self, case: str) -> None:
        module = CASES[case].module
        if module and module[0] in self.missing_modules:
            pytest.skip(self.missing_modules[module[0]])

    def start(self, case: str, version: str) -> None:
        if (case, version) not in self.started:
            self.started[case, version] = self.pool.submit(run_both, case, version,
                                                           self.workdir)

    def __call__(self, case: str, version: str) -> dict[str, dict[str, Any]]:
        self.skip_if_unsupported(case)
        self.start(case, version)  # first: the one asked for, then what the others need
        for other, other_version in self.wanted:
            module = CASES[other].module
            if not (module and module[0] in self.missing_modules):
                self.start(other, other_version)
        return self.started[case, version].result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def reference_missing() -> str | None:
    for plugin in ("macvlan", "host-device", "static", "tuning", "bandwidth", "portmap",
                   "loopback", "ipvlan", "vlan", "bridge", "host-local"):
        if not os.access(REFERENCE_BIN / plugin, os.X_OK):
            return (f"{REFERENCE_BIN}/{plugin} is missing: apt-get install "
                    "containernetworking-plugins")
    return None


@pytest.fixture(scope="module")
def both_sides() -> None:
    """Skip unless root, our build and the reference plugins are there (CI: fail)."""
    if not IS_ROOT:
        pytest.skip("needs root to create network namespaces")
    reason = missing_build() or reference_missing()
    if reason:
        if os.environ.get("PYCNI_REQUIRE_BUILD"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def missing_modules(both_sides: None) -> dict[str, str]:
    """Link kinds this kernel cannot create, with the module that would: tried once in a
    sandbox namespace."""
    factory = NetnsFactory()
    try:
        probe = factory("probe")
        probe.run("ip", "link", "add", "probe0", "type", "veth", "peer", "name", "probe1")
        missing = {}
        for spec in CASES.values():
            if spec.module is None:
                continue
            kind, module = spec.module
            arguments = {"ipvlan": ("mode", "l2"), "vlan": ("id", "5")}.get(kind, ())
            done = probe.run("ip", "link", "add", f"probe-{kind}", "link", "probe0",
                             "type", kind, *arguments, check=False)
            if done.returncode:
                missing[kind] = (f"this kernel has no {module} module (cannot create a "
                                 f"{kind} link: {done.stderr.strip()})")
        return missing
    finally:
        factory.remove_all()


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, missing_modules: dict[str, str]) -> Iterator[Runs]:
    """The runs of the (case, version) pairs this session's selected tests use."""
    wanted = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if getattr(item, "module", None) is request.module and callspec is not None:
            pair = (callspec.params.get("case"), callspec.params.get("version", "1.0.0"))
            if pair[0] in CASES and pair not in wanted:
                wanted.append(pair)
    with tempfile.TemporaryDirectory(prefix="pycni-reference-diff-") as workdir:
        started = Runs(Path(workdir), missing_modules, wanted)
        try:
            yield started
        finally:
            started.close()


# --- what each aspect compares ---------------------------------------------------------------

CARRIER_FLAGS = {"NO-CARRIER", "LOWER_UP", "M-DOWN"}


def comparable_links(case: str, links: list[dict[str, Any]],
                     after_del: bool = False) -> list[dict[str, Any]]:
    """Links without the deliberate differences: the txqueuelen the reference zeroes, the
    IFB's alias (ours names the attachment, for GC). After DEL, not the carrier and the
    operational state: the kernel updates them asynchronously (linkwatch) when a veth peer
    or a bridge's last port goes, so they depend on timing, not on the plugin."""
    found = []
    for link in links:
        link = dict(link)
        if link["kind"] in TXQLEN_ZERO_KINDS or (link["kind"] == "veth"
                                                  and case in BRIDGE_CASES):
            del link["txqlen"]
        if link["kind"] == "ifb":
            del link["alias"]
        if after_del:
            link["flags"] = [flag for flag in link["flags"] if flag not in CARRIER_FLAGS]
            del link["operstate"]
        found.append(link)
    return found


def comparable_state(case: str, state: dict[str, Any], after_del: bool = False,
                     pod: bool = False) -> dict[str, Any]:
    """The state without the deliberate differences; not the firewall's empty tables (see
    test_portmap_del_creates_no_empty_table)."""
    state = {key: value for key, value in state.items() if key != "empty_tables"}
    state["links"] = comparable_links(case, state["links"], after_del)
    if after_del and pod:
        state["sysctls"] = {key: value for key, value in state["sysctls"].items()
                            if key not in TUNED_SYSCTLS.get(case, ())}
    return state


def aspect_of(run: dict[str, Any], case: str, aspect: str) -> Any:
    """The part of one side's run that `aspect` compares."""
    added, deleted = run["added"], run["deleted"]
    if aspect == "result":
        return run["result"]
    if aspect == "check":
        return run["check"][0]
    if aspect == "del":
        return {"status": run["del"][0], "allocations": run["allocations"]}
    if aspect == "del_again":
        return run["del_again"][0]
    if aspect == "firewall":
        return {key: added["host"][key] for key in ("iptables", "ip6tables", "nft")}
    if aspect in ("del_pod", "del_host"):
        return comparable_state(case, deleted[aspect[4:]], after_del=True,
                                pod=aspect == "del_pod")
    where, _, what = aspect.partition("_")
    state = comparable_state(case, added[where])
    if what == "qdiscs":
        return {"qdiscs": state["qdiscs"], "filters": state["filters"]}
    return state[what]


# --- the comparisons ------------------------------------------------------------------------

def assert_both_added(both: dict[str, dict[str, Any]]) -> None:
    for side, run in both.items():  # both must work before comparing what they did
        assert run["add"][0] == 0, f"{side} ADD failed: {run['add'][1]}"


@pytest.mark.parametrize(("aspect", "case", "version"), list(params()))
def test_same_as_reference(runs: Runs, aspect: str, case: str, version: str) -> None:
    both = runs(case, version)
    assert_both_added(both)

    ours, reference = (aspect_of(both[side], case, aspect) for side in ("ours", "reference"))

    found = differences(ours, reference)
    assert not found, f"{aspect} of {case} at {version} differs:\n" + "\n".join(found)


@pytest.mark.parametrize("version", version_params(VERSIONS))
@pytest.mark.parametrize("case", list(CASES))
def test_both_work(runs: Runs, case: str, version: str) -> None:
    """Not a comparison: ADD, CHECK, DEL and DEL again succeed on both sides (but where the
    reference fails, see test_portmap_check and test_host_device_del_again)."""
    for side, run in runs(case, version).items():
        assert run["add"][0] == 0, f"{side} ADD failed: {run['add'][1]}"
        if run["check"] is not None and (side, case) != ("reference", "portmap-bridge"):
            assert run["check"][0] == 0, f"{side} CHECK failed: {run['check'][1]}"
        assert run["del"][0] == 0, f"{side} DEL failed: {run['del'][1]}"
        if (side, case) != ("reference", "host-device"):
            assert run["del_again"][0] == 0, (
                f"{side} second DEL failed: {run['del_again'][1]}")


def printed_output(case: str, version: str, side: str, add: Any) -> Any:
    """A plugin's ADD output, without the deliberate differences: the empty DNS the reference
    prints (test_bridge_reference.py's test_empty_dns_is_left_out), the IFB its bandwidth
    appends (test_bandwidth_result_is_passed_through), the `version` ours gives loopback's
    addresses below 1.0.0 (test_loopback_addresses_carry_their_version)."""
    result = add.json() if add.stdout.strip() else None
    if not isinstance(result, dict):
        return result
    result = {k: v for k, v in result.items() if not (k == "dns" and v == {})}
    if side == "reference":
        result["interfaces"] = [i for i in result.get("interfaces", [])
                                if not i["name"].startswith("bwp")] or None
        if result["interfaces"] is None:
            del result["interfaces"]
    if side == "ours" and case == "loopback" and version != "1.0.0":
        result["ips"] = [{k: v for k, v in ip.items() if k != "version"}
                         for ip in result.get("ips", [])]
    return result


@pytest.mark.parametrize("version", version_params(VERSIONS))
@pytest.mark.parametrize("case", list(CASES))
def test_plugin_output_same_as_reference(runs: Runs, case: str, version: str) -> None:
    """What each plugin of the chain prints, exec'd directly (libcni not in between)."""
    both = runs(case, version)
    for side, run in both.items():
        for plugin, add, delete in run["printed"]:
            assert add.status == 0, f"{side} {plugin} ADD failed: {add.stdout} {add.stderr}"
            assert delete.status == 0, (
                f"{side} {plugin} DEL failed: {delete.stdout} {delete.stderr}")
    found = []
    for (plugin, ours, _), (_, reference, _) in zip(both["ours"]["printed"],
                                                     both["reference"]["printed"],
                                                     strict=True):
        found += differences(printed_output(case, version, "ours", ours),
                             printed_output(case, version, "reference", reference),
                             f"{plugin}:")
    assert not found, f"{case} at {version} prints differently:\n" + "\n".join(found)


# --- the deliberate differences (docs/differences.md) ----------------------------------------

@pytest.mark.parametrize("version", version_params(VERSIONS))
def test_bandwidth_result_is_passed_through(runs: Runs, version: str) -> None:
    """The reference's bandwidth appends its IFB to the result's interfaces; ours prints
    `prevResult` unchanged. The rest of the result is the same."""
    both = runs("bandwidth-bridge", version)
    assert_both_added(both)
    ours, reference = both["ours"]["result"], both["reference"]["result"]
    ifb = reference["interfaces"].pop()
    assert ifb["name"].startswith("bwp") and len(ifb["name"]) == 15, ifb
    assert not differences(ours, reference)
    links = {link["name"] for link in both["ours"]["added"]["host"]["links"]}
    assert ifb["name"] in links  # ours has the same IFB, it is only not in the result


@pytest.mark.parametrize("version", version_params(VERSIONS))
def test_loopback_addresses_carry_their_version(runs: Runs, version: str) -> None:
    """Below 1.0.0 each `ips` entry needs `version` ("4" or "6"): ours gives it, the
    reference's loopback leaves it out (libcni then prints it empty)."""
    both = runs("loopback", version)
    assert_both_added(both)
    ours, reference = both["ours"]["result"], both["reference"]["result"]
    if version == "1.0.0":
        assert not differences(ours, reference)
        return
    assert [ip["version"] for ip in ours["ips"]] == ["4", "6"]
    assert [ip.get("version") for ip in reference["ips"]] == ["", ""]
    for ip in (*ours["ips"], *reference["ips"]):
        del ip["version"]
    assert not differences(ours, reference)


@pytest.mark.parametrize("version", version_params(VERSIONS))
def test_bandwidth_redirect_has_one_action(runs: Runs, version: str) -> None:
    """The reference's filter redirecting the pod's traffic to the IFB carries a second
    mirred action after the first (which steals every packet), so it never runs; ours has
    the one that does the work. The qdiscs are the same."""
    both = runs("bandwidth-bridge", version)
    assert_both_added(both)
    ours, reference = (aspect_of(both[side], "bandwidth-bridge", "host_qdiscs")
                       for side in ("ours", "reference"))
    assert not differences(ours["qdiscs"], reference["qdiscs"])
    assert list(ours["filters"]) == list(reference["filters"]) == ["<veth>"]
    ours_lines, reference_lines = ours["filters"]["<veth>"], reference["filters"]["<veth>"]
    assert reference_lines[:len(ours_lines)] == ours_lines
    assert "stolen" in ours_lines[-2]
    dead = [line for line in reference_lines[len(ours_lines):] if line]
    assert len(dead) == 2 and "action order 2: mirred" in dead[0], dead


@pytest.mark.parametrize("version", version_params(VERSIONS))
def test_portmap_check(runs: Runs, version: str) -> None:
    """The reference's CHECK looks for IPv6 rules of an IPv4-only pod and fails; ours checks
    the pod's families and succeeds."""
    both = runs("portmap-bridge", version)
    status, stderr = both["reference"]["check"]
    assert status == 1 and "could not check ipv6 dnat" in stderr, (status, stderr)
    assert both["ours"]["check"][0] == 0, both["ours"]["check"][1]


@pytest.mark.parametrize("version", version_params(VERSIONS))
def test_host_device_del_again(runs: Runs, version: str) -> None:
    """A repeated DEL: the reference looks for CNI_IFNAME in the pod again and fails; ours
    succeeds."""
    both = runs("host-device", version)
    status, stderr = both["reference"]["del_again"]
    assert status == 1 and "Link not found" in stderr, (status, stderr)
    assert both["ours"]["del_again"][0] == 0, both["ours"]["del_again"][1]


@pytest.mark.parametrize("version", version_params(VERSIONS))
def test_host_device_alias_restored(runs: Runs, version: str) -> None:
    """After DEL the reference leaves the device's name as its alias (it kept the name there
    while the device was in the pod); ours restores the alias the device had (none)."""
    both = runs("host-device", version)
    assert_both_added(both)
    ours, reference = (aspect_of(both[side], "host-device", "del_host")
                       for side in ("ours", "reference"))
    device = {side: next(link for link in state["links"] if link["name"] == DEVICE)
              for side, state in (("ours", ours), ("reference", reference))}
    assert device["reference"]["alias"] == DEVICE
    assert device["ours"]["alias"] is None
    device["reference"]["alias"] = None
    assert not differences(ours, reference)


@pytest.mark.parametrize("case", ["macvlan-bridge", "bandwidth-bridge"])
def test_txqueuelen_is_the_kernel_default(runs: Runs, case: str) -> None:
    """The reference's macvlan and bandwidth's IFB get txqueuelen 0 (Go's zero value sent as
    IFLA_TXQLEN); ours keep the kernel's default (1000 for macvlan, 32 for ifb). macvlan
    keeps the `noqueue` qdisc and the IFB gets a tbf with its own limit, so nothing is queued
    differently."""
    both = runs(case, "1.0.0")
    assert_both_added(both)
    kind, where, expected = (("macvlan", "pod", 1000) if case == "macvlan-bridge" else
                             ("ifb", "host", 32))
    for side, txqlen in (("reference", None), ("ours", expected)):  # ip -j omits 0
        state = both[side]["added"][where]
        link = next(link for link in state["links"] if link["kind"] == kind)
        assert link["txqlen"] == txqlen, side
        qdisc = {q["kind"] for q in state["qdiscs"] if q["dev"] == link["name"]}
        assert qdisc == ({"noqueue"} if kind == "macvlan" else {"tbf"}), side


@pytest.mark.parametrize("version", version_params(VERSIONS))
def test_tuning_restores_sysctls(runs: Runs, version: str) -> None:
    """DEL: the reference leaves the namespace-wide sysctl tuning set; ours puts it back."""
    both = runs("tuning-macvlan", version)
    assert_both_added(both)
    for side, after in (("reference", "512"), ("ours", "4096")):
        run = both[side]
        assert run["before"]["pod"]["sysctls"]["core/somaxconn"] == "4096", side
        assert run["added"]["pod"]["sysctls"]["core/somaxconn"] == "512", side
        assert run["deleted"]["pod"]["sysctls"]["core/somaxconn"] == after, side


@pytest.mark.parametrize("version", version_params(VERSIONS))
def test_portmap_del_creates_no_empty_table(runs: Runs, version: str) -> None:
    """The reference's DEL of an IPv4-only pod looks for its IPv6 rules and so creates the
    (empty) ip6tables `nat` table; ours leaves IPv6 alone. An empty table does nothing."""
    both = runs("portmap-bridge", version)
    assert_both_added(both)
    for side, expected in (("reference", ["nat"]), ("ours", [])):
        assert both[side]["added"]["host"]["empty_tables"]["ip6tables"] == [], side
        assert both[side]["added"]["host"]["ip6tables"] == [], side
        assert both[side]["deleted"]["host"]["empty_tables"]["ip6tables"] == expected, side


@pytest.mark.parametrize("version", version_params(VERSIONS))
def test_ifb_alias_names_the_attachment(runs: Runs, version: str) -> None:
    """Our IFB carries `<containerID>/<ifname>` as its alias (GC finds the attachment by
    it); the reference's has none."""
    both = runs("bandwidth-bridge", version)
    assert_both_added(both)
    for side, alias in (("reference", None), ("ours", f"{both['ours']['container_id']}/eth0")):
        ifb = next(link for link in both[side]["added"]["host"]["links"]
                   if link["kind"] == "ifb")
        assert ifb["alias"] == alias, side
