"""Namespace helpers: validation before any work, and entering briefly then coming back."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pycni import ifflags, netns
from pycni.errors import InvalidEnvironment, OwnNamespace, UnknownContainer
from tests.conftest import Netns


def inode(path: str) -> int:
    return os.stat(path).st_ino


def test_validate_accepts_another_netns(pod_ns: Netns) -> None:
    assert netns.validate(pod_ns.path) is True


def test_validate_missing(tmp_path: Path) -> None:
    with pytest.raises(UnknownContainer, match="does not exist"):
        netns.validate(str(tmp_path / "none"))
    assert netns.validate(str(tmp_path / "none"), missing_ok=True) is False


def test_validate_not_a_netns(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidEnvironment, match="not a network namespace"):
        netns.validate(str(tmp_path / "file"))
    with pytest.raises(InvalidEnvironment, match="not a network namespace"):
        netns.validate("/proc/self/ns/uts")


def test_validate_refuses_own_namespace() -> None:
    with pytest.raises(OwnNamespace):
        netns.validate("/proc/self/ns/net")


def test_entered_switches_and_restores(pod_ns: Netns) -> None:
    home = inode(netns.own_path())
    with netns.entered(pod_ns.path):
        assert inode(netns.own_path()) == inode(pod_ns.path)
        assert not ifflags.is_up("lo")
        ifflags.set_up("lo")
        assert ifflags.addresses("lo")[0] == "127.0.0.1/8"
    assert inode(netns.own_path()) == home
    assert "UP" in pod_ns.link("lo")["flags"]


def test_entered_restores_after_error(pod_ns: Netns) -> None:
    home = inode(netns.own_path())
    with pytest.raises(OSError), netns.entered(pod_ns.path):
        ifflags.set_up("nosuch0")
    assert inode(netns.own_path()) == home


def test_entered_missing_namespace(tmp_path: Path) -> None:
    home = inode(netns.own_path())
    with pytest.raises(UnknownContainer), netns.entered(str(tmp_path / "gone")):
        pass
    assert inode(netns.own_path()) == home


def test_ipr_is_bound_to_the_namespace_and_never_creates_one(pod_ns: Netns,
                                                             tmp_path: Path) -> Any:
    pod_ns.run("ip", "link", "set", "lo", "mtu", "1300")
    with netns.ipr(pod_ns.path) as ipr:
        (lo,) = ipr.get_links(ifname="lo")
        assert lo.get("mtu") == 1300
    with pytest.raises(OSError):
        netns.ipr("/var/run/netns/pycni-does-not-exist").close()
    assert not os.path.exists("/var/run/netns/pycni-does-not-exist")
