"""Benchmark multus' overhead through libcni: a pod with the cluster network and two
attachments through the seed multus config, against the same three delegates run alone.

    python -m conformance.bench_multus [--rounds N] [--out DIR] [--smoke]

One sandbox node (tests.multuslib: its netns, its /run/flannel, /var/lib/cni and
/etc/cni/net.d, the test API server) holds the seed business NAD (macvlan on eth1) and a
second macvlan NAD (`storage-network` on eth2). `dist/cnitool bench` times ADD and DEL inside
libcni with CNI_PATH=dist/bin:

- multus: the seed multus config, unchanged, for a pod annotated with `business-network`
  (net1, the seed `business-app` selection) and `storage-network` (net2);
- direct: the seed flannel conflist (eth0) and the two NAD configs (net1, net2) as three
  networks of another pod, as if the runtime called the delegates itself; a round's time is
  the sum of its three networks' times.

Batches alternate between the sides. Target: multus' ADD and DEL p50 at most 1.3x the direct
sum's (overhead at most 30%). Reported, not asserted. Results: DIR/multus-<timestamp>.json
and DIR/multus-latest.json. Exit status: 0 when every run worked, 1 when one failed, 2 when
the benchmark cannot start.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from conformance import benchlib
from conformance.benchlib import (
    CNITOOL,
    REPO,
    SMOKE_ROUNDS,
    RunFailed,
    batch_orders,
    machine_info,
    percentile,
    write_results,
)
from tests.conftest import Netns, NetnsFactory
from tests.multuslib import STORAGE_SUBNET, MultusNode, seed

DIST_BIN = REPO / "dist" / "bin"
SEEDS = REPO / "tests" / "seeds"
OPS = ("add", "del")
TARGET = 1.3
POD = "bench-pod"
SIDES = ("multus", "direct")
MULTUS_NETWORK = "multus-cni-network"   # the seed multus config's name
# The direct side's networks: (name, CNI_IFNAME), in the order multus runs them.
DIRECT_NETWORKS = (("cbr0", "eth0"), ("business-network", "net1"), ("storage-network", "net2"))
PLUGINS = ("multus", "flannel", "bridge", "host-local", "portmap", "macvlan")


def selection() -> list[dict[str, Any]]:
    """The seed `business-app` selection plus the second attachment."""
    return [*seed("pod-annotations.json")["business-app"],
            {"name": "storage-network", "interface": "net2"}]


class Side:
    """One side's NETCONFPATH, libcni cache and pod on the node."""

    def __init__(self, node: MultusNode, name: str, pod: Netns, workdir: Path) -> None:
        self.node, self.name, self.pod, self.workdir = node, name, pod, workdir
        (workdir / "net.d").mkdir(parents=True)

    def bench(self, network: str, ifname: str, rounds: int) -> dict[str, list[float]]:
        """`cnitool bench` of one network in the node, with the CNI_ARGS kubelet passes."""
        env = {"NETCONFPATH": str(self.workdir / "net.d"), "CNI_PATH": str(DIST_BIN),
               "CNI_CACHE_DIR": str(self.workdir / "cache"), "CNI_IFNAME": ifname,
               "CNI_CONTAINERID": f"ctr-{self.name}",
               "CNI_ARGS": (f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={POD};"
                            f"K8S_POD_INFRA_CONTAINER_ID=ctr-{self.name}")}
        done = self.node.exec([str(CNITOOL), "bench", network, self.pod.path, str(rounds)], env)
        if done.status != 0:
            raise RunFailed(f"{self.name}: cnitool bench {network} exited {done.status}: "
                            f"{done.stderr.strip() or done.stdout.strip()}")
        try:
            samples: dict[str, list[float]] = json.loads(done.stdout)
        except ValueError as exc:
            raise RunFailed(f"{self.name}: cnitool bench printed no JSON: "
                            f"{done.stdout!r}") from exc
        return {op: samples[op] for op in OPS}


def make_sides(node: MultusNode, factory: NetnsFactory, scratch: Path) -> dict[str, Side]:
    """The multus side (seed config unchanged) and the direct side (seed flannel conflist, the
    NAD configs named as multus names them)."""
    node.business_nad()
    storage = node.macvlan_nad("default", "storage-network", STORAGE_SUBNET)
    node.api.add_pod("default", POD, node_name="node1", annotations={
        "k8s.v1.cni.cncf.io/networks": json.dumps(selection())})
    multus = Side(node, "multus", factory("pod"), scratch / "multus")
    (multus.workdir / "net.d" / "00-multus.conf").write_text(
        (SEEDS / "multus-conf.json").read_text())
    direct = Side(node, "direct", factory("pod"), scratch / "direct")
    net_d = direct.workdir / "net.d"
    (net_d / "10-flannel.conflist").write_text((SEEDS / "10-flannel.conflist").read_text())
    business = seed("nad-business-network.macvlan.json")
    (net_d / "20-business.conf").write_text(json.dumps({**business, "name": "business-network"}))
    (net_d / "30-storage.conf").write_text(json.dumps({**storage, "name": "storage-network"}))
    return {"multus": multus, "direct": direct}


def run_side(side: Side, rounds: int) -> dict[str, dict[str, list[float]]]:
    """Per network and op, `rounds` samples; the multus side has one network."""
    if side.name == "multus":
        return {MULTUS_NETWORK: side.bench(MULTUS_NETWORK, "eth0", rounds)}
    return {network: side.bench(network, ifname, rounds) for network, ifname in DIRECT_NETWORKS}


