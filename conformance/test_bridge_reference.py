"""bridge against the reference plugin (Debian's containernetworking-plugins 1.1.1), through
libcni, with the same configurations.

Each configuration runs twice, in twin sandboxes (each its own "host" and "pod" namespace,
the bridge named the same): once with CNI_PATH=/usr/lib/cni (the reference bridge and its
host-local), once with CNI_PATH=dist/bin (ours). Both use the same network name and container
ID, so the masquerade chain names (a hash of the two) must match too. The test compares, per
aspect: the ADD result (random veth name and MACs masked), the pod (link, addresses, routes),
the host (bridge, its port), sysctls, the firewall, CHECK, and what DEL leaves.

A run of both sides is done once per configuration and version and then read by every aspect;
each run removes its namespaces before the next starts. libcni re-serializes results (e.g. it
always prints `"dns": {}`), so the plugins' own output is compared too, exec'ing them directly.

Each difference is either a bug of ours (an `xfail(strict=True)` naming it, in KNOWN_BUGS) or
a deliberate one listed in docs/differences.md, shown by a test of its own below.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conformance.bridgelib import (
    BRIDGE,
    DUAL_STACK_RANGES,
    IPV4_RANGES,
    IPV6_RANGES,
    NETWORK,
    bridge_conflist,
)
from conformance.conftest import DIST_BIN, CniTool, missing_build
from conformance.kernelstate import aspect_params, differences, version_params
from tests.conftest import IS_ROOT, Netns, NetnsFactory, cni_env, run_exec

pytestmark = [pytest.mark.conformance, pytest.mark.kernel]

REFERENCE_BIN = Path("/usr/lib/cni")
SIDES = {"reference": REFERENCE_BIN, "ours": DIST_BIN}
VERSIONS = ["0.4.0", "1.0.0"]
IFNAME = "eth0"

# name -> (bridge options, host-local ranges or None for L2 only)
CASES: dict[str, tuple[dict[str, Any], list[Any] | None]] = {
    "ipv4": ({"isGateway": True, "ipMasq": True, "hairpinMode": True, "mtu": 1400},
             IPV4_RANGES),
    "ipv6": ({"isGateway": True, "ipMasq": True}, IPV6_RANGES),
    "dual-stack": ({"isGateway": True, "ipMasq": True}, DUAL_STACK_RANGES),
    "l2": ({}, None),
    "default-gateway": ({"isDefaultGateway": True}, IPV4_RANGES),
}
ASPECTS = ["result", "pod_link", "pod_addresses", "pod_routes", "pod_sysctls", "host_bridge",
           "host_port", "host_routes", "host_sysctls", "nat_rules", "nft_ruleset", "check",
           "del"]
# Compared by their own tests below, as docs/differences.md describes them.
DELIBERATE = {("check", "l2")}

# (aspect, case) -> why ours differs: a bug, to fix in ours. None known.
KNOWN_BUGS: dict[tuple[str, str], str] = {}


def params() -> Iterator[Any]:
    return aspect_params(ASPECTS, CASES, VERSIONS, DELIBERATE, KNOWN_BUGS)


# --- reading the kernel ---------------------------------------------------------------------

VETH_NAME = re.compile(r"^veth[0-9a-f]{8}$")
MAC_TEXT = re.compile(r"\b([0-9a-f]{2}:){5}[0-9a-f]{2}\b")


def link_local(address: str) -> bool:
    return address.lower().startswith("fe80:")


def run_in(ns: Netns, *cmd: str) -> str:
    return ns.run(*cmd, check=False).stdout


def sysctl(ns: Netns, key: str) -> str | None:
    """A sysctl in `ns`; None when it does not exist (e.g. the interface is gone)."""
    done = ns.run("sysctl", "-n", key, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def link_state(ns: Netns, name: str) -> dict[str, Any] | None:
    """What we compare of a link. Not its txqueuelen: a deliberate difference, see
    test_veth_txqueuelen_is_the_kernel_default."""
    found = ns.ip_json("-d", "link", "show", "dev", name) if name in link_names(ns) else []
    if not found:
        return None
    link = found[0]
    return {"kind": link.get("linkinfo", {}).get("info_kind"), "mtu": link["mtu"],
            "flags": sorted(link["flags"]), "operstate": link["operstate"],
            "promiscuity": link.get("promiscuity"), "qdisc": link.get("qdisc")}


def txqlen(ns: Netns, name: str) -> int | None:
    found = ns.ip_json("link", "show", "dev", name) if name in link_names(ns) else []
    return found[0].get("txqlen", 0) if found else None


def link_names(ns: Netns) -> list[str]:
    return [link["ifname"] for link in ns.ip_json("link", "show")]


def address_state(ns: Netns, name: str) -> list[dict[str, Any]]:
    """Addresses without the time-dependent bits (lifetimes, DAD in progress); link-local
    ones (derived from random MACs) reduced to their presence."""
    if name not in link_names(ns):
        return []
    found = []
    for entry in ns.ip_json("addr", "show", "dev", name):
        for addr in entry.get("addr_info", []):
            local = "fe80::<from mac>" if link_local(addr["local"]) else addr["local"]
            found.append({"family": addr["family"], "local": local,
                          "prefixlen": addr["prefixlen"], "broadcast": addr.get("broadcast"),
                          "scope": addr["scope"]})
    return sorted(found, key=json.dumps)


def route_state(ns: Netns) -> list[dict[str, Any]]:
    """Every route of every table (`ip -j route show table all`), veth names and link-local
    addresses masked, kernel flags (`linkdown`, which follows the carrier) left out. Not the
    local routes of link-local addresses: the kernel adds them when duplicate address
    detection ends, so they come and go with timing, not with what a plugin did."""
    routes = []
    for family in ("-4", "-6"):
        for route in ns.ip_json(family, "route", "show", "table", "all"):
            if route.get("type") == "local" and link_local(str(route.get("dst", ""))):
                continue
            route = {k: v for k, v in route.items() if k != "flags"}
            for key in ("dst", "prefsrc", "gateway"):
                if key in route and link_local(str(route[key])):
                    route[key] = "fe80::<from mac>"
            if VETH_NAME.match(str(route.get("dev", ""))):
                route["dev"] = "<veth>"
            routes.append(route)
    return sorted(routes, key=json.dumps)


def settle_dad(*namespaces: Netns, patience: float = 10.0) -> None:
    """Wait (at most `patience` seconds) until no IPv6 address is tentative: the kernel adds
    an address's local routes when its duplicate address detection ends, and the bridge loses
    its carrier at DEL, stopping detection midway, so what both sides leave would depend on
    how fast each side ran. Gives up silently: a difference then shows in the comparison."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        if not any(entry.get("addr_info") for ns in namespaces
                   for entry in ns.ip_json("-6", "addr", "show", "tentative")):
            return
        time.sleep(0.1)


