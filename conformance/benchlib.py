"""What the benchmarks share: percentiles, batching, the summary, the table, the results file.

Each benchmark times ours and the reference in the same run, in alternating batches so that
drift in the machine's load falls on both, and reports p50/p90 and the ratio ours/reference.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# PYCNI_CNITOOL: another cnitool build to drive (e.g. one being tried out).
CNITOOL = Path(os.environ.get("PYCNI_CNITOOL") or REPO / "dist" / "cnitool")
IMPLEMENTATIONS = {"ours": REPO / "dist" / "bin", "reference": Path("/usr/lib/cni")}
# "<implementation>+daemon": the same programs with `pycni daemon` serving them on the node.
DAEMON = "+daemon"
BATCHES = 4
SMOKE_ROUNDS = 3


class RunFailed(Exception):
    pass


def cannot_start(plugins: dict[str, tuple[str, ...]], programs: tuple[Path, ...] = (),
                 tools: tuple[str, ...] = ()) -> str | None:
    """Why a benchmark cannot run here, None when it can: root, cnitool, each implementation's
    plugins, other programs it runs, tools on PATH."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    remedies = {"ours": "run `make build`",
                "reference": "apt-get install containernetworking-plugins"}
    needed = [(IMPLEMENTATIONS[side] / plugin, remedies[side])
              for side, names in plugins.items() for plugin in names]
    needed += [(CNITOOL, "run `make cnitool`"), *((path, "run `make build`") for path in programs)]
    for path, remedy in needed:
        if not os.access(path, os.X_OK):
            return f"{path} is missing: {remedy}"
    for tool in tools:
        if not shutil.which(tool):
            return f"{tool} is missing: install it (apt-get install iperf3 iproute2 util-linux)"
    return None


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


def batch_orders(rounds: int, names: list[str]) -> list[tuple[list[str], int]]:
    """Per batch: the implementations in the order they run (alternating), and its size."""
    return [(names if index % 2 == 0 else names[::-1], size)
            for index, size in enumerate(batch_sizes(rounds))]


def summarize(samples: dict[str, dict[str, list[float]]], ops: tuple[str, ...],
              targets: dict[str, float]) -> dict[str, Any]:
    """Per implementation and op: p50/p90/min/max/mean; the p50 ratio ours/reference; the
    targets (ours p50 at most so many times the reference's) met or not."""
    stats = {
        name: {op: {"p50": percentile(values, 0.5), "p90": percentile(values, 0.9),
                    "min": min(values), "max": max(values),
                    "mean": sum(values) / len(values), "n": len(values)}
               for op, values in by_op.items()}
        for name, by_op in samples.items()
    }
    ratios = {op: stats["ours"][op]["p50"] / stats["reference"][op]["p50"] for op in ops}
    verdicts = {op: {"max_ratio_p50": limit, "met": ratios[op] <= limit}
                for op, limit in targets.items()}
    return {"stats": stats, "ratio_p50": ratios, "targets": verdicts}


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


def table(summary: dict[str, Any], ops: tuple[str, ...]) -> str:
    header = ("op", "ours p50", "ours p90", "ref p50", "ref p90", "ratio p50", "target")
    rows = [header]
    for op in ops:
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


