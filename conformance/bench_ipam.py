"""Benchmark host-local: ours (dist/bin) against the reference (/usr/lib/cni), exec'd directly.

    python -m conformance.bench_ipam [--rounds N] [--out DIR] [--smoke]

Each round ADDs a new container to a /20 and DELs it, timing each exec. Two states of the
network: empty, and holding 1,000 allocations (files in the reference's format, which both
read on every ADD). IPAM touches no kernel state, so no namespace is needed. Target: ours no
slower than the reference at 1,000 allocations.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import shutil
import subprocess
import sys
import tempfile
import time
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

IMPLEMENTATIONS = {"ours": REPO / "dist" / "bin" / "host-local",
                   "reference": Path("/usr/lib/cni/host-local")}
SUBNET = ipaddress.ip_network("10.20.0.0/20")
NETWORK = "bench-net"
PREFILLS = (0, 1000)
OPS = tuple(f"{verb}@{count}" for count in PREFILLS for verb in ("add", "del"))
TARGETS = {"add@1000": 1.0, "del@1000": 1.0}


def prefill(data_dir: Path, count: int) -> None:
    """`count` allocations as the reference writes them, after the gateway."""
    network = data_dir / NETWORK
    network.mkdir(parents=True)
    hosts = SUBNET.hosts()
    next(hosts)  # the gateway
    last = None
    for index in range(count):
        last = next(hosts)
        (network / str(last)).write_bytes(f"prefill-{index}\r\neth0".encode())
    if last is not None:
        (network / "last_reserved_ip.0").write_text(str(last))


def timed_exec(binary: Path, command: str, container: str, stdin: bytes) -> float:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": "/dev/null",
           "CNI_IFNAME": "eth0", "CNI_PATH": str(binary.parent)}
    start = time.perf_counter()
    done = subprocess.run([str(binary)], input=stdin, env=env, capture_output=True)
    elapsed = (time.perf_counter() - start) * 1000
    if done.returncode != 0:
        raise RunFailed(f"{binary} {command} failed: {done.stdout.decode()}"
                        f"{done.stderr.decode()}")
    return elapsed


def run_benchmark(rounds: int, scratch: Path) -> tuple[dict[str, dict[str, list[float]]],
                                                       list[list[str]]]:
    samples: dict[str, dict[str, list[float]]] = {
        name: {op: [] for op in OPS} for name in IMPLEMENTATIONS}
    order: list[list[str]] = []
    configs = {}
    for name in IMPLEMENTATIONS:
        for count in PREFILLS:
            data_dir = scratch / f"{name}-{count}"
            prefill(data_dir, count)
            configs[name, count] = json.dumps({
                "cniVersion": "1.0.0", "name": NETWORK, "type": "bridge",
                "ipam": {"type": "host-local", "subnet": str(SUBNET),
                         "dataDir": str(data_dir)}}).encode()
    serial = 0
    for name, binary in IMPLEMENTATIONS.items():  # warm-up, discarded
        timed_exec(binary, "ADD", "warm-up", configs[name, 0])
        timed_exec(binary, "DEL", "warm-up", configs[name, 0])
    for names, size in batch_orders(rounds, list(IMPLEMENTATIONS)):
        order.append(names)
        for name in names:
            for count in PREFILLS:
                for _ in range(size):
                    serial += 1
                    container = f"bench-{serial}"
                    stdin = configs[name, count]
                    binary = IMPLEMENTATIONS[name]
                    samples[name][f"add@{count}"].append(
                        timed_exec(binary, "ADD", container, stdin))
                    samples[name][f"del@{count}"].append(
                        timed_exec(binary, "DEL", container, stdin))
    return samples, order


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--out", type=Path, default=REPO / "bench-results")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    rounds = SMOKE_ROUNDS if args.smoke else args.rounds
    missing = [str(path) for path in IMPLEMENTATIONS.values() if not path.exists()]
    if missing:
        print(f"bench_ipam: missing {', '.join(missing)} (make build; containernetworking-"
              "plugins)", file=sys.stderr)
        return 2
    machine = machine_info()
    scratch = Path(tempfile.mkdtemp(prefix="pycni-bench-ipam-"))
    try:
        samples, order = run_benchmark(rounds, scratch)
    except (RunFailed, OSError) as exc:
        print(f"bench_ipam: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    summary = summarize(samples, OPS, TARGETS)
    report = {"benchmark": "host-local", "rounds": rounds, "unit": "ms", "subnet": str(SUBNET),
              "batch_order": order, "machine": machine, **summary, "samples": samples}
    path = write_results(args.out, "host-local", report)
    print(f"host-local ADD/DEL exec'd directly, {SUBNET}, empty and 1000 allocations, "
          f"{rounds} rounds, ms")
    print(table(summary, OPS))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