def firewall_text(text: str) -> list[str]:
    """iptables-save / nft output, without timestamps and counters."""
    lines = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        lines.append(re.sub(r"\[\d+:\d+\]", "[-:-]", line))
    return lines


def allocations(data_dir: Path) -> list[str]:
    """host-local's allocation files (`<dataDir>/<network>/<address>`)."""
    return sorted(path.name for path in data_dir.glob("*/*")
                  if path.is_file() and (":" in path.name or path.name.count(".") == 3))


def host_state(host: Netns) -> dict[str, Any]:
    ports = []
    for port in json.loads(run_in(host, "bridge", "-j", "-d", "link", "show") or "[]"):
        ports.append({
            "name": "<veth>" if VETH_NAME.match(port["ifname"]) else port["ifname"],
            "master": port.get("master"), "hairpin": port.get("hairpin"),
            "state": port.get("state"), "isolated": port.get("isolated"),
            "learning": port.get("learning"), "flood": port.get("flood"),
            "link": link_state(host, port["ifname"])})
    bridge = link_state(host, BRIDGE)
    if bridge is not None:
        bridge["addresses"] = address_state(host, BRIDGE)
        bridge["addr_assign_type"] = run_in(
            host, "cat", f"/sys/class/net/{BRIDGE}/addr_assign_type").strip()
    veths = [name for name in link_names(host) if VETH_NAME.match(name)]
    return {"bridge": bridge, "ports": sorted(ports, key=json.dumps),
            "links": sorted("<veth>" if VETH_NAME.match(n) else n for n in link_names(host)),
            "routes": route_state(host),
            "txqlen": [txqlen(host, name) for name in veths]}


HOST_SYSCTLS = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding",
                f"net.ipv6.conf.{BRIDGE}.accept_ra", f"net.ipv6.conf.{BRIDGE}.forwarding",
                f"net.ipv4.conf.{BRIDGE}.forwarding")
