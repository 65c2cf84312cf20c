"""`pycni daemon`: plugin starts run by a warm server stand exactly for an exec'd plugin.

The server runs in a sandbox namespace of its own; callers run in another sandbox "host"
namespace (and, for the mount namespace test, in a mount namespace of their own): the work must
land where the caller is, never where the server is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from pycni import launch
from tests.conftest import PYCNI, Netns, NetnsFactory, cni_env, run_exec

pytestmark = pytest.mark.kernel


class Server(NamedTuple):
    socket: str
    process: subprocess.Popen[bytes]
    netns: Netns


@pytest.fixture
def server(netns_factory: NetnsFactory) -> Iterator[Server]:
    """`pycni daemon` in a sandbox namespace of its own, on a socket in a scratch directory."""
    where = netns_factory("daemon")
    with tempfile.TemporaryDirectory(prefix="pycni-daemon-") as scratch:
        path = os.path.join(scratch, "run", "daemon.sock")
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        process = subprocess.Popen(["ip", "netns", "exec", where.name, *PYCNI, "daemon",
                                    "--socket", path], env=env, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while not os.path.exists(path):
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "the server did not start listening"
                time.sleep(0.05)
            yield Server(path, process, where)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stderr:
                process.stderr.close()
        assert not os.path.exists(path), "the server left its socket behind"


def macvlan_conf(data_dir: Path, **extra: Any) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "biz", "type": "macvlan", "master": "eth1",
            "ipam": {"type": "host-local", "subnet": "192.168.100.0/24",
                     "dataDir": str(data_dir)}, **extra}


@pytest.fixture
def node(host_ns: Netns) -> Netns:
    """The caller's namespace, with the macvlan master."""
    host_ns.run("ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth1-peer")
    host_ns.run("ip", "link", "set", "eth1", "up")
    return host_ns


def run(server: Server | None, plugin_type: str, env: dict[str, str], conf: Any, ns: Netns,
        prefix: list[str] | None = None) -> Any:
    env = {**env, launch.SOCKET_ENV: server.socket if server else ""}
    return run_exec([*(prefix or []), *PYCNI, plugin_type], env, conf, in_ns=ns)


def test_encoding_round_trip() -> None:
    environ = {b"CNI_COMMAND": b"ADD", b"CNI_ARGS": b"IgnoreUnknown=1;K8S_POD_NAME=a=b",
               b"EMPTY": b""}
    payload = launch.encode(["/opt/cni/bin/macvlan", "x y"], environ, b"/var/lib")

    argv, decoded, cwd = launch.decode(payload)

    assert argv == ["/opt/cni/bin/macvlan", "x y"]
    assert decoded == {"CNI_COMMAND": "ADD", "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=a=b",
                       "EMPTY": ""}
    assert cwd == "/var/lib"


def test_socket_is_for_root_only(server: Server) -> None:
    mode = os.stat(server.socket).st_mode & 0o777
    assert mode == 0o600
    assert os.stat(os.path.dirname(server.socket)).st_mode & 0o077 == 0


def test_server_runs_in_the_callers_namespaces(server: Server, node: Netns, pod_ns: Netns,
                                               cni_bin: Path, tmp_path: Path) -> None:
    conf = macvlan_conf(tmp_path / "ipam")
    env = cni_env("ADD", pod_ns.path, ifname="net1", path=str(cni_bin), PYCNI_LOG_LEVEL="DEBUG")

    added = run(server, "macvlan", env, conf, node)

    result = added.ok()
    assert f"run by pycni daemon {server.process.pid} for caller" in added.stderr
    assert result["ips"][0]["address"] == "192.168.100.2/24"
    link = pod_ns.ip_json("-d", "link", "show", "dev", "net1")[0]
    assert link["linkinfo"]["info_kind"] == "macvlan"
    assert link["address"] == result["interfaces"][0]["mac"]
    addresses = pod_ns.ip_json("-4", "addr", "show", "net1")[0]["addr_info"]
    assert [a["local"] for a in addresses] == ["192.168.100.2"]
    # the master was found in the caller's namespace; the server's has none of it
    assert [link["ifname"] for link in server.netns.ip_json("link", "show")] == ["lo"]

    checked = run(server, "macvlan", cni_env("CHECK", pod_ns.path, ifname="net1",
                                             path=str(cni_bin)),
                  {**conf, "prevResult": result}, node)
    assert checked.status == 0, checked.stdout
    deleted = run(server, "macvlan", cni_env("DEL", pod_ns.path, ifname="net1",
                                             path=str(cni_bin)), conf, node)
    assert deleted.status == 0, deleted.stdout
    assert pod_ns.run("ip", "link", "show", "net1", check=False).returncode != 0
    assert not (tmp_path / "ipam" / "biz" / "192.168.100.2").exists()


