"""Churn under load: pods ADDed and DELed over and over, several at once, across bridge,
macvlan, flannel and multus, through libcni with the frozen build; then what is left.

    python -m conformance.stress_churn [--cycles N] [--parallel N] [--cold] [--out DIR]

One sandbox node (benchlib.Sandbox: a host namespace made by the run, removed at the end even
on failure, Ctrl-C or SIGTERM) with `pycni daemon` serving the plugins (`--cold`: every plugin
exec'd cold). Every plugin keeps its state in the run's temporary directory: host-local's
dataDir, flannel's subnetFile and dataDir, multus' confDir and cniDir, libcni's cache. Four
networks:

- bridge: bridge + host-local with ipMasq, then portmap (portMappings capability) and
  bandwidth (bandwidth capability: ingress and egress shaping, so qdiscs and an IFB);
- macvlan: macvlan + host-local on `eth1`, a veth in the node standing for its NIC;
- flannel: a test subnet.env, delegating to bridge + host-local (ipMasq, as the agent
  leaves masquerading to the delegate);
- multus: the cluster network (bridge + host-local) from its confDir and one attachment more
  (`defaultNetworks`: macvlan + host-local on `eth2`), NADs as files, no API server.

`--parallel` workers take cycles in turn (cycle i runs on network i mod 4): make a pod
namespace, ADD, check every interface holds the address its network gave it, record the
addresses as live (an address a live pod of the same network already holds is a DUPLICATE),
DEL, forget the addresses, delete the namespace. Failures are counted with their messages.

After one warm-up cycle per network the node is photographed (kernelstate.snapshot: links,
addresses, routes, qdiscs and filters, iptables and nftables; and the state files); after the
last cycle it is compared: anything more is a leak. What one live pod of each network adds to
the node (seen during the warm-up) is reported beside, so that "nothing left" means something.
Links are compared without their carrier state (a bridge's follows its ports, late).
Results: DIR/churn-<timestamp>.json and DIR/churn-latest.json. Exit status 0 when nothing
failed, nothing was duplicated and nothing leaked; 1 otherwise; 2 when the run cannot start.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conformance import benchlib, kernelstate
from conformance.benchlib import (
    DAEMON,
    REPO,
    RunFailed,
    Sandbox,
    machine_info,
    percentile,
    write_results,
)

CNI_VERSION = "1.0.0"
CYCLES, PARALLEL = 1000, 8
CALL_TIMEOUT = 300  # seconds, one cnitool run
NETWORKS = ("bridge", "macvlan", "flannel", "multus")
PLUGINS = ("bridge", "host-local", "portmap", "bandwidth", "macvlan", "flannel", "multus")
# Network names as libcni and host-local know them; the multus delegates' own networks.
NAMES = {network: f"churn-{network}" for network in NETWORKS}
MULTUS_CLUSTER, MULTUS_EXTRA = "churn-mcluster", "churn-mextra"
# Which pod interface holds which network's address: (address pool, interface).
POOLS = {"bridge": (("bridge", "eth0"),), "macvlan": (("macvlan", "eth0"),),
         "flannel": (("flannel", "eth0"),),
         "multus": ((MULTUS_CLUSTER, "eth0"), (MULTUS_EXTRA, "net1"))}
SUBNET_ENV = ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
              "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")
BANDWIDTH = {"ingressRate": 100_000_000, "ingressBurst": 1_000_000,
             "egressRate": 100_000_000, "egressBurst": 1_000_000}
HOST_PORT_BASE = 20000
# host-local's bookkeeping beside the allocations; the leak check looks at the rest.
IPAM_BOOKKEEPING = ("lock", "last_reserved_ip")
KERNEL_ASPECTS = ("links", "addresses", "routes", "qdiscs", "filters", "iptables",
                  "ip6tables", "nft")
CARRIER_FLAGS = ("LOWER_UP", "NO-CARRIER", "M-DOWN")
FILE_KINDS = ("allocation_files", "libcni_cache_files", "multus_cache_files",
              "flannel_saved_configs", "pod_netns")


# --- the node -------------------------------------------------------------------------------

def host_local(scratch: Path, subnet: str) -> dict[str, Any]:
    return {"type": "host-local", "ranges": [[{"subnet": subnet}]],
            "dataDir": str(scratch / "ipam")}


def bridge_conflist(scratch: Path) -> dict[str, Any]:
    """The conflist Sandbox installs; the other networks are written beside it."""
    return {"cniVersion": CNI_VERSION, "name": NAMES["bridge"], "plugins": [
        {"type": "bridge", "bridge": "churnbr0", "isGateway": True, "ipMasq": True,
         "ipam": host_local(scratch, "10.30.0.0/16")},
        {"type": "portmap", "capabilities": {"portMappings": True}},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}}]}


def other_networks(scratch: Path) -> dict[str, dict[str, Any]]:
    """NETCONFPATH files of the other three networks, and multus' confDir files."""
    macvlan = {"cniVersion": CNI_VERSION, "name": NAMES["macvlan"], "plugins": [
        {"type": "macvlan", "master": "eth1", "mode": "bridge",
         "ipam": host_local(scratch, "10.33.0.0/16")}]}
    flannel = {"cniVersion": CNI_VERSION, "name": NAMES["flannel"], "plugins": [
        {"type": "flannel", "subnetFile": str(scratch / "flannel" / "subnet.env"),
         "dataDir": str(scratch / "flannel" / "data"),
         "delegate": {"bridge": "cni0", "hairpinMode": True, "isDefaultGateway": True},
         "ipam": {"dataDir": str(scratch / "ipam")}}]}
    multus = {"cniVersion": CNI_VERSION, "name": NAMES["multus"], "type": "multus",
              "clusterNetwork": MULTUS_CLUSTER, "defaultNetworks": [MULTUS_EXTRA],
              "confDir": str(scratch / "multus" / "net.d"),
              "cniDir": str(scratch / "multus" / "cache"),
              "binDir": str(benchlib.IMPLEMENTATIONS["ours"]), "kubeconfig": ""}
    cluster = {"cniVersion": CNI_VERSION, "name": MULTUS_CLUSTER, "plugins": [
        {"type": "bridge", "bridge": "mcbr0", "isGateway": True, "ipMasq": True,
         "ipam": host_local(scratch, "10.31.0.0/16")}]}
    extra = {"cniVersion": CNI_VERSION, "name": MULTUS_EXTRA, "type": "macvlan",
             "master": "eth2", "mode": "bridge", "ipam": host_local(scratch, "10.32.0.0/16")}
    return {"net.d/20-macvlan.conflist": macvlan, "net.d/30-flannel.conflist": flannel,
            "net.d/40-multus.conf": multus, "multus/net.d/10-cluster.conflist": cluster,
            "multus/net.d/20-extra.conf": extra}


