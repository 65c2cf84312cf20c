"""An etcd server for tests, listening only inside a sandbox network namespace.

`EtcdServer(netns, address, data_dir)` runs /usr/bin/etcd in `netns` on `address` (e.g.
127.0.0.1 of a namespace with `lo` up, or 192.168.0.1 the caller configured in a cluster's
underlay namespace). Clients reach it from inside that namespace: a thread in
`pycni.netns.entered(netns.path)`, or `netns.run("etcdctl", ...)`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycni import netns as pycni_netns
from tests.conftest import Netns, NetnsFactory

ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"
CLIENT_PORT = 2379
PEER_PORT = 2380
START_TIMEOUT = 20.0

needs_etcd = pytest.mark.skipif(not os.path.exists(ETCD), reason=f"{ETCD} is not installed "
                                "(Debian package etcd-server)")


class EtcdServer:
    def __init__(self, netns: Netns, address: str, data_dir: Path) -> None:
        self.netns = netns
        self.address = address
        self.data_dir = data_dir
        self.log_path = data_dir.with_name(data_dir.name + ".log")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{CLIENT_PORT}"

    def _peer_url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{PEER_PORT}"

    def start(self) -> None:
        """Start etcd (keeping any data already in `data_dir`) and wait until it is healthy."""
        if self.process is not None:
            raise RuntimeError("etcd is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        peer = self._peer_url()
        command = [
            "ip", "netns", "exec", self.netns.name, ETCD,
            "--name", "pycni-test",
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"pycni-test={peer}",
            "--initial-cluster-state", "new",
        ]
        with open(self.log_path, "ab") as log:
            # `ip netns exec` execs etcd: the process is etcd itself.
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.process.returncode}; see "
                                   f"{self.log_path}:\n{self._log_tail()}")
            if self.healthy():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd is not healthy after {START_TIMEOUT} s; see "
                                   f"{self.log_path}:\n{self._log_tail()}")
            time.sleep(0.1)

    def healthy(self) -> bool:
        try:
            with pycni_netns.entered(self.netns.path), \
                    urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                return bool(json.load(answer).get("health") == "true")
        except (OSError, ValueError):
            return False

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Kill etcd (SIGKILL: like a crash; its data on disk survives)."""
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def restart(self) -> None:
        self.stop()
        self.start()

    def etcdctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run etcdctl (API v3) against this server, inside its namespace."""
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "ETCDCTL_API": "3"}
        return self.netns.run(ETCDCTL, "--endpoints", self.url, *args, check=check, env=env)


@pytest.fixture
def etcd_server(netns_factory: NetnsFactory, tmp_path: Path) -> Iterator[EtcdServer]:
    """etcd on 127.0.0.1 of a fresh namespace with `lo` up; killed after the test."""
    if not os.path.exists(ETCD):
        pytest.skip(f"{ETCD} is not installed (Debian package etcd-server)")
    netns = netns_factory("etcd")
    netns.run("ip", "link", "set", "lo", "up")
    server = EtcdServer(netns, "127.0.0.1", tmp_path / "etcd-data")
    try:
        server.start()
        yield server
    finally:
        server.stop()
