"""Benchmark every plugin a pod uses here, and the users' seed configurations that run on
their own, through libcni: ours (dist/bin) against the reference (/usr/lib/cni), side by side.

    python -m conformance.bench_pods [--rounds N] [--out DIR] [--smoke]

One row per network: bridge + host-local, macvlan + host-local, host-device + static,
loopback, and the seeds (tests/seeds, the unchanged copies of the users' files) that need no
agent, API server or hardware, each NAD body wrapped as a one-plugin conflist named as Multus
names it, with host-local's dataDir moved to a temporary directory (the only change). Seeds that
cannot run standalone are listed with the reason. For each row, each implementation gets its
own sandbox node (benchlib.Sandbox: host and pod namespaces, an `eth1`/`eth2` veth end where
the row needs a master or a device); `cnitool bench` times ADD, CHECK (cniVersion >= 0.4.0
only: libcni has no CHECK before it), DEL and VERSION inside libcni, batches alternating
between the implementations, and reports the peak RSS of the plugin processes it ran.

Targets (issue 10), reported, not asserted: ADD p50 within 2x of the reference's for bridge +
host-local and macvlan + host-local; on every row CHECK within 2x, DEL within 1.2x, VERSION
within 5x, and ours' peak RSS per invocation under 60 MB. Results: DIR/pods-<timestamp>.json
and DIR/pods-latest.json. Exit status: 0 when every row ran, 1 when one failed (the others
are still reported), 2 when the benchmark cannot start.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conformance import benchlib
from conformance.bench_macvlan import add_master
from conformance.benchlib import (
    DAEMON,
    IMPLEMENTATIONS,
    REPO,
    RunFailed,
    Sandbox,
    machine_info,
    run_cnitool_bench,
    summarize,
    write_results,
)
from conformance.bridgelib import bridge_conflist

CNI_VERSION = "1.0.0"
SMOKE_ROUNDS = 1  # seven rows, three sides: one round shows every row works
WARM = "ours" + DAEMON
# ours exec'd cold (no daemon), ours served by `pycni daemon`, the reference
SIDES = ("ours", WARM, "reference")
SEEDS = REPO / "tests" / "seeds"
ALL_OPS = ("add", "check", "del", "version")
# Ours p50 at most this many times the reference's p50.
COMMON_TARGETS = {"check": 2.0, "del": 1.2, "version": 5.0}
MAIN_TARGETS = {"add": 2.0, **COMMON_TARGETS}  # bridge and macvlan, the pods' main networks
RSS_LIMIT_MB = 60.0
DEVICE = "eth2"  # host-device's device on the sandbox node (the users' storage/management NIC)

# Seeds that need more than a node's namespace, and why.
SKIPPED_SEEDS = {
    "10-flannel.conflist": "needs the flannel agent's subnet.env; the reference has no flannel "
                           "(bench_flannel and bench_multus cover it)",
    "multus-conf.json": "needs the Kubernetes API and NADs; the reference has no multus "
                        "(bench_multus covers it)",
    "nad-storage-network.sriov.json": "needs SR-IOV hardware; the reference has no sriov",
    "nad-vlan-network.vlan.json": "this kernel lacks the 8021q module",
    "net-conf.host-gw.json": "the flannel agent's net-conf, not a CNI configuration",
    "net-conf.vxlan.json": "the flannel agent's net-conf, not a CNI configuration",
    "net-conf.vxlan-directrouting.json": "the flannel agent's net-conf, not a CNI configuration",
    "pod-annotations.json": "pod annotations, not a CNI configuration",
    "README.md": "not a configuration",
}


@dataclass(frozen=True)
class Row:
    """One network of the table: how each implementation's conflist is made from its scratch
    directory, and how its sandbox node is prepared."""

    name: str
    conflist: Callable[[str, Path], dict[str, Any]]  # (implementation, scratch) -> conflist
    targets: dict[str, float]
    ifname: str = "eth0"
    prepare: Callable[[str], None] | None = None
    note: str = ""
    seed: str | None = None
    ops: tuple[str, ...] = field(default=ALL_OPS)


def add_device(host: str) -> None:
    """host-device's device: a veth end named eth2, up, in the sandbox node."""
    for command in (["ip", "link", "add", DEVICE, "type", "veth", "peer", "name", "eth2-wire"],
                    ["ip", "link", "set", DEVICE, "up"], ["ip", "link", "set", "eth2-wire", "up"]):
        subprocess.run(["ip", "netns", "exec", host, *command], check=True, capture_output=True)


def one_plugin(name: str, plugin: dict[str, Any], version: str = CNI_VERSION) -> dict[str, Any]:
    return {"cniVersion": version, "name": name, "plugins": [plugin]}