def prepare_host(host: str) -> None:
    """The node's NICs: `eth1` and `eth2`, veths whose peers stay in the node."""
    def ip(*args: str) -> None:
        subprocess.run(["ip", "-n", host, *args], check=True, capture_output=True)

    ip("link", "set", "lo", "up")
    for nic in ("eth1", "eth2"):
        ip("link", "add", nic, "type", "veth", "peer", "name", f"{nic}-peer")
        ip("link", "set", nic, "up")
        ip("link", "set", f"{nic}-peer", "up")


class Node:
    """The sandbox with all four networks, and the pods of the run."""

    def __init__(self, cold: bool) -> None:
        self.sandbox = Sandbox("ours" if cold else "ours" + DAEMON, bridge_conflist,
                               prepare=prepare_host)
        self.pods: set[str] = set()
        self.lock = threading.Lock()
        self.serial = itertools.count()

    def __enter__(self) -> Node:
        self.sandbox.__enter__()
        try:
            scratch = self.dir
            (scratch / "flannel").mkdir()
            (scratch / "flannel" / "subnet.env").write_text(SUBNET_ENV)
            (scratch / "multus" / "net.d").mkdir(parents=True)
            for relative, conf in other_networks(scratch).items():
                (scratch / relative).write_text(json.dumps(conf))
        except BaseException:
            self.sandbox.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            with self.lock:
                pods, self.pods = sorted(self.pods), set()
            for pod in pods:
                subprocess.run(["ip", "netns", "del", pod], capture_output=True)
        finally:
            self.sandbox.__exit__()

    @property
    def dir(self) -> Path:
        return self.sandbox.dir

    @property
    def host(self) -> str:
        return self.sandbox.host

    @property
    def pod_prefix(self) -> str:
        return f"pycni-churn-{self.sandbox.tag}-"

    def new_pod(self) -> str:
        name = f"{self.pod_prefix}{next(self.serial)}"
        with self.lock:
            self.pods.add(name)
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        return name

    def delete_pod(self, name: str) -> None:
        subprocess.run(["ip", "netns", "del", name], check=True, capture_output=True)
        with self.lock:
            self.pods.discard(name)

    def cnitool(self, verb: str, network: str, pod: str, container_id: str, worker: int
                ) -> tuple[bool, float, str]:
        """(worked, ms, stdout or the error) of one `cnitool <verb>` as a runtime calls it."""
        env = self.sandbox.environment(container_id)
        env["CNI_ARGS"] = (f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};"
                           f"K8S_POD_INFRA_CONTAINER_ID={container_id}")
        if network == "bridge":
            env["CAP_ARGS"] = json.dumps({"bandwidth": BANDWIDTH, "portMappings": [
                {"hostPort": HOST_PORT_BASE + worker, "containerPort": 8080,
                 "protocol": "tcp"}]})
        start = time.perf_counter()
        try:
            done = subprocess.run(self.sandbox.command(verb, NAMES[network],
                                                       f"/var/run/netns/{pod}"),
                                  env=env, capture_output=True, text=True, timeout=CALL_TIMEOUT)
        except subprocess.TimeoutExpired:
            return False, (time.perf_counter() - start) * 1000, f"timed out ({CALL_TIMEOUT} s)"
        elapsed = (time.perf_counter() - start) * 1000
        if done.returncode != 0:
            return False, elapsed, (f"exited {done.returncode}: "
                                    f"{done.stderr.strip() or done.stdout.strip()}")
        return True, elapsed, done.stdout


