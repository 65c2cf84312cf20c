"""The benchmark itself works: a few rounds, a table, and results for both sides.

No timing is asserted: the numbers depend on the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.benchlib import percentile
from tests.conftest import REPO, needs_root

pytestmark = [pytest.mark.conformance, pytest.mark.bench, pytest.mark.kernel, needs_root]



def test_bench_smoke(built: None, scratch_dir: Path) -> None:
    out = scratch_dir / "results"

    done = subprocess.run([sys.executable, "-m", "conformance.bench", "--smoke", "--out",
                           str(out)], capture_output=True, text=True, timeout=600, cwd=REPO)

    assert done.returncode == 0, f"stdout: {done.stdout}\nstderr: {done.stderr}"
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("op"))
    assert header.split()[:6] == ["op", "ours", "p50", "ours", "p90", "ref"]
    for op in ("VERSION", "ADD", "DEL"):
        assert any(line.split()[:1] == [op] for line in lines), f"no {op} row:\n{done.stdout}"
    report = json.loads((out / "latest.json").read_text())
    assert report["rounds"] == 3
    for side in ("ours", "reference"):
        for op in ("version", "add", "del"):
            stats = report["stats"][side][op]
            assert stats["p50"] > 0 and stats["p90"] > 0, (side, op, stats)
            assert len(report["samples"][side][op]) == 3
    assert list(out.glob("loopback-*.json")), "no timestamped result file"


def test_bench_ipam_smoke(built: None, scratch_dir: Path) -> None:
    out = scratch_dir / "results"

    done = subprocess.run([sys.executable, "-m", "conformance.bench_ipam", "--smoke", "--out",
                           str(out)], capture_output=True, text=True, timeout=600, cwd=REPO)

    assert done.returncode == 0, f"stdout: {done.stdout}\nstderr: {done.stderr}"
    for op in ("ADD@0", "DEL@0", "ADD@1000", "DEL@1000"):
        assert any(line.split()[:1] == [op] for line in done.stdout.splitlines()), done.stdout
    report = json.loads((out / "host-local-latest.json").read_text())
    for side in ("ours", "reference"):
        for op in ("add@0", "del@0", "add@1000", "del@1000"):
            assert len(report["samples"][side][op]) == 3
            assert report["stats"][side][op]["p50"] > 0
    assert set(report["targets"]) == {"add@1000", "del@1000"}


def test_bench_bridge_smoke(built: None, scratch_dir: Path) -> None:
    out = scratch_dir / "results"

    done = subprocess.run([sys.executable, "-m", "conformance.bench_bridge", "--smoke", "--out",
                           str(out)], capture_output=True, text=True, timeout=600, cwd=REPO)

    assert done.returncode == 0, f"stdout: {done.stdout}\nstderr: {done.stderr}"
    lines = done.stdout.splitlines()
    for op in ("ADD", "CHECK", "DEL"):
        assert any(line.split()[:1] == [op] for line in lines), f"no {op} row:\n{done.stdout}"
    assert any(line.startswith("TCP Gbit/s") for line in lines), done.stdout
    report = json.loads((out / "bridge-latest.json").read_text())
    assert report["rounds"] == 3
    for side in ("ours", "reference"):
        for op in ("add", "check", "del"):
            assert len(report["samples"][side][op]) == 3, (side, op)
            assert report["stats"][side][op]["p50"] > 0, (side, op)
        assert report["throughput"]["samples"][side][0] > 0, side
    assert report["throughput"]["seconds"] == 1
    assert set(report["targets"]) == {"add", "del"}
    assert "met" in report["throughput"]["target"]


def test_bench_flannel_smoke(built: None, scratch_dir: Path) -> None:
    out = scratch_dir / "results"

    done = subprocess.run([sys.executable, "-m", "conformance.bench_flannel", "--smoke",
                           "--out", str(out)], capture_output=True, text=True, timeout=600,
                          cwd=REPO)

    assert done.returncode == 0, f"stdout: {done.stdout}\nstderr: {done.stderr}"
    report = json.loads((out / "flannel-latest.json").read_text())
    (row,) = report["programming"]
    assert row["peers"] == 100
    assert row["join_s"] > 0 and row["start_s"] > 0 and row["leave_s"] > 0
    throughput = report["throughput"]
    for path in ("underlay", "vxlan", "host-gw"):
        assert len(throughput["samples"][path]) == 1 and throughput["median"][path] > 0
    assert set(throughput["ratio_to_underlay"]) == {"vxlan", "host-gw"}


def test_bench_macvlan_smoke(built: None, scratch_dir: Path) -> None:
    out = scratch_dir / "results"

    done = subprocess.run([sys.executable, "-m", "conformance.bench_macvlan", "--smoke",
                           "--out", str(out)], capture_output=True, text=True, timeout=600,
                          cwd=REPO)

    assert done.returncode == 0, f"stdout: {done.stdout}\nstderr: {done.stderr}"
    for op in ("ADD", "CHECK", "DEL"):
        assert any(line.split()[:1] == [op] for line in done.stdout.splitlines()), done.stdout
    report = json.loads((out / "macvlan-latest.json").read_text())
    for side in ("ours", "ours+daemon", "reference"):  # cold, served by the daemon, reference
        for op in ("add", "check", "del"):
            assert len(report["samples"][side][op]) == 3
    for op in ("add", "check", "del"):  # the target's ratio is the daemon's
        assert report["stats"]["ours"][op]["p50"] == percentile(
            report["samples"]["ours+daemon"][op], 0.5)
        assert report["cold"]["stats"][op]["p50"] == percentile(report["samples"]["ours"][op], 0.5)
        assert report["ratio_p50"][op] > 0 and report["cold"]["ratio_p50"][op] > 0


def test_bench_multus_smoke(built: None, scratch_dir: Path) -> None:
    out = scratch_dir / "results"

    done = subprocess.run([sys.executable, "-m", "conformance.bench_multus", "--smoke",
                           "--out", str(out)], capture_output=True, text=True, timeout=600,
                          cwd=REPO)

    assert done.returncode == 0, f"stdout: {done.stdout}\nstderr: {done.stderr}"
    for op in ("ADD", "DEL"):
        assert any(line.split()[:1] == [op] for line in done.stdout.splitlines()), done.stdout
    assert "overhead ratio multus/sum" in done.stdout
    report = json.loads((out / "multus-latest.json").read_text())
    assert report["rounds"] == 3
    assert set(report["samples"]["direct"]) == {"cbr0", "business-network", "storage-network"}
    for side in ("multus", "direct"):
        for op in ("add", "del"):
            assert report["stats"][side][op]["n"] == 3, (side, op)
            assert report["stats"][side][op]["p50"] > 0, (side, op)
    for network in report["samples"]["direct"].values():
        assert len(network["add"]) == len(network["del"]) == 3
    assert set(report["ratio_p50"]) == set(report["targets"]) == {"add", "del"}
    assert all(target["max_ratio_p50"] == 1.3 for target in report["targets"].values())
    assert list(out.glob("multus-2*.json")), "no timestamped result file"


def test_bench_pods_smoke(built: None, scratch_dir: Path) -> None:
    out = scratch_dir / "results"

    done = subprocess.run([sys.executable, "-m", "conformance.bench_pods", "--smoke", "--out",
                           str(out)], capture_output=True, text=True, timeout=600, cwd=REPO)

    assert done.returncode == 0, f"stdout: {done.stdout}\nstderr: {done.stderr}"
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("network"))
    assert header.split()[:6] == ["network", "op", "cold", "p50", "daemon", "p50"]
    networks = ("bridge+host-local", "macvlan+host-local", "host-device+static", "loopback",
                "seed business-network", "seed bridge-network", "seed management-network")
    for network in networks:
        assert any(line.startswith(network + " ") for line in lines), f"no {network} row"
    for op in ("CHECK", "DEL", "VERSION", "RSS"):
        assert any(line.split()[:1] == [op] for line in lines), f"no {op} line:\n{done.stdout}"
    assert "seeds not benchmarked:" in lines
    assert any(line.strip().startswith("10-flannel.conflist:") for line in lines)
    report = json.loads((out / "pods-latest.json").read_text())
    assert report["rounds"] == 1
    assert set(report["rows"]) == set(networks)
    for network, row in report["rows"].items():
        assert "error" not in row, (network, row.get("error"))
        for side in ("ours", "ours+daemon", "reference"):
            for op in row["ops"]:
                assert len(row["samples"][side][op]) == 1, (network, side, op)
                assert row["stats"][side][op]["p50"] > 0, (network, side, op)
            assert row["peak_rss_kb"][side] > 0, (network, side)
        assert set(row["ratio_p50"]) == set(row["with_daemon"]["ratio_p50"]) == set(row["ops"])
        assert row["daemon_rss_kb"] > 0
    assert report["rows"]["bridge+host-local"]["ops"] == ["add", "check", "del", "version"]
    assert set(report["rows"]["bridge+host-local"]["targets"]) == {"add", "check", "del",
                                                                    "version"}
    assert "check" not in report["rows"]["seed business-network"]["ops"]  # cniVersion 0.3.1
    assert {"ours", "ours+daemon"} <= set(report["rows"]["loopback"]["rss_target"])
    assert {"10-flannel.conflist", "multus-conf.json", "nad-storage-network.sriov.json",
            "nad-vlan-network.vlan.json"} <= set(report["skipped_seeds"])
    assert list(out.glob("pods-2*.json")), "no timestamped result file"


def test_bench_concurrent_smoke(built: None, scratch_dir: Path) -> None:
    out = scratch_dir / "results"

    done = subprocess.run([sys.executable, "-m", "conformance.bench_concurrent", "--smoke",
                           "--out", str(out)], capture_output=True, text=True, timeout=600,
                          cwd=REPO)

    assert done.returncode == 0, f"stdout: {done.stdout}\nstderr: {done.stderr}"
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("side"))
    assert header.split()[:3] == ["side", "ADD", "p50"]
    for side in ("ours", "ours+daemon", "reference", "ours/ref", "ours+daemon/ref"):
        assert any(line.split()[:1] == [side] for line in lines), f"no {side} row"
    report = json.loads((out / "concurrent-latest.json").read_text())
    assert report["pods"] == 8 and report["rounds"] == 1
    for side in ("ours", "ours+daemon", "reference"):
        summary = report["sides"][side]
        assert summary["add"]["n"] == summary["del"]["n"] == 8, side
        assert summary["add"]["p50"] > 0 and summary["add"]["p99"] > 0, side
        (cycle,) = report["cycles"][side]
        assert cycle["nat_rules_after_add"] >= 8 and cycle["ipam_files_after_add"] >= 8, side
    for side in ("ours", "ours+daemon"):
        assert report["sides"][side]["problems"] == 0
        assert report["sides"][side]["failures"] == []
    assert list(out.glob("concurrent-2*.json")), "no timestamped result file"
