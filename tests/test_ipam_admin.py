"""`pycni ipam ls|gc`: what an operator sees and frees."""

from __future__ import annotations

from pathlib import Path

import pytest
from pycni.ipam.host_local import admin

from tests.conftest import PYCNI, run_exec
from tests.test_host_local import add, from_earlier_boot, held, legacy, write_reference_file


@pytest.fixture
def network(tmp_path: Path) -> Path:
    conf = legacy(tmp_path)
    add(conf, cid="live")
    add(conf, cid="rebooted", ifname="net1")
    net_dir = tmp_path / "net1"
    from_earlier_boot(net_dir, "10.1.0.3")
    write_reference_file(net_dir, "10.1.0.9", "ancient")  # old reference format, no ifname
    return net_dir


def test_ls_lists_every_allocation(network: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert admin.main(["--data-dir", str(network.parent), "ls"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NETWORK", "ADDRESS", "CONTAINER", "IFNAME", "BOOT", "AGE"]
    rows = {line.split()[1]: line.split() for line in lines[1:]}
    assert rows["10.1.0.2"][:5] == ["net1", "10.1.0.2", "live", "eth0", "current"]
    assert rows["10.1.0.3"][:5] == ["net1", "10.1.0.3", "rebooted", "net1", "earlier"]
    assert rows["10.1.0.9"][:4] == ["net1", "10.1.0.9", "ancient", "-"]


def test_gc_frees_earlier_boots(network: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert admin.main(["--data-dir", str(network.parent), "gc", "net1", "--dry-run"]) == 0
    assert "would free net1 10.1.0.3 (rebooted/net1)" in capsys.readouterr().out
    assert set(held(network)) == {"10.1.0.2", "10.1.0.3", "10.1.0.9"}
    assert admin.main(["--data-dir", str(network.parent), "gc", "net1"]) == 0
    assert "freed net1 10.1.0.3" in capsys.readouterr().out
    assert set(held(network)) == {"10.1.0.2", "10.1.0.9"}
    assert (network / "lock").exists() and (network / "last_reserved_ip.0").exists()


def test_gc_with_valid_list(network: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--data-dir", str(network.parent), "gc", "net1", "--valid", "rebooted/net1"]
    assert admin.main(argv) == 0
    assert set(held(network)) == {"10.1.0.3"}
    assert "freed 2 allocation(s) in net1" in capsys.readouterr().err


def test_gc_refuses_malformed_valid(network: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--data-dir", str(network.parent), "gc", "net1", "--valid", "no-slash"]
    assert admin.main(argv) == 2
    assert "CONTAINER/IFNAME" in capsys.readouterr().err
    assert len(held(network)) == 3


def test_through_the_program(network: Path) -> None:
    done = run_exec([*PYCNI, "ipam", "--data-dir", str(network.parent), "ls", "net1"], {}, b"")
    assert done.status == 0 and "rebooted" in done.stdout
