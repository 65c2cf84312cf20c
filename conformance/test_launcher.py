"""The frozen bundle's two programs: which processes a plugin start really costs.

`/opt/cni/bin/<type>` links to the native launcher (`cni`, build/launcher.c): VERSION is
answered there; with a `pycni daemon` listening, the launcher is the only program exec'd;
without one, it execs the full program (`pycni`), which runs its own delegates (host-local under
bridge) in-process. Every `execve` is counted with strace. The launcher's side of the server
protocol is tested against a stand-in server.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conformance.bridgelib import BRIDGE, IPV4_RANGES
from conformance.conftest import DIST_BIN
from pycni import daemon, launch, registry, spec
from tests.conftest import Netns, NetnsFactory, cni_env

pytestmark = [pytest.mark.conformance, pytest.mark.kernel]

BUNDLE = DIST_BIN / "pycni.bundle"


@pytest.fixture(autouse=True)
def strace() -> None:
    if not shutil.which("strace"):
        pytest.fail("strace is missing (apt-get install strace): it counts the exec'd programs")


def traced(argv: list[str], env: dict[str, str], stdin: bytes, ns: Netns | None,
           trace: Path) -> subprocess.CompletedProcess[bytes]:
    """`argv` under strace (execve only, children followed), inside `ns` when given."""
    full = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **env}
    prefix = ["ip", "netns", "exec", ns.name] if ns else []
    return subprocess.run([*prefix, "strace", "-f", "-qq", "-e", "trace=execve", "-e",
                           "signal=none", "-o", str(trace), *argv], input=stdin, env=full,
                          capture_output=True, timeout=120)


def programs(trace: Path) -> list[str]:
    """The bundle's programs started, in order (by file name: cni, pycni). PyInstaller's
    bootloader execs itself once more to set the library path: one start, two execve."""
    found: list[str] = []
    last: dict[str, str] = {}  # pid -> the program it last exec'd
    for line in trace.read_text().splitlines():
        if "execve(" in line and "= 0" in line:
            pid = line.split()[0]
            path = os.path.realpath(line.split('execve("', 1)[1].split('"', 1)[0])
            if path.startswith(str(BUNDLE.resolve())) and last.get(pid) != path:
                found.append(os.path.basename(path))
            last[pid] = path
    return found


def bridge_conf(data_dir: Path) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "name": "podnet", "type": "bridge",
                       "bridge": BRIDGE, "isGateway": True,
                       "ipam": {"type": "host-local", "ranges": IPV4_RANGES,
                                "dataDir": str(data_dir)}}).encode()


@pytest.fixture
def server(built: None, netns_factory: NetnsFactory, scratch_dir: Path) -> Iterator[Path]:
    """The frozen `pycni daemon`, in a namespace of its own."""
    where = netns_factory("daemon")
    path = scratch_dir / "daemon.sock"
    process = subprocess.Popen(["ip", "netns", "exec", where.name, str(BUNDLE / "pycni"),
                                "daemon", "--socket", str(path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not path.exists():
            assert process.poll() is None and time.monotonic() < deadline, "no daemon"
            time.sleep(0.05)
        yield path
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


def test_links_point_to_the_launcher(built: None) -> None:
    for name in ("bridge", "host-local", "macvlan", "loopback"):
        assert os.readlink(DIST_BIN / name) == f"pycni.bundle/{launch.LAUNCHER}"
    assert os.access(BUNDLE / launch.PROGRAM, os.X_OK)


def test_version_execs_the_launcher_only(built: None, scratch_dir: Path) -> None:
    trace = scratch_dir / "trace"

    done = traced([str(DIST_BIN / "macvlan")], {"CNI_COMMAND": "VERSION",
                                                launch.SOCKET_ENV: ""}, b"{}", None, trace)

    assert done.returncode == 0, done.stdout
    assert "1.1.0" in json.loads(done.stdout)["supportedVersions"]
    assert programs(trace) == ["cni"]


def test_cold_add_runs_host_local_in_process(built: None, host_ns: Netns, pod_ns: Netns,
                                             scratch_dir: Path) -> None:
    trace = scratch_dir / "trace"
    env = {**cni_env("ADD", pod_ns.path, path=str(DIST_BIN)), launch.SOCKET_ENV: ""}

    done = traced([str(DIST_BIN / "bridge")], env, bridge_conf(scratch_dir / "ipam"), host_ns,
                  trace)

    assert done.returncode == 0, done.stdout
    assert json.loads(done.stdout)["ips"][0]["address"] == "10.22.0.2/24"
    assert programs(trace) == ["cni", "pycni"]  # the launcher, then the full program: no more
    assert "10.22.0.2/24" in pod_ns.run("ip", "-4", "addr", "show", "eth0").stdout


def test_with_the_daemon_only_the_launcher_is_execd(server: Path, host_ns: Netns,
                                                   pod_ns: Netns, scratch_dir: Path) -> None:
    trace = scratch_dir / "trace"
    env = {**cni_env("ADD", pod_ns.path, path=str(DIST_BIN)), launch.SOCKET_ENV: str(server)}

    done = traced([str(DIST_BIN / "bridge")], env, bridge_conf(scratch_dir / "ipam"), host_ns,
                  trace)

    assert done.returncode == 0, done.stdout
    assert json.loads(done.stdout)["ips"][0]["address"] == "10.22.0.2/24"
    assert programs(trace) == ["cni"]
    assert host_ns.link(BRIDGE)
    assert "10.22.0.2/24" in pod_ns.run("ip", "-4", "addr", "show", "eth0").stdout
    deleted = traced([str(DIST_BIN / "bridge")], {**env, "CNI_COMMAND": "DEL"},
                     bridge_conf(scratch_dir / "ipam"), host_ns, trace)
    assert deleted.returncode == 0, deleted.stdout
    assert not (scratch_dir / "ipam" / "podnet" / "10.22.0.2").exists()


def test_launcher_by_its_own_name_is_the_admin_command(built: None) -> None:
    done = subprocess.run([str(BUNDLE / launch.LAUNCHER), "version"], capture_output=True,
                          text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("pycni ")


def test_execd_tools_get_the_callers_environment(built: None, host_ns: Netns, pod_ns: Netns,
                                                 scratch_dir: Path) -> None:
    """PyInstaller's bootloader points LD_LIBRARY_PATH into the bundle: iptables and the other
    programs a plugin execs must not inherit that (nor the bootloader's _PYI_* variables)."""
    trace = scratch_dir / "trace"
    env = {**cni_env("ADD", pod_ns.path, path=str(DIST_BIN)), launch.SOCKET_ENV: "",
           "LD_LIBRARY_PATH": "/caller/lib"}
    conf = json.loads(bridge_conf(scratch_dir / "ipam"))

    done = subprocess.run(
        ["ip", "netns", "exec", host_ns.name, "strace", "-f", "-qq", "-v", "-s", "512", "-e",
         "trace=execve", "-e", "signal=none", "-o", str(trace), str(DIST_BIN / "bridge")],
        input=json.dumps({**conf, "ipMasq": True}).encode(),
        env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **env},
        capture_output=True, timeout=120)

    assert done.returncode == 0, done.stdout
    tools = [line for line in trace.read_text().splitlines()
             if 'execve("/usr/sbin/iptables' in line or 'execve("/sbin/iptables' in line]
    assert tools, "bridge with ipMasq ran no iptables"
    for line in tools:
        assert '"LD_LIBRARY_PATH=/caller/lib"' in line, line
        environment = line.split("], [", 1)[1]
        assert "_PYI_" not in environment and str(BUNDLE) not in environment, line