POD_SYSCTLS = (f"net.ipv6.conf.{IFNAME}.accept_dad", f"net.ipv6.conf.{IFNAME}.enhanced_dad",
               f"net.ipv4.conf.{IFNAME}.arp_notify", f"net.ipv6.conf.{IFNAME}.disable_ipv6",
               "net.ipv6.conf.lo.disable_ipv6", "net.ipv6.conf.all.disable_ipv6")


def kernel_state(host: Netns, pod: Netns, data_dir: Path) -> dict[str, Any]:
    """Everything an aspect compares, read from the twin's namespaces."""
    return {
        "pod_link": {"links": link_names(pod), IFNAME: link_state(pod, IFNAME)},
        "pod_txqlen": txqlen(pod, IFNAME),
        "pod_addresses": address_state(pod, IFNAME),
        "pod_routes": route_state(pod),
        "pod_sysctls": {key: sysctl(pod, key) for key in POD_SYSCTLS},
        "host": host_state(host),
        "host_sysctls": {key: sysctl(host, key) for key in HOST_SYSCTLS},
        "iptables_nat": firewall_text(run_in(host, "iptables-save", "-t", "nat")),
        "ip6tables_nat": firewall_text(run_in(host, "ip6tables-save", "-t", "nat")),
        "nft_ruleset": firewall_text(run_in(host, "nft", "list", "ruleset")),
        "allocations": allocations(data_dir),
    }


def masked_result(result: Any, pod: Netns) -> Any:
    """The ADD result with what is random per run masked: the host veth's name, MACs, and
    the pod namespace's path (the twins' namespaces differ in name)."""
    if not isinstance(result, dict):
        return result
    result = json.loads(json.dumps(result))
    for interface in result.get("interfaces", []):
        if "mac" in interface:
            interface["mac"] = "<mac>" if MAC_TEXT.fullmatch(interface["mac"]) else "<bad mac>"
        if VETH_NAME.match(interface.get("name", "")):
            interface["name"] = "<veth>"
        if interface.get("sandbox") == pod.path:
            interface["sandbox"] = "<pod>"
    return result


# --- running both sides ---------------------------------------------------------------------

def run_side(side: str, case: str, version: str, container_id: str,
             workdir: Path) -> dict[str, Any]:
    """ADD, look, CHECK, DEL, look, DEL again: one side, in its own fresh namespaces."""
    options, ranges = CASES[case]
    factory = NetnsFactory()
    try:
        host, pod = factory(f"{side[:3]}-host"), factory(f"{side[:3]}-pod")
        data_dir = workdir / "ipam"
        tool = CniTool(host, workdir, cni_path=SIDES[side])
        tool.container_id = container_id
        tool.write_conf(bridge_conflist(version, data_dir if ranges else None, ranges,
                                        **options))
        before = {"host_sysctls": {key: sysctl(host, key) for key in HOST_SYSCTLS}}
        add = tool("add", NETWORK, pod.path, ifname=IFNAME)
        settle_dad(host, pod)
        added = kernel_state(host, pod, data_dir)
        check = tool("check", NETWORK, pod.path, ifname=IFNAME)
        delete = tool("del", NETWORK, pod.path, ifname=IFNAME)
        deleted = kernel_state(host, pod, data_dir)
        again = tool("del", NETWORK, pod.path, ifname=IFNAME)
        result = json.loads(add.stdout) if add.status == 0 and add.stdout.strip() else None
        return {"container_id": container_id, "add_status": add.status,
                "add_stderr": add.stderr, "result": masked_result(result, pod),
                "before": before, "added": added, "check": (check.status, check.stderr),
                "del": (delete.status, delete.stderr),
                "del_again": (again.status, again.stderr),
                "deleted": deleted}
    finally:
        factory.remove_all()