def pod_interfaces(pod: str) -> dict[str, list[str]]:
    """The pod's interfaces (not lo) and their IPv4 addresses."""
    done = subprocess.run(["ip", "-n", pod, "-j", "-4", "addr", "show"], capture_output=True,
                          text=True, check=True)
    return {link["ifname"]: [a["local"] for a in link.get("addr_info", []) if "local" in a]
            for link in json.loads(done.stdout or "[]") if link["ifname"] != "lo"}


def result_address(stdout: str) -> str:
    """The first IPv4 address of an ADD result."""
    result = json.loads(stdout)
    return next(ip["address"].split("/")[0] for ip in result.get("ips", [])
                if ":" not in ip["address"])


# --- the run --------------------------------------------------------------------------------

@dataclass
class Tally:
    """What the cycles of one network did."""

    cycles: int = 0
    add_ms: list[float] = field(default_factory=list)
    del_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


@dataclass
class Holder:
    """The pod holding an address, and when its DEL started (None: not yet)."""

    container_id: str
    releasing_since: float | None = None


class Churn:
    """The cycles, the live addresses per pool, and what they found.

    An address is a duplicate when a pod's ADD returned it while another pod of the pool held
    it and that pod's DEL had not started before the ADD ended: the address was allocated
    twice. Once a holder's DEL has started, its address may legitimately come back."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.lock = threading.Lock()
        self.live: dict[str, dict[str, Holder]] = {pool: {} for pools in POOLS.values()
                                                   for pool, _ in pools}
        self.tallies = {network: Tally() for network in NETWORKS}
        self.stop = threading.Event()

    def fail(self, network: str, message: str) -> None:
        with self.lock:
            self.tallies[network].failures.append(message[:500])

    def cycle(self, network: str, worker: int,
              while_live: Callable[[], None] | None = None) -> None:
        """One pod's life; `while_live()` runs between its ADD and its DEL."""
        node, tally = self.node, self.tallies[network]
        container_id = f"churn-{uuid.uuid4().hex[:16]}"
        pod = node.new_pod()
        held: list[tuple[str, str]] = []
        try:
            ok, add_ms, output = node.cnitool("add", network, pod, container_id, worker)
            added = time.monotonic()
            if ok:
                with self.lock:
                    tally.add_ms.append(add_ms)
                held = self.check_and_hold(network, pod, container_id, output, added)
                if while_live is not None:
                    while_live()
            else:
                self.fail(network, f"ADD {container_id}: {output}")
            self.release(held, container_id, forget=False)
            ok, del_ms, output = node.cnitool("del", network, pod, container_id, worker)
            with self.lock:
                if ok:
                    tally.del_ms.append(del_ms)
                else:
                    tally.failures.append(f"DEL {container_id}: {output}"[:500])
            self.release(held, container_id, forget=True)
        finally:
            node.delete_pod(pod)
            with self.lock:
                tally.cycles += 1

    def release(self, held: list[tuple[str, str]], container_id: str, forget: bool) -> None:
        """Before the DEL: the addresses are being released; after it: forgotten."""
        with self.lock:
            for pool, address in held:
                holder = self.live[pool].get(address)
                if holder is None or holder.container_id != container_id:
                    continue
                if forget:
                    del self.live[pool][address]
                else:
                    holder.releasing_since = time.monotonic()

    def check_and_hold(self, network: str, pod: str, container_id: str, output: str,
                       added: float) -> list[tuple[str, str]]:
        """Every interface of the network holds its address (eth0: the result's); the
        addresses become live, or are duplicates (see the class)."""
        try:
            expected = result_address(output)
        except (ValueError, KeyError, StopIteration):
            self.fail(network, f"ADD {container_id}: no IPv4 address in the result: "
                               f"{output[:200]!r}")
            return []
        interfaces = pod_interfaces(pod)
        held = []
        for pool, ifname in POOLS[network]:
            addresses = interfaces.get(ifname, [])
            if ifname == "eth0" and expected not in addresses:
                self.fail(network, f"ADD {container_id}: eth0 lacks the result's address "
                                   f"{expected}: {interfaces}")
                continue
            if not addresses:
                self.fail(network, f"ADD {container_id}: {ifname} missing or without an "
                                   f"IPv4 address: {interfaces}")
                continue
            address = expected if ifname == "eth0" else addresses[0]
            with self.lock:
                holder = self.live[pool].get(address)
                if holder is not None and (holder.releasing_since is None
                                           or holder.releasing_since > added):
                    self.tallies[network].duplicates.append(
                        f"{pool} {address}: {container_id} while {holder.container_id} "
                        f"holds it")
                else:
                    self.live[pool][address] = Holder(container_id)
                    held.append((pool, address))
        return held

    def worker(self, index: int, cycles: Any, total: int) -> None:
        while not self.stop.is_set():
            with self.lock:
                number = next(cycles)
            if number >= total:
                return
            network = NETWORKS[number % len(NETWORKS)]
            try:
                self.cycle(network, index)
            except Exception as exc:  # noqa: BLE001 - counted, and the next cycle runs
                self.fail(network, f"cycle {number}: {type(exc).__name__}: {exc}")

    def run(self, total: int, parallel: int) -> float:
        """Seconds the cycles took. Ctrl-C or SIGTERM stops the workers after their cycle."""
        cycles = itertools.count()
        threads = [threading.Thread(target=self.worker, args=(index, cycles, total),
                                    name=f"churn-{index}", daemon=True)
                   for index in range(parallel)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(CALL_TIMEOUT * 2 + 30)
        return time.perf_counter() - start


# --- what is left ---------------------------------------------------------------------------

def files_under(directory: Path, skip: tuple[str, ...] = ()) -> list[str]:
    if not directory.is_dir():
        return []
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*")
                  if path.is_file() and not path.name.startswith(skip))


