"""Namespace helpers: validation before any work, and entering briefly then coming back."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pycni import ifflags, netns
from pycni.errors import InvalidEnvironment, OwnNamespace, UnknownContainer
from tests.conftest import PYCNI, Netns, cni_env, run_exec


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


def test_a_plugin_on_another_node_namespace_refuses_the_initial_one(host_ns: Netns) -> None:
    """Run from a sandbox node, a plugin given the machine's own namespace (init's) refuses it
    before doing anything: code 8, or 4 where this kernel denies opening init's namespace."""
    conf = {"cniVersion": "1.0.0", "name": "lo-net", "type": "loopback"}
    for command in ("ADD", "CHECK", "DEL"):
        run = run_exec([*PYCNI, "loopback"], cni_env(command, netns="/proc/1/ns/net"), conf,
                       in_ns=host_ns)
        assert run.status == 1, run
        assert run.json()["code"] in (4, 8), run


def test_validate_refuses_the_initial_namespace(pod_ns: Netns,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "INIT_PATH", pod_ns.path)  # as if the pod's were init's
    with pytest.raises(OwnNamespace, match="the machine's initial network namespace"):
        netns.validate(pod_ns.path)


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