# --- the native launcher against a stand-in server -------------------------------------------

class StandInServer:
    """A Unix socket server in a thread of the test: for each connection, `answer(conn)`."""

    def __init__(self, path: Path, answer: Callable[[socket.socket], None]) -> None:
        self.path, self.answer = path, answer
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(8)
        self.connections = 0
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.connections += 1
            with conn:
                self.answer(conn)

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(timeout=10)


def run_launcher(name: str, env: dict[str, str], stdin: bytes = b"{}",
                 cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    full = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **env}
    return subprocess.run([str(DIST_BIN / name)], input=stdin, env=full, cwd=cwd,
                          capture_output=True, timeout=120)


def test_launcher_version_answers_are_the_full_programs(built: None) -> None:
    """The launcher's VERSION table is generated from the registry at build time: byte for
    byte what the full program prints, for every type."""
    for name in registry.PLUGINS:
        done = run_launcher(name, {"CNI_COMMAND": "VERSION", launch.SOCKET_ENV: ""})

        assert done.returncode == 0, done.stdout
        assert done.stdout.decode() == spec.version_json(registry.versions(name)), name


def test_launcher_hands_the_request_over(built: None, scratch_dir: Path) -> None:
    """Arguments, the whole environment (larger than a socket buffer), the
    working directory and the standard streams reach the server; its status is the exit
    status."""
    seen: dict[str, object] = {}

    def answer(conn: socket.socket) -> None:
        argv, environ, cwd, fds = daemon.receive(conn)
        seen.update(argv=argv, environ=environ, cwd=cwd)
        try:
            seen["stdin"] = os.read(fds[0], 100)
            os.write(fds[1], b"written by the server\n")
        finally:
            for fd in fds:
                os.close(fd)
        conn.sendall((7).to_bytes(4, "big"))

    large = {f"LARGE{i}": str(i) * 100_000 for i in range(4)}  # 128 KiB at most each
    server = StandInServer(scratch_dir / "s.sock", answer)
    try:
        done = run_launcher("macvlan", {"CNI_COMMAND": "ADD", **large,
                                        launch.SOCKET_ENV: str(server.path)},
                            stdin=b"the config", cwd=scratch_dir)
    finally:
        server.close()

    assert done.returncode == 7, done.stdout
    assert done.stdout == b"written by the server\n"
    assert seen["argv"] == [str(DIST_BIN / "macvlan")]
    assert seen["cwd"] == str(scratch_dir)
    environ = seen["environ"]
    assert isinstance(environ, dict)
    assert environ["CNI_COMMAND"] == "ADD"
    assert {key: environ.get(key) for key in large} == large
    assert seen["stdin"] == b"the config"
    assert server.connections == 1