def run_bench(sides: dict[str, Side], rounds: int
              ) -> tuple[dict[str, dict[str, dict[str, list[float]]]], list[list[str]]]:
    """All samples per side, network and op, and the order the batches ran in."""
    samples: dict[str, dict[str, dict[str, list[float]]]] = {name: {} for name in sides}
    for side in sides.values():  # warm-up, discarded: first-exec costs, the bridge, the API
        run_side(side, 1)
    order: list[list[str]] = []
    for names, size in batch_orders(rounds, list(sides)):
        order.append(names)
        for name in names:
            for network, by_op in run_side(sides[name], size).items():
                for op, values in by_op.items():
                    samples[name].setdefault(network, {o: [] for o in OPS})[op].extend(values)
    return samples, order


def stats(values: list[float]) -> dict[str, float]:
    return {"p50": percentile(values, 0.5), "p90": percentile(values, 0.9), "min": min(values),
            "max": max(values), "mean": sum(values) / len(values), "n": len(values)}


def summarize(samples: dict[str, dict[str, dict[str, list[float]]]]) -> dict[str, Any]:
    """Per side and op: the stats of a pod's time (the direct side: the per-round sum of its
    networks); the p50 and p90 ratios multus / direct; the target met or not."""
    totals = {
        "multus": {op: samples["multus"][MULTUS_NETWORK][op] for op in OPS},
        "direct": {op: [sum(round_times) for round_times in zip(
            *(samples["direct"][network][op] for network, _ in DIRECT_NETWORKS), strict=True)]
            for op in OPS},
    }
    side_stats = {side: {op: stats(values) for op, values in by_op.items()}
                  for side, by_op in totals.items()}
    ratios = {f"ratio_{p}": {op: side_stats["multus"][op][p] / side_stats["direct"][op][p]
                            for op in OPS} for p in ("p50", "p90")}
    targets = {op: {"max_ratio_p50": TARGET, "met": ratios["ratio_p50"][op] <= TARGET}
               for op in OPS}
    delegates = {network: {op: stats(values) for op, values in by_op.items()}
                 for network, by_op in samples["direct"].items()}
    return {"stats": side_stats, **ratios, "targets": targets, "delegates": delegates,
            "totals": totals}


def table(summary: dict[str, Any]) -> str:
    header = ("op", "multus p50", "multus p90", "direct p50", "direct p90", "ratio p50",
              "ratio p90", "target")
    rows = [header]
    for op in OPS:
        multus, direct = summary["stats"]["multus"][op], summary["stats"]["direct"][op]
        target = summary["targets"][op]
        rows.append((op.upper(), f"{multus['p50']:.2f}", f"{multus['p90']:.2f}",
                     f"{direct['p50']:.2f}", f"{direct['p90']:.2f}",
                     f"{summary['ratio_p50'][op]:.2f}x", f"{summary['ratio_p90'][op]:.2f}x",
                     f"<= {target['max_ratio_p50']:g}x {'met' if target['met'] else 'not met'}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    last = len(header) - 1
    lines = ["  ".join(cell.ljust(w) if i in (0, last) else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in rows]
    return "\n".join(lines[:1] + ["-" * len(lines[0])] + lines[1:])


def delegate_lines(summary: dict[str, Any]) -> list[str]:
    return [f"  {network:<17} ADD p50 {by_op['add']['p50']:8.2f}  "
            f"DEL p50 {by_op['del']['p50']:8.2f}"
            for network, by_op in summary["delegates"].items()]


def cannot_start() -> str | None:
    return benchlib.cannot_start({"ours": tuple(PLUGINS)})


def measure(rounds: int) -> tuple[dict[str, Any], list[list[str]]]:
    """Build the node, run the batches, and remove every namespace and directory after."""
    factory = NetnsFactory()
    scratch = Path(tempfile.mkdtemp(prefix="pycni-bench-multus-"))
    node: MultusNode | None = None
    try:
        node = MultusNode(factory, scratch / "node", DIST_BIN)
        sides = make_sides(node, factory, scratch)
        return run_bench(sides, rounds)
    finally:
        if node is not None:
            node.close()
        factory.remove_all()
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--out", type=Path, default=REPO / "bench-results")
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_ROUNDS} rounds")
    args = parser.parse_args(argv)
    rounds = SMOKE_ROUNDS if args.smoke else args.rounds
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    problem = cannot_start()
    if problem:
        print(f"bench_multus: {problem}", file=sys.stderr)
        return 2
    machine = machine_info()
    try:
        samples, order = measure(rounds)
    except (RunFailed, subprocess.SubprocessError, OSError) as exc:
        print(f"bench_multus: {exc}", file=sys.stderr)
        return 1
    summary = summarize(samples)
    report = {"benchmark": "multus", "rounds": rounds, "unit": "ms",
              "config": seed("multus-conf.json"), "selection": selection(),
              "direct_networks": [{"name": n, "ifname": i} for n, i in DIRECT_NETWORKS],
              "batch_order": order, "cni_path": str(DIST_BIN), "machine": machine,
              **summary, "samples": samples}
    path = write_results(args.out, "multus", report)
    print(f"multus (cluster network + 2 attachments) vs the 3 delegates alone, through libcni, "
          f"{rounds} rounds, ms")
    print(table(summary))
    print("direct side per network:")
    print("\n".join(delegate_lines(summary)))
    print(f"overhead ratio multus/sum p50: ADD {summary['ratio_p50']['add']:.2f}x, "
          f"DEL {summary['ratio_p50']['del']:.2f}x (target <= {TARGET:g}x, overhead <= 30%)")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