def state(node: Node) -> dict[str, Any]:
    """The node's kernel state and state files, as comparable lists."""
    kernel = kernelstate.snapshot(node.host)
    found: dict[str, Any] = {aspect: kernel[aspect] for aspect in KERNEL_ASPECTS}
    found["links"] = [{**link, "operstate": None,
                       "flags": [f for f in link["flags"] if f not in CARRIER_FLAGS]}
                      for link in kernel["links"]]
    found["filters"] = [f"{dev}: {line}" for dev, lines in kernel["filters"].items()
                        for line in lines]
    found["allocation_files"] = files_under(node.dir / "ipam", IPAM_BOOKKEEPING)
    found["libcni_cache_files"] = files_under(node.dir / "cache")
    found["multus_cache_files"] = files_under(node.dir / "multus" / "cache")
    found["flannel_saved_configs"] = files_under(node.dir / "flannel" / "data")
    found["pod_netns"] = sorted(name for name in os.listdir("/run/netns")
                                if name.startswith(node.pod_prefix))
    return found


def leaks(baseline: dict[str, Any], after: dict[str, Any]) -> dict[str, list[str]]:
    """Per kind, what `after` holds beyond `baseline` (as many times as it is beyond)."""
    found = {}
    for kind in (*KERNEL_ASPECTS, *FILE_KINDS):
        def key(item: Any) -> str:
            return item if isinstance(item, str) else json.dumps(item, sort_keys=True)
        extra = Counter(map(key, after[kind])) - Counter(map(key, baseline[kind]))
        found[kind] = sorted(extra.elements())
    return found


