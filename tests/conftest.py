"""Shared fixtures: sandbox namespaces and ways to run a plugin.

Kernel tests never touch the machine's own namespace: each test gets a fresh "host" netns
standing for the node and a "pod" netns per container, removed afterwards even on failure.
Plugins run as a real process inside the sandbox host namespace (`ip netns exec`), or
in-process through `skel.run` for the protocol tests that touch nothing.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pycni import skel

REPO = Path(__file__).resolve().parents[1]
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root to create network namespaces")


@dataclass
class Outcome:
    """What one plugin run left: exit status, stdout, stderr."""

    status: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def error(self, code: int) -> dict[str, Any]:
        """Assert this run failed the CNI way with `code`; return the error JSON."""
        assert self.status == 1, f"expected failure, got {self.status}: {self.stdout}"
        data = self.json()  # stdout must be only the error JSON
        assert set(data) <= {"cniVersion", "code", "msg", "details"}, data
        assert data["code"] == code, data
        assert data["msg"], data
        assert "Traceback" not in self.stdout
        return data  # type: ignore[no-any-return]

    def ok(self) -> Any:
        assert self.status == 0, (
            f"status {self.status}\nstdout: {self.stdout}\nstderr: {self.stderr}")
        return self.json() if self.stdout.strip() else None


@dataclass
class Netns:
    name: str

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.name}"

    def run(self, *cmd: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], check=check,
                              capture_output=True, text=True, **kw)

    def ip_json(self, *args: str) -> Any:
        return json.loads(self.run("ip", "-j", *args).stdout or "[]")

    def link(self, name: str) -> dict[str, Any]:
        found = self.ip_json("link", "show", "dev", name)
        assert found, f"no link {name} in {self.name}"
        return found[0]  # type: ignore[no-any-return]


@dataclass
class NetnsFactory:
    created: list[str] = field(default_factory=list)

    def __call__(self, role: str) -> Netns:
        name = f"pycni-{role}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        self.created.append(name)
        return Netns(name)

    def remove(self, netns: Netns) -> None:
        subprocess.run(["ip", "netns", "del", netns.name], check=True, capture_output=True)
        self.created.remove(netns.name)

    def remove_all(self) -> None:
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.created.clear()


@pytest.fixture
def netns_factory() -> Iterator[NetnsFactory]:
    if not IS_ROOT:
        pytest.skip("needs root to create network namespaces")
    factory = NetnsFactory()
    try:
        yield factory
    finally:
        factory.remove_all()


@pytest.fixture
def host_ns(netns_factory: NetnsFactory) -> Netns:
    """A namespace standing for the node: plugins run here."""
    return netns_factory("host")


@pytest.fixture
def pod_ns(netns_factory: NetnsFactory) -> Netns:
    return netns_factory("pod")


def cni_env(command: str, netns: str = "", ifname: str = "eth0", container_id: str = "ctr-1",
            path: str | None = None, **extra: str) -> dict[str, str]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
           "CNI_IFNAME": ifname, "CNI_PATH": path if path is not None else "/opt/cni/bin"}
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}


def run_in_process(plugin: skel.Plugin, env: dict[str, str], conf: Any) -> Outcome:
    """Drive the dispatcher without a process (no kernel work may happen in such tests)."""
    stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    out, err = io.StringIO(), io.StringIO()
    status = skel.run(plugin, env, io.BytesIO(stdin), out, err)
    return Outcome(status, out.getvalue(), err.getvalue())


# How to start our program: the source tree through the interpreter running the tests.
PYCNI = [sys.executable, "-m", "pycni"]


def run_exec(argv: list[str], env: dict[str, str], conf: Any, in_ns: Netns | None = None,
             timeout: float = 60) -> Outcome:
    """Run a plugin program as a runtime would, inside `in_ns` when given."""
    stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    full_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **env}
    if "PYTHONPATH" in os.environ:
        full_env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    cmd = (["ip", "netns", "exec", in_ns.name] if in_ns else []) + argv
    done = subprocess.run(cmd, input=stdin, env=full_env, capture_output=True, timeout=timeout)
    return Outcome(done.returncode, done.stdout.decode(), done.stderr.decode())


@pytest.fixture
def run_plugin(host_ns: Netns) -> Callable[..., Outcome]:
    """Run `pycni <type>` inside the sandbox host namespace."""

    def run(plugin_type: str, env: dict[str, str], conf: Any) -> Outcome:
        return run_exec([*PYCNI, plugin_type], env, conf, in_ns=host_ns)

    return run


@pytest.fixture(scope="session")
def cni_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CNI_PATH directory holding every pycni type as a small script running the source
    tree, so delegation (e.g. bridge -> host-local) finds our plugins as a runtime would."""
    from pycni import registry

    directory = tmp_path_factory.mktemp("cni-bin")
    for plugin_type in registry.PLUGINS:
        script = directory / plugin_type
        script.write_text(f"#!/bin/sh\nexec {sys.executable} -m pycni {plugin_type}\n")
        script.chmod(0o755)
    return directory
