"""Benchmark loopback through libcni: ours (dist/bin) against the reference (/usr/lib/cni).

    python -m conformance.bench [--rounds N] [--out DIR] [--smoke]

`dist/cnitool bench` times N ADD+DEL pairs, then N VERSION calls, from inside libcni, so the
numbers are what a runtime waits for. Both implementations run in the same run, each in its
own sandbox namespaces, in alternating batches so that drift in the machine's load falls on
both. The table goes to stdout; every sample, the
percentiles and the machine go to DIR/loopback-<timestamp>.json and DIR/latest.json.

Exit status: 0 when every run worked (whether or not the targets are met), 1 when a run
failed, 2 when the benchmark cannot start (not root, build missing).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

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

CNI_VERSION = "1.0.0"
NETWORK = "lo-net"
OPS = ("version", "add", "del")  # cnitool's keys, in table order
# The targets: ours p50 at most this many times the reference's p50.
TARGETS = {"version": 5.0, "add": 3.0}


LOOPBACK = {"cniVersion": CNI_VERSION, "name": NETWORK, "plugins": [{"type": "loopback"}]}


def run_benchmark(rounds: int) -> tuple[dict[str, dict[str, list[float]]], list[list[str]]]:
    """All samples per implementation and op, and the order the batches ran in."""
    with ExitStack() as stack:
        sandboxes = {name: stack.enter_context(Sandbox(name, lambda _: LOOPBACK, ifname="lo"))
                     for name in IMPLEMENTATIONS}
        return run_cnitool_bench(sandboxes, rounds, OPS)


def cannot_start() -> str | None:
    return benchlib.cannot_start({"ours": ("loopback",), "reference": ("loopback",)})


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