# --- the report -----------------------------------------------------------------------------

def latency(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"p50": percentile(values, 0.5), "p99": percentile(values, 0.99),
            "max": max(values), "n": len(values)}


def summary(churn: Churn, found: dict[str, list[str]]) -> dict[str, Any]:
    networks = {network: {"cycles": tally.cycles, "failures": tally.failures,
                          "duplicates": tally.duplicates, "add": latency(tally.add_ms),
                          "del": latency(tally.del_ms)}
                for network, tally in churn.tallies.items()}
    every = [ms for tally in churn.tallies.values() for ms in tally.add_ms]
    removed = [ms for tally in churn.tallies.values() for ms in tally.del_ms]
    networks["all"] = {
        "cycles": sum(t.cycles for t in churn.tallies.values()),
        "failures": [f for t in churn.tallies.values() for f in t.failures],
        "duplicates": [d for t in churn.tallies.values() for d in t.duplicates],
        "add": latency(every), "del": latency(removed)}
    problems = (len(networks["all"]["failures"]) + len(networks["all"]["duplicates"])
                + sum(len(items) for items in found.values()))
    return {"networks": networks, "leaks": found, "problems": problems}


def table(report: dict[str, Any]) -> str:
    header = ("network", "cycles", "failures", "dups", "ADD p50", "ADD p99", "DEL p50",
              "DEL p99")

    def ms(stats: dict[str, float] | None, key: str) -> str:
        return "-" if stats is None else f"{stats[key]:.0f}"

    rows = [header]
    for name, row in report["networks"].items():
        rows.append((name, str(row["cycles"]), str(len(row["failures"])),
                     str(len(row["duplicates"])), ms(row["add"], "p50"), ms(row["add"], "p99"),
                     ms(row["del"], "p50"), ms(row["del"], "p99")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in rows]
    leak_line = "leaks: " + ", ".join(f"{kind} {len(items)}"
                                      for kind, items in report["leaks"].items())
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:], leak_line])