def write_results(out: Path, name: str, report: dict[str, Any]) -> Path:
    """DIR/<name>-<timestamp>.json and DIR/<name>-latest.json (and latest.json)."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(report, indent=2) + "\n"
    path = out / f"{name}-{stamp}.json"
    path.write_text(text)
    (out / f"{name}-latest.json").write_text(text)
    (out / "latest.json").write_text(text)
    return path


class Sandbox:
    """One implementation's node for cnitool: a host namespace, pods on demand, and a scratch
    directory holding the conflist `make_conflist(scratch)` as NETCONFPATH; all removed on
    exit."""

    def __init__(self, implementation: str, make_conflist: Callable[[Path], dict[str, Any]],
                 ifname: str = "eth0", prepare: Callable[[str], None] | None = None) -> None:
        """`prepare(host_netns_name)` sets up the node (e.g. a master link) before use."""
        self.implementation, self.make_conflist, self.ifname = (
            implementation, make_conflist, ifname)
        self.prepare = prepare
        self.network = ""
        self.tag = f"{implementation[:3]}-{uuid.uuid4().hex[:8]}"
        self.host = f"pycni-bench-host-{self.tag}"
        self.created: list[str] = []
        self.dir = Path()
        # The largest resident set (KiB) of any plugin process its `bench` runs ran; None
        # until one ran, or with a cnitool that does not report it.
        self.peak_rss_kb: int | None = None
        self.server: subprocess.Popen[bytes] | None = None
        self.server_rss_kb: int | None = None  # the daemon's resident set when it stopped

    @property
    def cni_path(self) -> Path:
        return IMPLEMENTATIONS[self.implementation.removesuffix(DAEMON)]

    @property
    def server_socket(self) -> Path:
        return self.dir / "daemon.sock"

    def __enter__(self) -> Sandbox:
        self.dir = Path(tempfile.mkdtemp(prefix=f"pycni-bench-{self.implementation}-"))
        try:
            self.netns(self.host)
            if self.prepare is not None:
                self.prepare(self.host)
            conflist = self.make_conflist(self.dir)
            self.network = str(conflist["name"])
            (self.dir / "net.d").mkdir()
            (self.dir / "net.d" / "10-net.conflist").write_text(json.dumps(conflist))
            if self.implementation.endswith(DAEMON):
                self.start_server()
        except BaseException:
            self.__exit__()
            raise
        return self

    def start_server(self) -> None:
        """`pycni daemon` in the node's namespace, listening on a socket in the scratch dir."""
        log = open(self.dir / "daemon.log", "wb")  # noqa: SIM115 - closed with the sandbox
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.host, str(self.cni_path / "pycni.bundle" / "pycni"),
             "daemon", "--socket", str(self.server_socket)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 60
        while not self.server_socket.exists():
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise RunFailed(f"pycni daemon did not start: "
                                f"{(self.dir / 'daemon.log').read_text()[-500:]}")
            time.sleep(0.05)

    def stop_server(self) -> None:
        if self.server is None:
            return
        try:
            with open(f"/proc/{self.server.pid}/status") as status:
                self.server_rss_kb = next(int(line.split()[1]) for line in status
                                          if line.startswith("VmRSS:"))
        except (OSError, StopIteration, ValueError):
            pass
        self.server.terminate()
        try:
            self.server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()
        self.server = None

    def __exit__(self, *exc: object) -> None:
        self.stop_server()
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.created.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def netns(self, name: str) -> str:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        self.created.append(name)
        return name

    def pod(self, role: str) -> str:
        return self.netns(f"pycni-bench-{role}-{self.tag}")

    def environment(self, container_id: str) -> dict[str, str]:
        """cnitool's environment for this node and one container."""
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "NETCONFPATH": str(self.dir / "net.d"),
            "CNI_PATH": str(self.cni_path),
            "CNI_CACHE_DIR": str(self.dir / "cache"),
            # host-device's records in the sandbox, not the machine's /var/lib/cni
            "PYCNI_HOST_DEVICE_DATA_DIR": str(self.dir / "host-device"),
            "CNI_IFNAME": self.ifname,
            "CNI_CONTAINERID": container_id,
            # the daemon's socket, or none: a daemon running on this machine is not used
            "PYCNI_DAEMON_SOCKET": str(self.server_socket) if self.server else "",
        }

    def command(self, *args: str) -> list[str]:
        """`cnitool <args>` run inside the node's namespace."""
        return ["ip", "netns", "exec", self.host, str(CNITOOL), *args]

    def cnitool(self, *args: str, container_id: str) -> str:
        done = subprocess.run(self.command(*args), env=self.environment(container_id),
                              capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise RunFailed(f"{self.implementation}: cnitool {args[0]} exited "
                            f"{done.returncode}: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def bench(self, pod: str, rounds: int, ops: tuple[str, ...]) -> dict[str, list[float]]:
        """One `cnitool bench` run (ADD, CHECK, DEL and VERSION timed inside libcni); the
        plugins' peak RSS it reports is kept in `peak_rss_kb`."""
        stdout = self.cnitool("bench", self.network, f"/var/run/netns/{pod}", str(rounds),
                              container_id=f"bench-{self.implementation.replace('+', '-')}")
        try:
            samples: dict[str, Any] = json.loads(stdout)
        except ValueError as exc:
            raise RunFailed(f"{self.implementation}: cnitool bench printed no JSON: "
                            f"{stdout!r}") from exc
        rss = samples.get("maxrss_kb")
        if isinstance(rss, int) and rss > 0:
            self.peak_rss_kb = max(rss, self.peak_rss_kb or 0)
        return {op: samples[op] for op in ops}


def run_cnitool_bench(sandboxes: dict[str, Sandbox], rounds: int, ops: tuple[str, ...]
                      ) -> tuple[dict[str, dict[str, list[float]]], list[list[str]]]:
    """All samples per implementation and op, and the order the batches ran in."""
    samples: dict[str, dict[str, list[float]]] = {
        name: {op: [] for op in ops} for name in sandboxes}
    pods = {name: sandbox.pod("pod") for name, sandbox in sandboxes.items()}
    order: list[list[str]] = []
    for name, sandbox in sandboxes.items():  # warm-up, discarded: first-exec costs, setup
        sandbox.bench(pods[name], 1, ops)
    for names, size in batch_orders(rounds, list(sandboxes)):
        order.append(names)
        for name in names:
            for op, values in sandboxes[name].bench(pods[name], size, ops).items():
                samples[name][op].extend(values)
    return samples, order