def host_local(subnet: str, data_dir: Path) -> dict[str, Any]:
    return {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": str(data_dir)}


def seed_conflist(filename: str, name: str, scratch: Path,
                  plugin_type: str | None = None) -> dict[str, Any]:
    """A seed NAD body as a conflist named `name` (what Multus does with it): host-local's
    dataDir in `scratch`, and the type replaced when the reference lacks it."""
    body = json.loads((SEEDS / filename).read_text())
    plugin = {key: value for key, value in body.items() if key not in ("cniVersion", "name")}
    if plugin_type:
        plugin["type"] = plugin_type
    if plugin.get("ipam", {}).get("type") == "host-local":
        plugin["ipam"] = {**plugin["ipam"], "dataDir": str(scratch / "ipam")}
    return one_plugin(body.get("name", name), plugin, body["cniVersion"])


def seed_ops(filename: str) -> tuple[str, ...]:
    """CHECK only where libcni has it (cniVersion >= 0.4.0)."""
    version = tuple(int(part) for part in
                    json.loads((SEEDS / filename).read_text())["cniVersion"].split("."))
    return ALL_OPS if version >= (0, 4, 0) else ("add", "del", "version")


def rows() -> list[Row]:
    macvlan_seed = "nad-business-network.macvlan.json"
    bridge_seed = "nad-dev-bridge.cnv-bridge.json"
    device_seed = "nad-management-network.host-device.json"
    return [
        Row("bridge+host-local", lambda _, scratch: bridge_conflist(
            CNI_VERSION, scratch / "ipam", isGateway=True, ipMasq=True, hairpinMode=True),
            MAIN_TARGETS),
        Row("macvlan+host-local", lambda _, scratch: one_plugin("business-network", {
            "type": "macvlan", "master": "eth1", "mode": "bridge",
            "ipam": host_local("192.168.100.0/24", scratch / "ipam")}),
            MAIN_TARGETS, prepare=add_master),
        Row("host-device+static", lambda _, scratch: one_plugin("management-network", {
            "type": "host-device", "device": DEVICE,
            "ipam": {"type": "static", "addresses": [{"address": "10.0.0.10/24"}]}}),
            COMMON_TARGETS, prepare=add_device),
        Row("loopback", lambda _, scratch: one_plugin("lo-net", {"type": "loopback"}),
            COMMON_TARGETS, ifname="lo"),
        Row("seed business-network", lambda _, scratch: seed_conflist(
            macvlan_seed, "business-network", scratch), COMMON_TARGETS, prepare=add_master,
            seed=macvlan_seed, ops=seed_ops(macvlan_seed)),
        Row("seed bridge-network", lambda implementation, scratch: seed_conflist(
            bridge_seed, "bridge-network", scratch,
            "bridge" if implementation == "reference" else None), COMMON_TARGETS,
            seed=bridge_seed, ops=seed_ops(bridge_seed),
            note="the reference runs it as type bridge (it has no cnv-bridge)"),
        Row("seed management-network", lambda _, scratch: seed_conflist(
            device_seed, "management-network", scratch), COMMON_TARGETS, prepare=add_device,
            seed=device_seed, ops=seed_ops(device_seed)),
    ]


def skipped_seeds(benchmarked: set[str]) -> dict[str, str]:
    """Every seed file not benchmarked, with the reason."""
    return {path.name: SKIPPED_SEEDS.get(path.name, "not known to this benchmark")
            for path in sorted(SEEDS.iterdir()) if path.name not in benchmarked}


def run_row(row: Row, rounds: int) -> dict[str, Any]:
    """Every side's samples for one row, the summaries (ours against the reference, cold and
    with the daemon) and the plugins' peak RSS (and the daemon's own)."""
    with ExitStack() as stack:
        sandboxes = {name: stack.enter_context(Sandbox(
            name, lambda scratch, name=name: row.conflist(name, scratch), ifname=row.ifname,
            prepare=row.prepare)) for name in SIDES}
        samples, order = run_cnitool_bench(sandboxes, rounds, row.ops)
        for sandbox in sandboxes.values():
            sandbox.stop_server()
        rss = {name: sandbox.peak_rss_kb for name, sandbox in sandboxes.items()}
        server_rss = sandboxes[WARM].server_rss_kb
    targets = {op: limit for op, limit in row.targets.items() if op in row.ops}
    warm = summarize({"ours": samples[WARM], "reference": samples["reference"]}, row.ops,
                     targets)
    return {
        "ops": list(row.ops), **summarize(samples, row.ops, targets),
        "with_daemon": {"ratio_p50": warm["ratio_p50"], "targets": warm["targets"]},
        "peak_rss_kb": rss, "daemon_rss_kb": server_rss,
        "rss_target": {"max_mb": RSS_LIMIT_MB, **{
            side: None if not rss[side] else rss[side] / 1024 < RSS_LIMIT_MB
            for side in ("ours", WARM)}},
        "config": {name: row.conflist(name, Path("<tmp>")) for name in IMPLEMENTATIONS},
        "seed": row.seed, "note": row.note, "batch_order": order, "samples": samples,
    }


# --- the table ------------------------------------------------------------------------------

def verdict(met: bool | None, limit: str) -> str:
    return "-" if met is None else f"{limit} {'met' if met else 'not met'}"


def row_lines(name: str, result: dict[str, Any]) -> list[tuple[str, ...]]:
    if "error" in result:
        return [(name, "FAILED", result["error"][:60], "", "", "", "", "", "")]
    lines: list[tuple[str, ...]] = []
    stats = result["stats"]
    for op in result["ops"]:
        target = result["with_daemon"]["targets"].get(op)
        lines.append(("", op.upper(), f"{stats['ours'][op]['p50']:.2f}",
                      f"{stats[WARM][op]['p50']:.2f}", f"{stats[WARM][op]['p90']:.2f}",
                      f"{stats['reference'][op]['p50']:.2f}",
                      f"{result['ratio_p50'][op]:.2f}x",
                      f"{result['with_daemon']['ratio_p50'][op]:.2f}x",
                      verdict(target["met"], f"<= {target['max_ratio_p50']:g}x")
                      if target else "-"))
    rss = {side: (kb / 1024 if kb else None) for side, kb in result["peak_rss_kb"].items()}
    shown = {side: "-" if mb is None else f"{mb:.1f}" for side, mb in rss.items()}
    lines.append(("", "RSS MB", shown["ours"], shown[WARM], "-", shown["reference"], "-", "-",
                  verdict(result["rss_target"][WARM], f"< {RSS_LIMIT_MB:g} MB")))
    return [(name, *lines[0][1:]), *lines[1:]]


def table(results: dict[str, dict[str, Any]]) -> str:
    header = ("network", "op", "cold p50", "daemon p50", "daemon p90", "ref p50", "cold x",
              "daemon x", "target (daemon)")
    rows_ = [header]
    for name, result in results.items():
        rows_.extend(row_lines(name, result))
    widths = [max(len(row[i]) for row in rows_) for i in range(len(header))]
    left = (0, 1, len(header) - 1)
    lines = ["  ".join(cell.ljust(w) if i in left else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in rows_]
    return "\n".join(lines[:1] + ["-" * len(lines[0])] + lines[1:])


# --- the program ----------------------------------------------------------------------------

def cannot_start() -> str | None:
    return benchlib.cannot_start({
        "ours": ("bridge", "cnv-bridge", "macvlan", "host-device", "loopback", "host-local",
                 "static"),
        "reference": ("bridge", "macvlan", "host-device", "loopback", "host-local", "static")})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100,
                        help="ADD+CHECK+DEL rounds (and VERSION calls) per implementation "
                             "and network")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results")
    parser.add_argument("--smoke", action="store_true",
                        help=f"{SMOKE_ROUNDS} round per row: check the benchmark works")
    args = parser.parse_args(argv)
    rounds = SMOKE_ROUNDS if args.smoke else args.rounds
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    problem = cannot_start()
    if problem:
        print(f"bench_pods: {problem}", file=sys.stderr)
        return 2
    machine = machine_info()
    plan = rows()
    results: dict[str, dict[str, Any]] = {}
    for row in plan:
        try:
            results[row.name] = run_row(row, rounds)
        except (RunFailed, subprocess.SubprocessError, OSError) as exc:
            print(f"bench_pods: {row.name}: {exc}", file=sys.stderr)
            results[row.name] = {"error": str(exc), "seed": row.seed}
    skipped = skipped_seeds({row.seed for row in plan if row.seed})
    report = {"benchmark": "pods", "rounds": rounds, "unit": "ms",
              "targets": {"main_rows": MAIN_TARGETS, "other_rows": COMMON_TARGETS,
                          "rss_max_mb": RSS_LIMIT_MB},
              "cni_path": {name: str(path) for name, path in IMPLEMENTATIONS.items()},
              "machine": machine, "rows": results, "skipped_seeds": skipped}
    path = write_results(args.out, "pods", report)
    print(f"pod networks through libcni, {rounds} rounds, ms (CHECK only at cniVersion >= 0.4.0;"
          f" cold: ours exec'd without a daemon; daemon: with `pycni daemon` on the node;"
          f" RSS: the plugin processes' peak per invocation)")
    print(table(results))
    for row in plan:
        if row.note:
            print(f"{row.name}: {row.note}")
    daemon_mb = [result["daemon_rss_kb"] / 1024 for result in results.values()
                 if result.get("daemon_rss_kb")]
    if daemon_mb:
        print(f"pycni daemon resident set (once per node): {max(daemon_mb):.1f} MB")
    print("seeds not benchmarked:")
    print("\n".join(f"  {name}: {reason}" for name, reason in skipped.items()))
    print(f"results: {path}")
    return 1 if any("error" in result for result in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