def problem_lines(report: dict[str, Any], limit: int = 5) -> list[str]:
    lines = []
    for name, row in report["networks"].items():
        if name == "all":
            continue
        details = [*row["failures"], *(f"DUPLICATE {d}" for d in row["duplicates"])]
        lines += [f"  {name}: {detail[:300]}" for detail in details[:limit]]
        if len(details) > limit:
            lines.append(f"  {name}: ... {len(details) - limit} more")
    for kind, items in report["leaks"].items():
        lines += [f"  leaked {kind}: {str(item)[:300]}" for item in items[:limit]]
        if len(items) > limit:
            lines.append(f"  leaked {kind}: ... {len(items) - limit} more")
    return lines


# --- the program ----------------------------------------------------------------------------

def churn(cycles: int, parallel: int, cold: bool = False) -> dict[str, Any]:
    """The whole run: node, warm-up, baseline, cycles, leak check; the node removed after."""
    with Node(cold) as node:
        warm_up, made = Churn(node), {}
        for network in NETWORKS:
            before: dict[str, Any] = state(node)
            during: dict[str, Any] = {}
            warm_up.cycle(network, 0, lambda seen=during: seen.update(state(node)))
            if during:
                made[network] = {kind: len(items)
                                 for kind, items in leaks(before, during).items()}
        warm_problems = [f"{network}: {message}" for network, tally in warm_up.tallies.items()
                         for message in (*tally.failures, *tally.duplicates)]
        baseline = state(node)
        run = Churn(node)
        seconds = run.run(cycles, parallel)
        after = state(node)
        report = summary(run, leaks(baseline, after))
        report.update({"warm_up_problems": warm_problems, "made_per_pod": made,
                       "seconds": seconds,
                       "daemon_rss_kb": None})
        node.sandbox.stop_server()
        report["daemon_rss_kb"] = node.sandbox.server_rss_kb
        report["problems"] += len(warm_problems)
    return report


def cannot_start() -> str | None:
    return benchlib.cannot_start({"ours": PLUGINS})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=CYCLES,
                        help=f"ADD/DEL cycles in all (default {CYCLES})")
    parser.add_argument("--parallel", type=int, default=PARALLEL,
                        help=f"cycles at once (default {PARALLEL})")
    parser.add_argument("--cold", action="store_true",
                        help="no `pycni daemon`: every plugin exec'd cold")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results")
    args = parser.parse_args(argv)
    if args.cycles < 1 or not 1 <= args.parallel <= 64:
        parser.error("--cycles must be at least 1, --parallel 1 to 64")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    problem = cannot_start()
    if problem:
        print(f"stress_churn: {problem}", file=sys.stderr)
        return 2
    machine = machine_info()
    try:
        report = churn(args.cycles, args.parallel, args.cold)
    except (RunFailed, subprocess.SubprocessError, OSError) as exc:
        print(f"stress_churn: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stress_churn: interrupted; the node is removed", file=sys.stderr)
        return 130
    report.update({"benchmark": "churn", "cycles": args.cycles, "parallel": args.parallel,
                   "daemon": not args.cold, "cniVersion": CNI_VERSION, "unit": "ms",
                   "machine": machine,
                   "configs": {"bridge": bridge_conflist(Path("<tmp>")),
                               **other_networks(Path("<tmp>"))}})
    path = write_results(args.out, "churn", report)
    print(f"churn: {args.cycles} ADD/DEL cycles, {args.parallel} at once, "
          f"{'cold' if args.cold else 'with pycni daemon'}, {report['seconds']:.0f} s, "
          f"{machine['nproc']} cores, ms per cnitool run")
    print(table(report))
    for network, made in report["made_per_pod"].items():
        print(f"one live {network} pod adds: " + ", ".join(
            f"{kind} {count}" for kind, count in made.items() if count))
    details = problem_lines(report)
    for message in report["warm_up_problems"]:
        details.insert(0, f"  warm-up: {message[:300]}")
    if details:
        print("problems:")
        print("\n".join(details))
    print(f"results: {path}")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
