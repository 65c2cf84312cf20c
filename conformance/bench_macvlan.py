"""Benchmark macvlan + host-local through libcni: ours (dist/bin) against the reference
(/usr/lib/cni), the users' business network.

    python -m conformance.bench_macvlan [--rounds N] [--out DIR] [--smoke]

Three sides, each on its own sandbox node whose `eth1` (a veth end, the business NIC stand-in)
is the macvlan master: ours exec'd cold, ours served by `pycni daemon` (as the DaemonSet runs
it), the reference. `dist/cnitool bench` loops ADD, CHECK, DEL of the conflist (cniVersion
1.0.0, bridge mode, host-local in a temporary dataDir) inside libcni, batches alternating
between the sides. Target (issue 7): ADD and DEL p50 within 2x of the reference's, with the
daemon; the cold ratios are reported beside. Reported, not asserted. Results:
DIR/macvlan-<timestamp>.json and DIR/macvlan-latest.json. Exit status: 0 when every run worked,
1 when one failed, 2 when the benchmark cannot start.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from conformance import benchlib
from conformance.benchlib import (
    DAEMON,
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
OPS = ("add", "check", "del")
TARGETS = {"add": 2.0, "del": 2.0}
MASTER = "eth1"
WARM = "ours" + DAEMON
SIDES = ("ours", WARM, "reference")


def conflist(data_dir: Path) -> dict[str, Any]:
    return {"cniVersion": CNI_VERSION, "name": "business-network", "plugins": [{
        "type": "macvlan", "master": MASTER, "mode": "bridge",
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "192.168.100.0/24"}]],
                 "dataDir": str(data_dir)}}]}


def add_master(host: str) -> None:
    """The business NIC stand-in: a veth end named eth1, up, in the sandbox node."""
    for command in (["ip", "link", "add", MASTER, "type", "veth", "peer", "name", "eth1-wire"],
                    ["ip", "link", "set", MASTER, "up"], ["ip", "link", "set", "eth1-wire", "up"]):
        subprocess.run(["ip", "netns", "exec", host, *command], check=True, capture_output=True)


def cannot_start() -> str | None:
    both = ("macvlan", "host-local")
    return benchlib.cannot_start({"ours": both, "reference": both})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--out", type=Path, default=REPO / "bench-results")
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_ROUNDS} rounds")
    args = parser.parse_args(argv)
    rounds = SMOKE_ROUNDS if args.smoke else args.rounds
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    problem = cannot_start()
    if problem:
        print(f"bench_macvlan: {problem}", file=sys.stderr)
        return 2
    machine = machine_info()
    try:
        with ExitStack() as stack:
            sandboxes = {name: stack.enter_context(Sandbox(
                name, lambda scratch: conflist(scratch / "ipam"), prepare=add_master))
                for name in SIDES}
            samples, order = run_cnitool_bench(sandboxes, rounds, OPS)
    except (RunFailed, subprocess.SubprocessError, OSError) as exc:
        print(f"bench_macvlan: {exc}", file=sys.stderr)
        return 1
    summary = summarize({"ours": samples[WARM], "reference": samples["reference"]}, OPS,
                        TARGETS)
    cold = summarize({"ours": samples["ours"], "reference": samples["reference"]}, OPS, {})
    report = {"benchmark": "macvlan", "cniVersion": CNI_VERSION, "rounds": rounds,
              "unit": "ms", "config": conflist(Path("<tmp>/ipam")), "batch_order": order,
              "cni_path": {name: str(path) for name, path in IMPLEMENTATIONS.items()},
              "machine": machine, **summary, "cold": {"stats": cold["stats"]["ours"],
                                                      "ratio_p50": cold["ratio_p50"]},
              "samples": samples}
    path = write_results(args.out, "macvlan", report)
    print(f"macvlan + host-local through libcni, cniVersion {CNI_VERSION}, {rounds} rounds, ms")
    print("ours served by `pycni daemon` against the reference:")
    print(table(summary, OPS))
    print("ours exec'd cold: " + ", ".join(
        f"{op.upper()} {cold['stats']['ours'][op]['p50']:.2f} ({cold['ratio_p50'][op]:.2f}x)"
        for op in OPS))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
