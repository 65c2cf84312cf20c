"""Benchmark bridge + host-local through libcni, and the data plane between two pods: ours
(dist/bin) against the reference (/usr/lib/cni).

    python -m conformance.bench_bridge [--rounds N] [--out DIR] [--smoke]

Control plane: `dist/cnitool bench` loops ADD, CHECK, DEL of a bridge + host-local conflist
(cniVersion 1.0.0) in one Go process and times each from inside libcni, so the numbers are
what a runtime waits for. Each implementation has its own sandbox (a host and a pod network
namespace, the bridge named the same, host-local's dataDir in a temporary directory); batches
alternate (ours first, then the reference first, ...) so drift in the machine's load falls
on both. Targets: ADD p50 within 2x of the reference's, DEL within 1.2x.

Data plane: two more pods on each implementation's bridge; iperf3 TCP from one pod to the
other (server in one pod namespace, client in the other), alternating sides, a few
repetitions. Target: ours' median throughput at least 0.95 of the reference's.

Targets are reported, not asserted. The table goes to stdout; every sample, the percentiles
and the machine go to DIR/bridge-<timestamp>.json and DIR/latest.json.

Exit status: 0 when every run worked (whether or not the targets are met), 1 when a run
failed, 2 when the benchmark cannot start (not root, build or iperf3 missing).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from conformance import benchlib
from conformance.benchlib import (
    IMPLEMENTATIONS,
    REPO,
    SMOKE_ROUNDS,
    RunFailed,
    Sandbox,
    machine_info,
    run_cnitool_bench,
    summarize,
    table,
    write_results,
)
from conformance.bridgelib import NETWORK, bridge_conflist, pod_addresses

CNI_VERSION = "1.0.0"
OPTIONS: dict[str, Any] = {"isGateway": True, "ipMasq": True, "hairpinMode": True}
OPS = ("add", "check", "del")  # cnitool's keys, in table order
# The targets: ours p50 at most this many times the reference's p50.
TARGETS = {"add": 2.0, "del": 1.2}
THROUGHPUT_TARGET = 0.95  # ours / reference, medians
IPERF_PORT = 5201


def add_pod(sandbox: Sandbox, pod: str) -> str:
    """ADD `pod` to the bridge; its IPv4 address."""
    result = json.loads(sandbox.cnitool("add", NETWORK, f"/var/run/netns/{pod}",
                                        container_id=pod))
    return pod_addresses(result)[0]


# --- control plane --------------------------------------------------------------------------

# --- data plane -----------------------------------------------------------------------------

def wait_listening(pod: str, port: int, patience: float = 10.0) -> None:
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        done = subprocess.run(["ip", "netns", "exec", pod, "ss", "-Htln", f"sport = :{port}"],
                              capture_output=True, text=True)
        if done.stdout.strip():
            return
        time.sleep(0.05)
    raise RunFailed(f"iperf3 server in {pod} is not listening on {port}")


def iperf3(server_pod: str, client_pod: str, address: str, seconds: int) -> float:
    """One iperf3 TCP run from `client_pod` to `address` in `server_pod`; Gbit/s received."""
    server = subprocess.Popen(["ip", "netns", "exec", server_pod, "iperf3", "-s", "-1",
                               "-B", address, "-p", str(IPERF_PORT)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening(server_pod, IPERF_PORT)
        done = subprocess.run(["ip", "netns", "exec", client_pod, "iperf3", "-J", "-c", address,
                               "-p", str(IPERF_PORT), "-t", str(seconds)],
                              capture_output=True, text=True, timeout=seconds + 60)
        try:
            report = json.loads(done.stdout)
        except ValueError:
            report = {}
        if done.returncode != 0 or "error" in report:
            raise RunFailed(f"iperf3 to {address} failed: {report.get('error') or done.stderr}")
        bits: float = report["end"]["sum_received"]["bits_per_second"]
        return bits / 1e9
    finally:
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def run_data_plane(sandboxes: dict[str, Sandbox], seconds: int, repeats: int
                   ) -> dict[str, list[float]]:
    """Gbit/s per repetition per implementation, sides alternating."""
    pairs = {}
    for name, sandbox in sandboxes.items():
        client, server = sandbox.pod("client"), sandbox.pod("server")
        add_pod(sandbox, client)
        pairs[name] = (server, client, add_pod(sandbox, server))
    samples: dict[str, list[float]] = {name: [] for name in sandboxes}
    names = list(sandboxes)
    for repeat in range(repeats):
        for name in (names if repeat % 2 == 0 else names[::-1]):
            samples[name].append(iperf3(*pairs[name], seconds))
    return samples


def throughput_summary(samples: dict[str, list[float]]) -> dict[str, Any]:
    medians = {name: statistics.median(values) for name, values in samples.items()}
    ratio = medians["ours"] / medians["reference"]
    return {"unit": "Gbit/s", "median": medians, "min": {n: min(v) for n, v in samples.items()},
            "max": {n: max(v) for n, v in samples.items()}, "ratio_median": ratio,
            "target": {"min_ratio": THROUGHPUT_TARGET, "met": ratio >= THROUGHPUT_TARGET},
            "samples": samples}


def throughput_table(summary: dict[str, Any]) -> str:
    median, low, high = summary["median"], summary["min"], summary["max"]
    verdict = "met" if summary["target"]["met"] else "not met"
    return (f"TCP Gbit/s  ours median {median['ours']:.2f} ({low['ours']:.2f}-{high['ours']:.2f})"
            f"  ref median {median['reference']:.2f} ({low['reference']:.2f}-"
            f"{high['reference']:.2f})  ratio {summary['ratio_median']:.2f}x  "
            f">= {THROUGHPUT_TARGET:g}x {verdict}")


# --- the program ----------------------------------------------------------------------------

def cannot_start() -> str | None:
    both = ("bridge", "host-local")
    return benchlib.cannot_start({"ours": both, "reference": both}, tools=("iperf3", "ss"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100,
                        help="ADD+CHECK+DEL rounds per implementation")
    parser.add_argument("--iperf-seconds", type=int, default=5,
                        help="length of one iperf3 run (default 5)")
    parser.add_argument("--iperf-repeats", type=int, default=3,
                        help="iperf3 runs per implementation (default 3)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results",
                        help="directory for the JSON results (default: bench-results/)")
    parser.add_argument("--smoke", action="store_true",
                        help=f"{SMOKE_ROUNDS} rounds and one 1-second iperf3 run per side, "
                             "to check the benchmark itself works")
    args = parser.parse_args(argv)
    rounds = SMOKE_ROUNDS if args.smoke else args.rounds
    seconds, repeats = (1, 1) if args.smoke else (args.iperf_seconds, args.iperf_repeats)
    if rounds < 1 or seconds < 1 or repeats < 1:
        parser.error("--rounds, --iperf-seconds and --iperf-repeats must be at least 1")
    # A plain kill must still remove the namespaces: turn it into SystemExit.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    problem = cannot_start()
    if problem:
        print(f"bench_bridge: {problem}", file=sys.stderr)
        return 2

    machine = machine_info()  # before the run: its date is when the run started
    try:
        with ExitStack() as stack:
            sandboxes = {name: stack.enter_context(Sandbox(
                name, lambda scratch: bridge_conflist(CNI_VERSION, scratch / "ipam", **OPTIONS)))
                for name in IMPLEMENTATIONS}
            samples, order = run_cnitool_bench(sandboxes, rounds, OPS)
            throughput = run_data_plane(sandboxes, seconds, repeats)
    except (RunFailed, subprocess.SubprocessError, OSError) as exc:
        print(f"bench_bridge: {exc}", file=sys.stderr)
        return 1
    summary = summarize(samples, OPS, TARGETS)
    data_plane = throughput_summary(throughput)
    report = {
        "benchmark": "bridge", "cniVersion": CNI_VERSION, "rounds": rounds, "unit": "ms",
        "config": bridge_conflist(CNI_VERSION, Path("<tmp>/ipam"), **OPTIONS),
        "batch_order": order,
        "cni_path": {name: str(path) for name, path in IMPLEMENTATIONS.items()},
        "machine": machine, **summary, "samples": samples,
        "throughput": {"seconds": seconds, "repeats": repeats, **data_plane},
    }
    path = write_results(args.out, "bridge", report)
    print(f"bridge + host-local through libcni, cniVersion {CNI_VERSION}, {rounds} rounds, ms")
    print(table(summary, OPS))
    print(f"iperf3 pod to pod over the bridge, {repeats} x {seconds} s per side")
    print(throughput_table(data_plane))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
