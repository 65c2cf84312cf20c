"""Benchmark loopback through libcni: ours (dist/bin) against the reference (/usr/lib/cni).

    python conformance/bench.py [--rounds N] [--out DIR] [--smoke]

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
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CNITOOL = REPO / "dist" / "cnitool"
IMPLEMENTATIONS = {"ours": REPO / "dist" / "bin", "reference": Path("/usr/lib/cni")}
CNI_VERSION = "1.0.0"
NETWORK = "lo-net"
OPS = ("version", "add", "del")  # cnitool's keys, in table order
BATCHES = 4
SMOKE_ROUNDS = 3
# The targets: ours p50 at most this many times the reference's p50.
TARGETS = {"version": 5.0, "add": 3.0}


class RunFailed(Exception):
    pass


def percentile(samples: list[float], fraction: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    ordered = sorted(samples)
    position = (len(ordered) - 1) * fraction
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def batch_sizes(rounds: int, batches: int = BATCHES) -> list[int]:
    """`rounds` split into at most `batches` near-equal positive parts."""
    count = max(1, min(batches, rounds))
    base, extra = divmod(rounds, count)
    return [base + (1 if i < extra else 0) for i in range(count)]


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
        for index, size in enumerate(batch_sizes(rounds)):
            names = list(IMPLEMENTATIONS)
            if index % 2:
                names.reverse()
            order.append(names)
            for name in names:
                for op, values in sandbox.bench(name, size).items():
                    samples[name][op].extend(values)
    return samples, order


def summarize(samples: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    stats = {
        name: {op: {"p50": percentile(values, 0.5), "p90": percentile(values, 0.9),
                    "min": min(values), "max": max(values),
                    "mean": sum(values) / len(values), "n": len(values)}
               for op, values in ops.items()}
        for name, ops in samples.items()
    }
    ratios = {op: stats["ours"][op]["p50"] / stats["reference"][op]["p50"] for op in OPS}
    targets = {op: {"max_ratio_p50": limit, "met": ratios[op] <= limit}
               for op, limit in TARGETS.items()}
    return {"stats": stats, "ratio_p50": ratios, "targets": targets}


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in cpuinfo
                                if line.startswith("model name")), None)
    except OSError:
        info["cpu"] = None
    commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                            capture_output=True, text=True)
    info["pycni_commit"] = commit.stdout.strip() or None  # "-dirty": uncommitted changes
    return info


def table(summary: dict[str, Any]) -> str:
    header = ("op", "ours p50", "ours p90", "ref p50", "ref p90", "ratio p50", "target")
    rows = [header]
    for op in OPS:
        ours, reference = summary["stats"]["ours"][op], summary["stats"]["reference"][op]
        target = summary["targets"].get(op)
        verdict = "-"
        if target:
            verdict = f"<= {target['max_ratio_p50']:g}x {'met' if target['met'] else 'not met'}"
        rows.append((op.upper(), f"{ours['p50']:.2f}", f"{ours['p90']:.2f}",
                     f"{reference['p50']:.2f}", f"{reference['p90']:.2f}",
                     f"{summary['ratio_p50'][op]:.2f}x", verdict))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i in (0, 6) else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in rows]
    return "\n".join(lines[:1] + ["-" * len(lines[0])] + lines[1:])


def write_results(out: Path, report: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(report, indent=2) + "\n"
    path = out / f"loopback-{stamp}.json"
    path.write_text(text)
    (out / "latest.json").write_text(text)
    return path


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
    summary = summarize(samples)
    report = {
        "benchmark": "loopback", "cniVersion": CNI_VERSION, "rounds": rounds,
        "unit": "ms", "batch_order": order,
        "cni_path": {name: str(path) for name, path in IMPLEMENTATIONS.items()},
        "machine": machine, **summary, "samples": samples,
    }
    path = write_results(args.out, report)
    print(f"loopback through libcni, cniVersion {CNI_VERSION}, {rounds} rounds, ms")
    print(table(summary))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
