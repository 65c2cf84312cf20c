"""Benchmark 50 pods ADDed at once, then DELed at once, on one node: bridge + host-local
through libcni, ours (dist/bin) against the reference (/usr/lib/cni).

    python -m conformance.bench_concurrent [--pods N] [--rounds N] [--out DIR] [--smoke]

Each implementation has its own sandbox node (benchlib.Sandbox: one host namespace and one
namespace per pod; host-local's dataDir and libcni's cache in a temporary directory). A round
starts one `cnitool add` per pod, all released together from a barrier (the machine's cores are
shared by all of them, as when a node starts many pods), then checks every pod has its address
on eth0 and no two pods share one, then DELs all pods at once and looks for what is left: links
on the host other than lo and the bridge, links in the pods other than lo, host-local's
allocation files, masquerade rules (iptables `CNI-` chains, nftables `pycni` rules) and libcni
cache files. Rounds alternate which implementation goes first.

A latency is one `ip netns exec ... cnitool add|del` run as seen from here (exec and libcni
included, equal for both sides); p50/p99 per implementation, and the time until the last pod
was done. Every failure, duplicate, missing address and leftover is counted and reported.

Results: DIR/concurrent-<timestamp>.json and DIR/concurrent-latest.json. Exit status: 0 when
ours had no failure, duplicate, missing address or leftover (the reference's are reported
only), 1 otherwise or when a run could not be made, 2 when the benchmark cannot start.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from conformance import benchlib
from conformance.benchlib import (
    DAEMON,
    IMPLEMENTATIONS,
    REPO,
    RunFailed,
    Sandbox,
    batch_orders,
    machine_info,
    percentile,
    write_results,
)
from conformance.bridgelib import BRIDGE, NETWORK, bridge_conflist, pod_addresses

CNI_VERSION = "1.0.0"
OPTIONS: dict[str, Any] = {"isGateway": True, "ipMasq": True, "hairpinMode": True}
PODS = 50
SMOKE_PODS = 8
CALL_TIMEOUT = 600  # seconds, one cnitool run
# host-local's own files beside the allocations (the reference writes the same).
IPAM_BOOKKEEPING = ("lock", "last_reserved_ip")


# ours exec'd cold, ours served by `pycni daemon` on the node, the reference
SIDES = ("ours", "ours" + DAEMON, "reference")


def conflist(scratch: Path) -> dict[str, Any]:
    return bridge_conflist(CNI_VERSION, scratch / "ipam", **OPTIONS)


@dataclass
class Call:
    """One pod's `cnitool add` or `del`."""

    pod: str
    ok: bool
    ms: float
    output: str  # stdout when it worked, the error when not


@dataclass
class Cycle:
    """One round: every pod ADDed at once, checked, DELed at once, leftovers looked for."""

    adds: list[Call]
    dels: list[Call]
    add_wall_s: float
    del_wall_s: float
    addresses: dict[str, str] = field(default_factory=dict)  # pod -> its result's IPv4
    duplicates: dict[str, list[str]] = field(default_factory=dict)  # address -> pods
    missing: list[str] = field(default_factory=list)  # pods whose eth0 lacks their address
    # Before the DELs, so that "nothing left" means something: masquerade rules and
    # allocation files the ADDs made.
    nat_rules_after_add: int = 0
    ipam_files_after_add: int = 0
    leftovers: dict[str, list[str]] = field(default_factory=dict)

    def failures(self) -> list[str]:
        return [f"{verb} {call.pod}: {call.output}"
                for verb, calls in (("ADD", self.adds), ("DEL", self.dels))
                for call in calls if not call.ok]

    def problems(self) -> int:
        return (len(self.failures()) + len(self.duplicates) + len(self.missing)
                + sum(len(items) for items in self.leftovers.values()))


def run_all(sandbox: Sandbox, verb: str, pods: list[str]) -> tuple[list[Call], float]:
    """`cnitool <verb>` for every pod at once; the calls, and seconds until the last ended."""
    barrier = threading.Barrier(len(pods))

    def one(pod: str) -> Call:
        barrier.wait(timeout=120)
        start = time.perf_counter()
        try:
            done = subprocess.run(sandbox.command(verb, sandbox.network, f"/var/run/netns/{pod}"),
                                  env=sandbox.environment(pod), capture_output=True, text=True,
                                  timeout=CALL_TIMEOUT)
        except subprocess.TimeoutExpired:
            return Call(pod, False, (time.perf_counter() - start) * 1000,
                        f"timed out after {CALL_TIMEOUT} s")
        elapsed = (time.perf_counter() - start) * 1000
        if done.returncode != 0:
            return Call(pod, False, elapsed, f"exited {done.returncode}: "
                                             f"{done.stderr.strip() or done.stdout.strip()}")
        return Call(pod, True, elapsed, done.stdout)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(pods)) as pool:
        calls = list(pool.map(one, pods))
    return calls, time.perf_counter() - start