def test_errors_are_the_same_as_a_cold_start(server: Server, node: Netns, pod_ns: Netns,
                                             cni_bin: Path, tmp_path: Path) -> None:
    conf = macvlan_conf(tmp_path / "ipam", master="missing0")
    env = cni_env("ADD", pod_ns.path, ifname="net1", path=str(cni_bin))

    warm = run(server, "macvlan", env, conf, node)
    cold = run(None, "macvlan", env, conf, node)

    assert warm.status == cold.status == 1
    assert warm.json() == cold.json()
    assert "missing0" in warm.json()["msg"]
    assert "Traceback" not in warm.stdout
    assert [link["ifname"] for link in pod_ns.ip_json("link", "show")] == ["lo"]


def test_bad_stdin_and_environment(server: Server, node: Netns) -> None:
    bad_json = run(server, "loopback", cni_env("ADD", "/var/run/netns/nothing"), b"{nope",
                   node)
    no_env = run(server, "loopback", {"CNI_COMMAND": "ADD"}, {"cniVersion": "1.0.0",
                                                              "name": "lo", "type": "loopback"},
                 node)

    assert bad_json.error(6)
    assert no_env.error(4)


def test_version_is_answered_without_the_server(server: Server, node: Netns) -> None:
    done = run(server, "bridge", {"CNI_COMMAND": "VERSION"}, {"cniVersion": "1.0.0"}, node)

    assert "1.1.0" in done.ok()["supportedVersions"]


def test_without_a_server_the_program_runs_the_plugin_itself(node: Netns, pod_ns: Netns,
                                                              cni_bin: Path,
                                                              tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(stale))  # a socket file nobody listens on: a server that died
    conf = {"cniVersion": "1.0.0", "name": "lo", "type": "loopback"}
    for path in (str(stale), str(tmp_path / "absent.sock")):
        env = {**cni_env("ADD", pod_ns.path, ifname="lo", path=str(cni_bin)),
               launch.SOCKET_ENV: path}
        done = run_exec([*PYCNI, "loopback"], env, conf, in_ns=node)
        assert done.ok()["interfaces"][0]["name"] == "lo"


def test_mount_namespace_of_the_caller(server: Server, node: Netns, pod_ns: Netns,
                                       cni_bin: Path, tmp_path: Path) -> None:
    """The caller sees a private tmpfs on the data directory: so must its run."""
    data_dir = tmp_path / "ipam"
    data_dir.mkdir()
    conf = macvlan_conf(data_dir)
    env = cni_env("ADD", pod_ns.path, ifname="net1", path=str(cni_bin))
    script = (f"mount -t tmpfs none {data_dir} && exec \"$@\"")

    added = run(server, "macvlan", env, conf, node,
                prefix=["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"])

    assert added.ok()["ips"][0]["address"] == "192.168.100.2/24"
    assert list(data_dir.iterdir()) == [], "the allocation landed outside the caller's mount"