def test_launcher_runs_the_plugin_itself_when_refused_or_no_server(
        built: None, scratch_dir: Path) -> None:
    """A refusal, and a socket nobody listens on, leave the run to the full program: here
    loopback's own answer to a config that is not JSON (code 6)."""
    def refuse(conn: socket.socket) -> None:
        conn.sendall(launch.REFUSED.to_bytes(4, "big"))

    server = StandInServer(scratch_dir / "refusing.sock", refuse)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(scratch_dir / "stale.sock"))  # bound, never listening: connection refused
    try:
        for path in (server.path, scratch_dir / "stale.sock"):
            done = run_launcher("loopback", {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c",
                                             "CNI_NETNS": "/proc/self/ns/net",
                                             "CNI_IFNAME": "lo", "CNI_PATH": str(DIST_BIN),
                                             launch.SOCKET_ENV: str(path)}, stdin=b"not json")

            assert done.returncode == 1, done.stdout
            assert json.loads(done.stdout)["code"] == 6, done.stdout
    finally:
        server.close()
        stale.close()
    assert server.connections >= 1


def test_launcher_reports_a_lost_server(built: None, scratch_dir: Path) -> None:
    def hang_up(conn: socket.socket) -> None:
        for fd in daemon.receive(conn)[3]:
            os.close(fd)

    server = StandInServer(scratch_dir / "s.sock", hang_up)
    try:
        done = run_launcher("macvlan", {"CNI_COMMAND": "ADD",
                                        launch.SOCKET_ENV: str(server.path)})
    finally:
        server.close()

    assert done.returncode == 1
    error = json.loads(done.stdout)
    assert error["code"] == 999
    assert error["msg"] == "pycni daemon: lost the connection to the server"
