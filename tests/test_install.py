"""pycni.install: versioned bundle directories and link swaps by rename."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

import pycni
from pycni import install

TYPES = ("bridge", "loopback")


def make_dist(root: Path, flavour: str) -> Path:
    """A fake `dist/bin`: the bundle directory plus one link per type."""
    dist = root / "dist" / "bin"
    bundle = dist / "pycni.bundle"
    (bundle / "_internal").mkdir(parents=True, exist_ok=True)
    for program in ("pycni", "cni"):  # the full program and the launcher the links point to
        exe = bundle / program
        exe.write_text(f"#!/bin/sh\necho {flavour} \"$(basename \"$0\")\"\n")
        exe.chmod(0o755)
    (bundle / "_internal" / "x").write_text(f"library {flavour}\n")
    for plugin_type in TYPES:
        if not (dist / plugin_type).is_symlink():
            (dist / plugin_type).symlink_to("pycni.bundle/cni")
    return dist


def bundle_dirs(target: Path) -> list[str]:
    return sorted(n for n in os.listdir(target) if n.startswith(install.BUNDLE_PREFIX))


def expected_name(dist: Path) -> str:
    digest = install.bundle_digest(str(dist / "pycni.bundle"))
    return f".pycni-{pycni.__version__}-{digest}"


def assert_links_point_to(target: Path, name: str, flavour: str) -> None:
    for plugin_type in TYPES:
        link = target / plugin_type
        assert link.is_symlink(), f"{link} is not a symlink"
        assert os.readlink(link) == f"{name}/cni"  # relative: the tree can move
        run = subprocess.run([str(link)], capture_output=True, text=True, check=True)
        assert run.stdout == f"{flavour} {plugin_type}\n"


def test_install_then_upgrade_twice(tmp_path: Path) -> None:
    target = tmp_path / "dest" / "opt" / "cni" / "bin"
    target.mkdir(parents=True)
    (target / "loopback").write_bytes(b"\x7fELF an old Go binary")  # a regular file to replace
    (target / "host-local").write_bytes(b"\x7fELF not ours")  # left alone

    dist = make_dist(tmp_path, "first")
    first = expected_name(dist)
    assert install.install(str(dist), str(target)) == str(target / first)
    assert bundle_dirs(target) == [first]
    assert_links_point_to(target, first, "first")
    assert (target / first / "_internal" / "x").read_text() == "library first\n"
    assert os.access(target / first / "pycni", os.X_OK)

    make_dist(tmp_path, "second")
    second = expected_name(dist)
    assert second != first
    install.install(str(dist), str(target))
    assert_links_point_to(target, second, "second")
    assert bundle_dirs(target) == sorted([first, second])  # the previous one stays

    make_dist(tmp_path, "third")
    third = expected_name(dist)
    install.install(str(dist), str(target))
    assert_links_point_to(target, third, "third")
    # The bundle the links used until now stays for processes still running it; the one
    # before is gone. Whatever the directories' timestamps say.
    assert bundle_dirs(target) == sorted([second, third])

    assert (target / "host-local").read_bytes() == b"\x7fELF not ours"
    assert sorted(os.listdir(target)) == sorted([*TYPES, "host-local", second, third])


def test_installing_the_same_bundle_twice_is_a_no_op_for_the_bundle(tmp_path: Path) -> None:
    target = tmp_path / "bin"
    dist = make_dist(tmp_path, "first")
    install.install(str(dist), str(target))
    make_dist(tmp_path, "second")
    name = expected_name(dist)
    install.install(str(dist), str(target))
    before = os.stat(target / name / "_internal" / "x")
    install.install(str(dist), str(target))
    after = os.stat(target / name / "_internal" / "x")
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert_links_point_to(target, name, "second")
    assert len(bundle_dirs(target)) == 2  # reinstalling prunes nothing new
    assert not [n for n in os.listdir(target) if n.startswith((".staging", ".loopback", ".bridge"))]


def test_rollback_to_a_kept_bundle(tmp_path: Path) -> None:
    target = tmp_path / "bin"
    dist = make_dist(tmp_path, "first")
    install.install(str(dist), str(target))
    first = expected_name(dist)
    make_dist(tmp_path, "second")
    install.install(str(dist), str(target))
    second = expected_name(dist)
    make_dist(tmp_path, "first")  # the same content as the first install
    assert expected_name(dist) == first
    install.install(str(dist), str(target))
    assert_links_point_to(target, first, "first")
    assert bundle_dirs(target) == sorted([first, second])


def test_links_never_disappear_during_an_upgrade(tmp_path: Path) -> None:
    target = tmp_path / "bin"
    dist = make_dist(tmp_path, "v0")
    install.install(str(dist), str(target))
    stop = threading.Event()
    missing: list[str] = []

    def watch() -> None:
        while not stop.is_set():
            for plugin_type in TYPES:
                link = target / plugin_type
                if not link.is_symlink() or not os.path.isfile(link):
                    missing.append(plugin_type)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i in range(1, 8):
            make_dist(tmp_path, f"v{i}")
            install.install(str(dist), str(target))
    finally:
        stop.set()
        watcher.join()
    assert missing == []
    assert len(bundle_dirs(target)) == 2


def test_leftover_temporary_link_is_replaced(tmp_path: Path) -> None:
    target = tmp_path / "bin"
    target.mkdir()
    stale = target / f".loopback.{os.getpid()}.new"
    stale.write_text("left by a crashed install")
    dist = make_dist(tmp_path, "first")
    install.install(str(dist), str(target))
    assert not os.path.lexists(stale)
    assert_links_point_to(target, expected_name(dist), "first")


def test_missing_bundle_exits_with_a_message(tmp_path: Path) -> None:
    source = tmp_path / "dist" / "bin"
    source.mkdir(parents=True)
    (source / "loopback").symlink_to("pycni.bundle/cni")
    target = tmp_path / "dest"
    with pytest.raises(SystemExit) as info:
        install.install(str(source), str(target))
    message = str(info.value.code)
    assert "no bundle" in message
    assert str(source / "pycni.bundle") in message
    assert not target.exists()


def test_bundle_digest(tmp_path: Path) -> None:
    dist = make_dist(tmp_path, "first")
    bundle = str(dist / "pycni.bundle")
    digest = install.bundle_digest(bundle)
    assert len(digest) == 12 and int(digest, 16) >= 0
    assert install.bundle_digest(bundle) == digest  # stable
    os.rename(dist / "pycni.bundle" / "_internal" / "x", dist / "pycni.bundle" / "_internal" / "y")
    assert install.bundle_digest(bundle) != digest  # names count
    os.rename(dist / "pycni.bundle" / "_internal" / "y", dist / "pycni.bundle" / "_internal" / "x")
    assert install.bundle_digest(bundle) == digest
    (dist / "pycni.bundle" / "_internal" / "x").write_text("changed\n")
    assert install.bundle_digest(bundle) != digest  # content counts


def test_main_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dist = make_dist(tmp_path, "first")
    target = tmp_path / "bin"
    install.main(["--from", str(dist), "--to", str(target)])
    assert capsys.readouterr().err.strip() == str(target / expected_name(dist))
    assert_links_point_to(target, expected_name(dist), "first")