def test_concurrent_calls(server: Server, node: Netns, netns_factory: NetnsFactory,
                          cni_bin: Path, tmp_path: Path) -> None:
    pods = [netns_factory(f"pod{i}") for i in range(8)]
    conf = json.dumps(macvlan_conf(tmp_path / "ipam")).encode()
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           launch.SOCKET_ENV: server.socket}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]

    def start(pod: Netns, command: str) -> subprocess.Popen[bytes]:
        full = {**env, **cni_env(command, pod.path, ifname="net1", container_id=pod.name,
                                 path=str(cni_bin))}
        process = subprocess.Popen(["ip", "netns", "exec", node.name, *PYCNI, "macvlan"],
                                   env=full, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert process.stdin
        process.stdin.write(conf)
        process.stdin.close()
        return process

    adds = [start(pod, "ADD") for pod in pods]
    outputs = [(p.wait(timeout=120), p.stdout.read() if p.stdout else b"") for p in adds]

    assert [status for status, _ in outputs] == [0] * len(pods), outputs
    addresses = {json.loads(out)["ips"][0]["address"] for _, out in outputs}
    assert len(addresses) == len(pods)
    dels = [start(pod, "DEL") for pod in pods]
    assert [p.wait(timeout=120) for p in dels] == [0] * len(pods)
    for process in adds + dels:
        if process.stdout:
            process.stdout.close()
    left = sorted(str(p.relative_to(tmp_path / "ipam" / "biz"))
                  for p in (tmp_path / "ipam" / "biz").rglob("*") if p.is_file())
    assert left == ["last_reserved_ip.0", "lock"]  # no allocation left, no metadata


def test_a_killed_caller_kills_its_run(server: Server, node: Netns, pod_ns: Netns,
                                       tmp_path: Path) -> None:
    """A runtime's timeout kills the plugin: the server's child must die with the caller."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "slow-started"
    slow = bin_dir / "slow-ipam"
    slow.write_text(f"#!/bin/sh\ntouch {marker}\nexec sleep 60\n")
    slow.chmod(0o755)
    conf = {**macvlan_conf(tmp_path / "ipam"), "ipam": {"type": "slow-ipam"}}
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           launch.SOCKET_ENV: server.socket,
           **cni_env("ADD", pod_ns.path, ifname="net1", path=str(bin_dir))}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    caller = subprocess.Popen([*PYCNI, "macvlan"], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, preexec_fn=lambda: _enter(node))
    assert caller.stdin
    caller.stdin.write(json.dumps(conf).encode())
    caller.stdin.close()
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline, "the run never reached its IPAM"
        time.sleep(0.05)
    # the run is the server's child running the IPAM (the others are spares, forked ahead)
    runs = [pid for pid in _children(server.process.pid) if _children(pid)]
    assert len(runs) == 1, "the server has no child for the run"

    caller.kill()
    caller.wait()

    deadline = time.monotonic() + 10
    while _alive(runs[0]):
        assert time.monotonic() < deadline, "the run outlived its caller"
        time.sleep(0.05)


def _enter(ns: Netns) -> None:
    from pycni import netns

    fd = os.open(ns.path, os.O_RDONLY)
    netns.setns(fd, netns.CLONE_NEWNET)
    os.close(fd)


def _children(pid: int) -> list[int]:
    """The server's children (`ip netns exec` execs the server, so `pid` is the server)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_help_lists_the_daemon() -> None:
    done = subprocess.run([*PYCNI, "help"], capture_output=True, text=True, check=True)
    assert "daemon" in done.stdout


def test_a_dead_spare_is_replaced(server: Server, node: Netns, pod_ns: Netns,
                                  cni_bin: Path) -> None:
    """The child forked ahead of the next request dies: the next request is still served."""
    deadline = time.monotonic() + 10
    while not (spares := _children(server.process.pid)):
        assert time.monotonic() < deadline, "the server forked no spare"
        time.sleep(0.05)
    for pid in spares:
        os.kill(pid, signal.SIGKILL)
    conf = {"cniVersion": "1.0.0", "name": "lo", "type": "loopback"}

    done = run(server, "loopback", cni_env("ADD", pod_ns.path, ifname="lo", path=str(cni_bin),
                                           PYCNI_LOG_LEVEL="DEBUG"), conf, node)

    assert done.ok()["interfaces"][0]["name"] == "lo"
    assert f"run by pycni daemon {server.process.pid} for caller" in done.stderr