class Runs:
    """Both sides' runs per (case, version), done on first use."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.done: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}

    def __call__(self, case: str, version: str) -> dict[str, dict[str, Any]]:
        if (case, version) not in self.done:
            container_id = f"ctr-{uuid.uuid4().hex[:12]}"
            self.done[case, version] = {
                side: run_side(side, case, version, container_id,
                               self.workdir / f"{case}-{version}-{side}")
                for side in SIDES}
        return self.done[case, version]


@pytest.fixture(scope="module")
def both_sides() -> None:
    """Skip unless root, our build and the reference plugins are there (CI: fail)."""
    if not IS_ROOT:
        pytest.skip("needs root to create network namespaces")
    reason = missing_build() or (None if os.access(REFERENCE_BIN / "bridge", os.X_OK) else
                                 f"{REFERENCE_BIN}/bridge is missing: apt-get install "
                                 "containernetworking-plugins")
    if reason:
        if os.environ.get("PYCNI_REQUIRE_BUILD"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def runs(both_sides: None) -> Iterator[Runs]:
    with tempfile.TemporaryDirectory(prefix="pycni-bridge-reference-") as workdir:
        yield Runs(Path(workdir))


def aspect_of(run: dict[str, Any], aspect: str) -> Any:
    """The part of one side's run that `aspect` compares."""
    added, deleted = run["added"], run["deleted"]
    if aspect == "result":
        return run["result"]
    if aspect in ("pod_link", "pod_addresses", "pod_routes", "pod_sysctls", "host_sysctls"):
        if aspect == "host_sysctls":
            return {"before": run["before"]["host_sysctls"], "after": added[aspect]}
        return added[aspect]
    if aspect == "host_bridge":
        return {"bridge": added["host"]["bridge"], "links": added["host"]["links"]}
    if aspect == "host_port":
        return added["host"]["ports"]
    if aspect == "host_routes":
        return added["host"]["routes"]
    if aspect == "nat_rules":
        return {"iptables": added["iptables_nat"], "ip6tables": added["ip6tables_nat"]}
    if aspect == "nft_ruleset":
        return added["nft_ruleset"]
    if aspect == "check":
        return run["check"][0]
    if aspect == "del":
        return {"status": run["del"][0], "again": run["del_again"][0],
                "allocations_before": added["allocations"] != [],
                # The bridge stays; its state is host_bridge's (addresses included).
                "bridge_stays": deleted["host"]["bridge"] is not None,
                "host": {key: deleted["host"][key] for key in ("links", "ports", "routes")},
                **{key: deleted[key] for key in ("pod_link", "pod_addresses", "pod_routes",
                                                 "iptables_nat", "ip6tables_nat",
                                                 "nft_ruleset", "allocations")}}
    raise AssertionError(f"unknown aspect {aspect}")




# --- the comparisons ------------------------------------------------------------------------

@pytest.mark.parametrize(("aspect", "case", "version"), list(params()))
def test_same_as_reference(runs: Runs, aspect: str, case: str, version: str) -> None:
    both = runs(case, version)
    for side, run in both.items():  # both must work before comparing what they did
        assert run["add_status"] == 0, f"{side} ADD failed: {run['add_stderr']}"

    ours, reference = (aspect_of(both[side], aspect) for side in ("ours", "reference"))

    found = differences(ours, reference)
    assert not found, f"{aspect} of {case} at {version} differs:\n" + "\n".join(found)


@pytest.mark.parametrize("version", version_params(VERSIONS))
@pytest.mark.parametrize("case", list(CASES))
def test_both_work(runs: Runs, case: str, version: str) -> None:
    """Not a comparison: ADD, CHECK, DEL and DEL again succeed on both sides (but the
    reference's CHECK of an L2 network, see test_l2_check)."""
    for side, run in runs(case, version).items():
        assert run["add_status"] == 0, f"{side} ADD failed: {run['add_stderr']}"
        if (side, case) != ("reference", "l2"):
            assert run["check"][0] == 0, f"{side} CHECK failed: {run['check'][1]}"
        assert run["del"][0] == 0, f"{side} DEL failed: {run['del'][1]}"
        assert run["del_again"][0] == 0, f"{side} second DEL failed: {run['del_again'][1]}"


@pytest.mark.parametrize("version", version_params(VERSIONS))
@pytest.mark.parametrize("case", list(CASES))
def test_plugin_output_same_as_reference(both_sides: None, netns_factory: NetnsFactory,
                                         scratch_dir: Path, case: str, version: str) -> None:
    """The ADD result as each bridge prints it, exec'd directly (libcni not in between);
    only the deliberate difference about empty DNS (test_empty_dns_is_left_out) removed."""
    printed = {side: exec_add_del(side, case, version, netns_factory, scratch_dir / side)
               for side in SIDES}
    for side, (add, delete) in printed.items():
        assert add.status == 0, f"{side} ADD failed: {add.stdout} {add.stderr}"
        assert delete.status == 0, f"{side} DEL failed: {delete.stdout} {delete.stderr}"
    ours, reference = (without_empty_dns(printed[side][0].json()) for side in ("ours",
                                                                               "reference"))

    found = differences(ours, reference)
    assert not found, f"{case} at {version} prints differently:\n" + "\n".join(found)


