"""Benchmark the flannel agent's control plane and the pod network's data plane.

    python -m conformance.bench_flannel [--peers 1000,10000] [--iperf-seconds S]
                                        [--iperf-repeats N] [--out DIR] [--smoke]

Programming: one sandbox node runs the frozen agent (vxlan, file store, Network 10.0.0.0/8 so
10,000 /24 leases fit). N peer leases appear in the store at once (renamed into place); the
clock runs from then until the node's kernel holds all N routes on flannel.1 (with their
neighbour and FDB entries), then until the agent, restarted, has them again ("start"), then
until they are gone after the leases are removed. Targets: 1,000 peers within 2 s, 10,000
within 20 s (joining).

Data plane: a two-node cluster per backend (vxlan, host-gw) with a pod on each node made
through libcni from the seed conflist; iperf3 TCP pod to pod across the nodes, against the
underlay alone (node to node), alternating. Reported as ratios to the underlay.

Targets are reported, not asserted. Results go to DIR/flannel-<timestamp>.json and
DIR/flannel-latest.json. Exit status: 0 when every run worked, 1 when one failed, 2 when the
benchmark cannot start.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from conformance import benchlib
from conformance.bench_bridge import iperf3
from conformance.benchlib import REPO, RunFailed, machine_info, write_results
from conformance.flannellib import PROGRAM, SEEDS, Pod, add_pod
from tests.conftest import NetnsFactory
from tests.flannelcluster import Cluster, Node, wait_for

TARGETS = {1000: 2.0, 10000: 20.0}       # seconds to program N joining peers
BIG_NETWORK = {"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan"}}


def peer_lease(index: int) -> tuple[str, bytes]:
    """A made-up peer: subnet 10.<hi>.<lo>.0/24, node 172.16.x.y, a VTEP MAC of its own."""
    subnet = ipaddress.IPv4Network((0x0A000000 + (index + 2) * 256, 24))
    public_ip = ipaddress.IPv4Address(0xAC100000 + index + 1)
    mac = "0a:58:" + ":".join(f"{byte:02x}" for byte in (index + 1).to_bytes(4, "big"))
    expiration = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(time.time() + 86400))
    body = {"PublicIP": str(public_ip), "BackendType": "vxlan",
            "BackendData": {"VNI": 1, "VtepMAC": mac}, "Expiration": expiration}
    return f"{subnet.network_address}-24", json.dumps(body).encode()


def vxlan_counts(node: Node) -> tuple[int, int, int]:
    """(routes, permanent neighbours, FDB entries) on flannel.1."""
    def count(*cmd: str) -> int:
        done = node.netns.run(*cmd, check=False)
        return len(done.stdout.splitlines())
    return (count("ip", "route", "show", "dev", "flannel.1"),
            count("ip", "neigh", "show", "dev", "flannel.1", "nud", "permanent"),
            count("bridge", "fdb", "show", "dev", "flannel.1"))


def timed(node: Node, want: int, timeout: float) -> float:
    started = time.monotonic()
    done = wait_for(lambda: vxlan_counts(node)[0] == want, timeout, interval=0.02)
    if not done:
        raise RunFailed(f"{want} routes not programmed within {timeout} s: "
                        f"{vxlan_counts(node)}; agent log:\n"
                        f"{node.agent_log.read_text()[-2000:]}")
    return time.monotonic() - started


def program_peers(factory: NetnsFactory, root: Path, peers: int) -> dict[str, Any]:
    cluster = Cluster(factory, root / f"peers{peers}", BIG_NETWORK, nodes=1, program=PROGRAM)
    try:
        cluster.start()
        (node,) = cluster.nodes
        staging = cluster.store_dir / "staging"
        staging.mkdir()
        for index in range(peers):
            name, body = peer_lease(index)
            (staging / name).write_bytes(body)
        subnets = cluster.store_dir / "subnets"
        started = time.monotonic()
        for path in staging.iterdir():
            path.rename(subnets / path.name)
        timed(node, peers, 120)
        join = time.monotonic() - started
        counts = vxlan_counts(node)
        if counts != (peers, peers, peers):
            raise RunFailed(f"expected {peers} routes, neighbours and FDB entries: {counts}")
        node.stop_agent()
        node.subnet_file.unlink()
        node.netns.run("ip", "route", "flush", "dev", "flannel.1")
        started = time.monotonic()
        node.start_agent()
        timed(node, peers, 120)
        start = time.monotonic() - started
        started = time.monotonic()
        for path in subnets.iterdir():
            if path.name.startswith("10.") and path.name != node.subnet().replace("/", "-"):
                path.unlink()
        timed(node, 0, 120)
        leave = time.monotonic() - started
    finally:
        cluster.close()
    target = TARGETS.get(peers)
    return {"peers": peers, "join_s": join, "start_s": start, "leave_s": leave,
            "target_s": target, "met": None if target is None else join <= target}


def data_plane(factory: NetnsFactory, root: Path, seconds: int,
               repeats: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {"underlay": [], "vxlan": [], "host-gw": []}
    clusters: dict[str, Cluster] = {}
    pods: dict[str, tuple[Pod, Pod]] = {}
    try:
        for backend in ("vxlan", "host-gw"):
            conf = json.loads((SEEDS / f"net-conf.{backend}.json").read_text())
            cluster = Cluster(factory, root / f"dp-{backend}", conf, nodes=2, program=PROGRAM)
            clusters[backend] = cluster
            cluster.start()
            first, second = cluster.nodes
            pods[backend] = (add_pod(factory, first), add_pod(factory, second))
        vxlan = clusters["vxlan"]
        for repeat in range(repeats):
            order = ["underlay", "vxlan", "host-gw"]
            for name in (order if repeat % 2 == 0 else order[::-1]):
                if name == "underlay":
                    first, second = vxlan.nodes
                    samples[name].append(iperf3(second.netns.name, first.netns.name,
                                                second.address, seconds))
                else:
                    client, server = pods[name]
                    samples[name].append(iperf3(server.netns.name, client.netns.name,
                                                server.address, seconds))
    finally:
        for pair in pods.values():
            for pod in pair:
                pod.delete()
        for cluster in clusters.values():
            cluster.close()
    medians = {name: statistics.median(values) for name, values in samples.items()}
    return {"unit": "Gbit/s", "seconds": seconds, "repeats": repeats, "median": medians,
            "ratio_to_underlay": {name: medians[name] / medians["underlay"]
                                  for name in ("vxlan", "host-gw")},
            "samples": samples}


def cannot_start() -> str | None:
    return benchlib.cannot_start({}, programs=(Path(PROGRAM[0]),),
                                 tools=("iperf3", "ss", "unshare", "bridge"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", default="1000,10000",
                        help="comma-separated peer counts (default 1000,10000)")
    parser.add_argument("--iperf-seconds", type=int, default=5)
    parser.add_argument("--iperf-repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench-results")
    parser.add_argument("--smoke", action="store_true",
                        help="100 peers and one 1-second iperf3 run per path")
    args = parser.parse_args(argv)
    peer_counts = [100] if args.smoke else [int(n) for n in args.peers.split(",")]
    seconds, repeats = (1, 1) if args.smoke else (args.iperf_seconds, args.iperf_repeats)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    problem = cannot_start()
    if problem:
        print(f"bench_flannel: {problem}", file=sys.stderr)
        return 2
    machine = machine_info()
    factory = NetnsFactory()
    try:
        with tempfile.TemporaryDirectory(prefix="pycni-bench-flannel-") as scratch:
            root = Path(scratch)
            programming = [program_peers(factory, root, peers) for peers in peer_counts]
            throughput = data_plane(factory, root, seconds, repeats)
    except (RunFailed, AssertionError, subprocess.SubprocessError, OSError) as exc:
        print(f"bench_flannel: {exc}", file=sys.stderr)
        return 1
    finally:
        factory.remove_all()
    report = {"benchmark": "flannel", "machine": machine, "programming": programming,
              "throughput": throughput}
    path = write_results(args.out, "flannel", report)
    print("flannel agent: time until the kernel holds every peer (vxlan, file store), s")
    print(f"{'peers':>6}  {'join':>7}  {'start':>7}  {'leave':>7}  target")
    for row in programming:
        verdict = ("" if row["target_s"] is None else
                   f"join <= {row['target_s']:g} s {'met' if row['met'] else 'not met'}")
        print(f"{row['peers']:>6}  {row['join_s']:7.2f}  {row['start_s']:7.2f}  "
              f"{row['leave_s']:7.2f}  {verdict}")
    median, ratio = throughput["median"], throughput["ratio_to_underlay"]
    print(f"iperf3 across nodes, {repeats} x {seconds} s, Gbit/s (median)")
    print(f"underlay {median['underlay']:.2f}  vxlan {median['vxlan']:.2f} "
          f"({ratio['vxlan']:.2f}x)  host-gw {median['host-gw']:.2f} ({ratio['host-gw']:.2f}x)")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