def ip_json(netns: str, *args: str) -> list[dict[str, Any]]:
    done = subprocess.run(["ip", "-n", netns, "-j", *args], check=True, capture_output=True,
                          text=True)
    result: list[dict[str, Any]] = json.loads(done.stdout or "[]")
    return result


def link_names(netns: str) -> list[str]:
    return [link["ifname"] for link in ip_json(netns, "link", "show")]


def eth0_addresses(pod: str) -> list[str]:
    if "eth0" not in link_names(pod):
        return []
    return [info["local"] for link in ip_json(pod, "-4", "addr", "show", "dev", "eth0")
            for info in link.get("addr_info", [])]


def nat_rules(host: str) -> list[str]:
    """Masquerade rules a pod owns in the node: iptables `CNI-` chains and jumps, nftables
    rules commented `pycni ...`."""
    rules = []
    saved = subprocess.run(["ip", "netns", "exec", host, "iptables-save", "-t", "nat"],
                           capture_output=True, text=True)
    rules += [line for line in saved.stdout.splitlines() if "CNI-" in line]
    ruleset = subprocess.run(["ip", "netns", "exec", host, "nft", "list", "ruleset"],
                             capture_output=True, text=True)
    rules += [line.strip() for line in ruleset.stdout.splitlines() if 'comment "pycni ' in line]
    return rules


def ipam_files(sandbox: Sandbox) -> list[str]:
    """Files under the network's host-local dataDir other than its lock and last-reserved
    markers: the reference's one file per address, ours' `.meta/<address>` beside it."""
    data_dir = sandbox.dir / "ipam" / NETWORK
    if not data_dir.is_dir():
        return []
    return sorted(str(path.relative_to(data_dir)) for path in data_dir.rglob("*")
                  if path.is_file() and not path.name.startswith(IPAM_BOOKKEEPING))


def cache_files(sandbox: Sandbox) -> list[str]:
    cache = sandbox.dir / "cache"
    return sorted(str(path.relative_to(cache)) for path in cache.rglob("*") if path.is_file())


def leftovers(sandbox: Sandbox, pods: list[str]) -> dict[str, list[str]]:
    """What the pods left after their DEL."""
    return {
        "host_links": [name for name in link_names(sandbox.host) if name not in ("lo", BRIDGE)],
        "pod_links": [f"{pod}:{name}" for pod in pods for name in link_names(pod)
                      if name != "lo"],
        "ipam_files": ipam_files(sandbox),
        "nat_rules": nat_rules(sandbox.host),
        "cache_files": cache_files(sandbox),
    }


def cycle(sandbox: Sandbox, pods: list[str]) -> Cycle:
    """ADD every pod at once, check their addresses, DEL every pod at once, look for
    leftovers."""
    adds, add_wall = run_all(sandbox, "add", pods)
    result = Cycle(adds, [], add_wall, 0.0)
    owners: dict[str, list[str]] = {}
    for call in adds:
        if not call.ok:
            continue
        try:
            address = pod_addresses(json.loads(call.output))[0]
        except (ValueError, KeyError, IndexError):
            call.ok, call.output = False, f"no IPv4 address in the result: {call.output!r}"
            continue
        result.addresses[call.pod] = address
        owners.setdefault(address, []).append(call.pod)
        if address not in eth0_addresses(call.pod):
            result.missing.append(call.pod)
    result.duplicates = {address: names for address, names in owners.items() if len(names) > 1}
    result.nat_rules_after_add = len(nat_rules(sandbox.host))
    result.ipam_files_after_add = len(ipam_files(sandbox))
    result.dels, result.del_wall_s = run_all(sandbox, "del", pods)
    result.leftovers = {kind: items for kind, items in leftovers(sandbox, pods).items() if items}
    return result


# --- the report -----------------------------------------------------------------------------

def latency(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"p50": percentile(values, 0.5), "p99": percentile(values, 0.99), "min": min(values),
            "max": max(values), "n": len(values)}


def side_summary(cycles: list[Cycle]) -> dict[str, Any]:
    return {
        "add": latency([call.ms for c in cycles for call in c.adds if call.ok]),
        "del": latency([call.ms for c in cycles for call in c.dels if call.ok]),
        "add_wall_s": [c.add_wall_s for c in cycles],
        "del_wall_s": [c.del_wall_s for c in cycles],
        "failures": [failure for c in cycles for failure in c.failures()],
        "duplicates": [c.duplicates for c in cycles if c.duplicates],
        "missing": [pod for c in cycles for pod in c.missing],
        "leftovers": [c.leftovers for c in cycles if c.leftovers],
        "problems": sum(c.problems() for c in cycles),
    }


