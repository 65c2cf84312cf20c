"""`pycni status`: the node's bundle, config in use, daemon, flannel lease and allocations."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from pycni import main, status

SUBNET_ENV = ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\n"
              "FLANNEL_IPMASQ=true\n")


@pytest.fixture
def node(tmp_path: Path) -> dict[str, Path]:
    dirs = {name: tmp_path / name for name in ("net.d", "bin", "ipam", "run")}
    for directory in dirs.values():
        directory.mkdir()
    bundle = dirs["bin"] / ".pycni-0.1.0-abc"
    bundle.mkdir()
    (bundle / "cni").write_text("#!/bin/sh\n")
    for plugin_type in ("bridge", "macvlan"):
        (dirs["bin"] / plugin_type).symlink_to(".pycni-0.1.0-abc/cni")
    (dirs["net.d"] / "10-flannel.conflist").write_text(json.dumps({
        "cniVersion": "0.3.1", "name": "cbr0",
        "plugins": [{"type": "flannel", "delegate": {"isDefaultGateway": True}},
                    {"type": "portmap", "capabilities": {"portMappings": True}}]}))
    (dirs["net.d"] / "99-other.conf").write_text("{}")
    (dirs["run"] / "subnet.env").write_text(SUBNET_ENV)
    network = dirs["ipam"] / "cbr0"
    network.mkdir()
    (network / "10.244.1.2").write_text("ctr-1\r\neth0")
    (network / "10.244.1.3").write_text("ctr-2\r\neth0")
    return dirs


def args(node: dict[str, Path], socket_path: str) -> list[str]:
    return ["--cni-conf-dir", str(node["net.d"]), "--cni-bin-dir", str(node["bin"]),
            "--subnet-file", str(node["run"] / "subnet.env"), "--ipam-dir", str(node["ipam"]),
            "--socket", socket_path]


def test_a_node_without_the_daemon(node: dict[str, Path],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert status.main(args(node, str(node["run"] / "absent.sock"))) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("pycni ")
    assert lines[1] == f"bundle: {node['bin']}: 2 types linked to .pycni-0.1.0-abc"
    assert lines[2] == (f"config in use: {node['net.d'] / '10-flannel.conflist'} "
                        "(network 'cbr0': bridge, flannel, host-local, portmap)")
    assert lines[3].startswith("daemon: not answering (") and "start cold" in lines[3]
    assert lines[4] == "flannel: subnet 10.244.1.1/24 of 10.244.0.0/16, MTU 1450, ipmasq true"
    assert lines[5] == "allocations: cbr0 2"


def test_json_with_a_daemon_answering(node: dict[str, Path],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = str(node["run"] / "daemon.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(1)

        assert status.main([*args(node, path), "--json"]) == 0

    found = json.loads(capsys.readouterr().out)
    assert found["daemon"] == {"socket": path, "answering": True}
    assert found["config"]["others"] == ["99-other.conf"]
    assert found["flannel"]["mtu"] == 1450
    assert found["allocations"] == {"cbr0": 2}


def test_nothing_installed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = {name: tmp_path / name for name in ("net.d", "bin", "ipam", "run")}

    assert status.main(args(empty, "")) == 0

    out = capsys.readouterr().out
    assert "0 types linked to nothing" in out
    assert "config: " in out and "No such file or directory" in out
    assert "daemon: not answering (turned off" in out
    assert "flannel: " in out and "missing (is the agent running?)" in out
    assert "allocations: none" in out


def test_listed_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main.main(["pycni", "help"])
    assert "  status   " in capsys.readouterr().out
