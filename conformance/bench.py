"""Benchmark loopback through libcni: ours (dist/bin) against the reference (/usr/lib/cni).

    python -m conformance.bench [--rounds N] [--out DIR] [--smoke]

`dist/cnitool bench` times N ADD+DEL pairs, then N VERSION calls, from inside libcni, so the
numbers are what a runtime waits for. Both implementations run in the same sandbox namespaces
in the same run, in alternating batches (ours first, then the reference first, ...) so that
drift in the machine's load falls on both. The table goes to stdout; every sample, the
percentiles and the machine go to DIR/loopback-<timestamp>.json and DIR/latest.json.

Exit status: 0 when every run worked (whether or not the targets are met), 1 when a run
failed, 2 when the benchmark cannot start (not root, build missing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from conformance.benchlib import (
    REPO,
    SMOKE_ROUNDS,
    RunFailed,
    batch_orders,
    machine_info,
    summarize,
    table,
    write_results,
)

CNITOOL = REPO / "dist" / "cnitool"
IMPLEMENTATIONS = {"ours": REPO / "dist" / "bin", "reference": Path("/usr/lib/cni")}
CNI_VERSION = "1.0.0"
NETWORK = "lo-net"
OPS = ("version", "add", "del")  # cnitool's keys, in table order
# The targets: ours p50 at most this many times the reference's p50.
TARGETS = {"version": 5.0, "add": 3.0}


class Sandbox:
    """A host and a pod network namespace plus a scratch directory, all removed on exit."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.host, self.pod = f"pycni-bench-host-{tag}", f"pycni-bench-pod-{tag}"
        self.created: list[str] = []
        self.dir = Path()

    def __enter__(self) -> Sandbox:
        self.dir = Path(tempfile.mkdtemp(prefix="pycni-bench-"))
        try:
            for name in (self.host, self.pod):
                subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
                self.created.append(name)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.created.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def bench(self, implementation: str, rounds: int) -> dict[str, list[float]]:
        """One `cnitool bench` run for `implementation`; its samples in ms per op."""
        netconf = self.dir / "net.d"
        netconf.mkdir(exist_ok=True)
        (netconf / "10-lo.conflist").write_text(json.dumps(
            {"cniVersion": CNI_VERSION, "name": NETWORK, "plugins": [{"type": "loopback"}]}))
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "NETCONFPATH": str(netconf),
            "CNI_PATH": str(IMPLEMENTATIONS[implementation]),
            "CNI_CACHE_DIR": str(self.dir / f"cache-{implementation}"),
            "CNI_IFNAME": "lo",
            "CNI_CONTAINERID": f"bench-{implementation}",
        }
        command = ["ip", "netns", "exec", self.host, str(CNITOOL), "bench", NETWORK,
                   f"/var/run/netns/{self.pod}", str(rounds)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise RunFailed(f"{implementation}: cnitool bench exited {done.returncode}: "
                            f"{done.stderr.strip() or done.stdout.strip()}")
        try:
            samples: dict[str, list[float]] = json.loads(done.stdout)
        except ValueError as exc:
            raise RunFailed(f"{implementation}: cnitool bench printed no JSON: "
                            f"{done.stdout!r}") from exc
        return {op: samples[op] for op in OPS}


def run_benchmark(rounds: int) -> tuple[dict[str, dict[str, list[float]]], list[list[str]]]:
    """All samples per implementation and op, and the order the batches ran in."""
    samples: dict[str, dict[str, list[float]]] = {
        name: {op: [] for op in OPS} for name in IMPLEMENTATIONS}
    order: list[list[str]] = []
    with Sandbox() as sandbox:
        for name in IMPLEMENTATIONS:  # warm-up, discarded: page cache, first-exec costs
            sandbox.bench(name, 1)
        for names, size in batch_orders(rounds, list(IMPLEMENTATIONS)):
            order.append(names)
            for name in names:
                for op, values in sandbox.bench(name, size).items():
                    samples[name][op].extend(values)
    return samples, order


def cannot_start() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for path in (IMPLEMENTATIONS["ours"] / "loopback", CNITOOL):
        if not os.access(path, os.X_OK):
            return f"{path} is missing: run `make build cnitool`"
    if not os.access(IMPLEMENTATIONS["reference"] / "loopback", os.X_OK):
        return "reference plugins missing: install containernetworking-plugins"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100,
                        help="ADD+DEL pairs and VERSION calls per implementation")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results",
                        help="directory for the JSON results (default: bench-results/)")
    parser.add_argument("--smoke", action="store_true",
                        help=f"{SMOKE_ROUNDS} rounds, to check the benchmark itself works")
    args = parser.parse_args(argv)
    rounds = SMOKE_ROUNDS if args.smoke else args.rounds
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    # A plain kill must still remove the namespaces: turn it into SystemExit.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    problem = cannot_start()
    if problem:
        print(f"bench: {problem}", file=sys.stderr)
        return 2

    machine = machine_info()  # before the run: its date is when the run started
    try:
        samples, order = run_benchmark(rounds)
    except (RunFailed, subprocess.SubprocessError, OSError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    summary = summarize(samples, OPS, TARGETS)
    report = {
        "benchmark": "loopback", "cniVersion": CNI_VERSION, "rounds": rounds,
        "unit": "ms", "batch_order": order,
        "cni_path": {name: str(path) for name, path in IMPLEMENTATIONS.items()},
        "machine": machine, **summary, "samples": samples,
    }
    path = write_results(args.out, "loopback", report)
    print(f"loopback through libcni, cniVersion {CNI_VERSION}, {rounds} rounds, ms")
    print(table(summary, OPS))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