def exec_add_del(side: str, case: str, version: str, netns_factory: NetnsFactory,
                 workdir: Path) -> tuple[Any, Any]:
    """ADD then DEL with `<side>/bridge` exec'd in a fresh host namespace; the ADD's output
    (its result masked) and the DEL's."""
    options, ranges = CASES[case]
    host, pod = netns_factory(f"{side[:3]}-host"), netns_factory(f"{side[:3]}-pod")
    conflist = bridge_conflist(version, workdir / "ipam" if ranges else None, ranges,
                               **options)
    conf = {"cniVersion": version, "name": NETWORK, **conflist["plugins"][0]}
    outcomes = []
    for command in ("ADD", "DEL"):
        env = cni_env(command, pod.path, IFNAME, "ctr-direct", path=str(SIDES[side]))
        outcomes.append(run_exec([str(SIDES[side] / "bridge")], env, conf, in_ns=host))
    add, delete = outcomes
    if add.status == 0:
        add.stdout = json.dumps(masked_result(add.json(), pod))
    return add, delete


def without_empty_dns(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not (k == "dns" and v == {})}


# --- the deliberate differences (docs/differences.md) ----------------------------------------

@pytest.mark.parametrize("version", version_params(VERSIONS))
def test_l2_check(runs: Runs, version: str) -> None:
    """Without IPAM the reference's CHECK execs an IPAM plugin of no name and fails; ours
    checks the interfaces and succeeds."""
    both = runs("l2", version)
    status, stderr = both["reference"]["check"]
    assert status == 1 and "no plugin name provided" in stderr, (status, stderr)
    assert both["ours"]["check"][0] == 0, both["ours"]["check"][1]


@pytest.mark.parametrize("case", list(CASES))
def test_veth_txqueuelen_is_the_kernel_default(runs: Runs, case: str) -> None:
    """The reference sends IFLA_TXQLEN 0 for both veth ends (Go's zero value); ours leaves
    the kernel's 1000. Both ends keep the `noqueue` qdisc, so nothing is queued either way."""
    both = runs(case, "1.0.0")
    for side, expected in (("reference", 0), ("ours", 1000)):
        added = both[side]["added"]
        assert added["pod_txqlen"] == expected, side
        assert added["host"]["txqlen"] == [expected], side
        assert added["pod_link"][IFNAME]["qdisc"] == "noqueue", side
        assert [port["link"]["qdisc"] for port in added["host"]["ports"]] == ["noqueue"], side


@pytest.mark.parametrize("version", version_params(VERSIONS))
def test_empty_dns_is_left_out(both_sides: None, netns_factory: NetnsFactory, scratch_dir: Path,
                               version: str) -> None:
    """host-local gives no DNS: the reference bridge prints `"dns": {}`, ours nothing."""
    printed = {side: exec_add_del(side, "ipv4", version, netns_factory, scratch_dir / side)[0]
               for side in SIDES}
    assert printed["reference"].json()["dns"] == {}
    assert "dns" not in printed["ours"].json()


# --- what both must do -----------------------------------------------------------------------

def test_masquerade_chain_is_named_by_network_and_container(runs: Runs) -> None:
    """The chain is the reference's hash of network name and container ID, on both sides."""
    import hashlib

    both = runs("ipv4", "1.0.0")
    chains = {side: {line.split()[0][1:] for line in run["added"]["iptables_nat"]
                     if line.startswith(":CNI-")} for side, run in both.items()}
    container_id = both["ours"]["container_id"]
    assert container_id == both["reference"]["container_id"]
    digest = hashlib.sha512((NETWORK + container_id).encode()).hexdigest()
    assert chains["ours"] == chains["reference"] == {("CNI-" + digest)[:28]}


def test_forwarding_is_enabled_by_isgateway(runs: Runs) -> None:
    for side, run in runs("dual-stack", "1.0.0").items():
        assert run["added"]["host_sysctls"]["net.ipv4.ip_forward"] == "1", side
        assert run["added"]["host_sysctls"]["net.ipv6.conf.all.forwarding"] == "1", side