def table(sides: dict[str, dict[str, Any]]) -> str:
    header = ("side", "ADD p50", "ADD p99", "DEL p50", "DEL p99", "all ADDs s", "failures",
              "dup addrs", "no addr", "leftovers")

    def ms(stats: dict[str, float] | None, key: str) -> str:
        return "-" if stats is None else f"{stats[key]:.1f}"

    rows = [header]
    for name, side in sides.items():
        rows.append((name, ms(side["add"], "p50"), ms(side["add"], "p99"), ms(side["del"], "p50"),
                     ms(side["del"], "p99"), f"{max(side['add_wall_s']):.2f}",
                     str(len(side["failures"])),
                     str(sum(len(d) for d in side["duplicates"])), str(len(side["missing"])),
                     str(sum(len(v) for left in side["leftovers"] for v in left.values()))))
    reference = sides.get("reference")
    for name, ours in sides.items():
        if name == "reference" or not reference or not all(
                side["add"] and side["del"] for side in (ours, reference)):
            continue
        rows.append((f"{name}/ref", *(f"{ours[op][p] / reference[op][p]:.2f}x"
                                      for op in ("add", "del") for p in ("p50", "p99")),
                     f"{max(ours['add_wall_s']) / max(reference['add_wall_s']):.2f}x",
                     "", "", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in rows]
    return "\n".join(lines[:1] + ["-" * len(lines[0])] + lines[1:])


def problem_lines(sides: dict[str, dict[str, Any]], limit: int = 5) -> list[str]:
    lines = []
    for name, side in sides.items():
        details = [*side["failures"], *(f"duplicate {d}" for d in side["duplicates"]),
                   *(f"no address on eth0: {pod}" for pod in side["missing"]),
                   *(f"left behind: {left}" for left in side["leftovers"])]
        lines += [f"  {name}: {detail[:200]}" for detail in details[:limit]]
        if len(details) > limit:
            lines.append(f"  {name}: ... {len(details) - limit} more")
    return lines


# --- the program ----------------------------------------------------------------------------

def measure(implementations: list[str], pod_count: int, rounds: int
            ) -> tuple[dict[str, list[Cycle]], list[list[str]]]:
    """Every round's cycle per implementation, and the order they ran in."""
    cycles: dict[str, list[Cycle]] = {name: [] for name in implementations}
    order: list[list[str]] = []
    with ExitStack() as stack:
        sandboxes = {name: stack.enter_context(Sandbox(name, conflist))
                     for name in implementations}
        pods = {name: [sandbox.pod(f"c{index:02d}") for index in range(pod_count)]
                for name, sandbox in sandboxes.items()}
        for names, size in batch_orders(rounds, implementations):
            for _ in range(size):
                order.append(names)
                for name in names:
                    cycles[name].append(cycle(sandboxes[name], pods[name]))
    return cycles, order


def cannot_start() -> str | None:
    both = ("bridge", "host-local")
    return benchlib.cannot_start({"ours": both, "reference": both})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=PODS, help=f"pods at once (default {PODS})")
    parser.add_argument("--rounds", type=int, default=1,
                        help="ADD-all/DEL-all rounds per implementation (default 1)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results")
    parser.add_argument("--smoke", action="store_true",
                        help=f"{SMOKE_PODS} pods, one round: check the benchmark works")
    args = parser.parse_args(argv)
    pod_count, rounds = (SMOKE_PODS, 1) if args.smoke else (args.pods, args.rounds)
    if not 1 <= pod_count <= 200 or rounds < 1:
        parser.error("--pods must be 1 to 200 (the /24), --rounds at least 1")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    problem = cannot_start()
    if problem:
        print(f"bench_concurrent: {problem}", file=sys.stderr)
        return 2
    machine = machine_info()
    try:
        cycles, order = measure(list(SIDES), pod_count, rounds)
    except (RunFailed, subprocess.SubprocessError, OSError, threading.BrokenBarrierError
            ) as exc:
        print(f"bench_concurrent: {exc}", file=sys.stderr)
        return 1
    sides = {name: side_summary(side_cycles) for name, side_cycles in cycles.items()}
    report = {"benchmark": "concurrent", "cniVersion": CNI_VERSION, "pods": pod_count,
              "rounds": rounds, "unit": "ms", "config": conflist(Path("<tmp>")),
              "batch_order": order,
              "cni_path": {name: str(path) for name, path in IMPLEMENTATIONS.items()},
              "machine": machine, "sides": sides,
              "cycles": {name: [asdict(c) for c in side_cycles]
                         for name, side_cycles in cycles.items()}}
    path = write_results(args.out, "concurrent", report)
    print(f"{pod_count} pods ADDed at once, then DELed at once, bridge + host-local, "
          f"cniVersion {CNI_VERSION}, {rounds} round(s), {machine['nproc']} cores, "
          f"ms per cnitool run")
    print(table(sides))
    details = problem_lines(sides)
    if details:
        print("problems:")
        print("\n".join(details))
    print(f"results: {path}")
    return 1 if any(sides[name]["problems"] for name in SIDES if name != "reference") else 0


if __name__ == "__main__":
    sys.exit(main())
