"""Conformance fixtures: drive the frozen build (`dist/bin`) through libcni (`dist/cnitool`).

cnitool runs inside the sandbox "host" namespace from `tests.conftest` and targets a sandbox
"pod" namespace, so nothing here touches the machine's own namespace. Each test gets its own
NETCONFPATH and libcni cache directory in a scratch directory removed after the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

# The namespace fixtures are shared with the unit tests; importing them here makes pytest
# offer them to this directory too.
from tests.conftest import REPO, Netns, host_ns, netns_factory, pod_ns  # noqa: F401

DIST_BIN = REPO / "dist" / "bin"
CNITOOL = REPO / "dist" / "cnitool"
# What kubelet and containerd pass to loopback.
LOOPBACK_IFNAME = "lo"


def missing_build() -> str | None:
    """Why the frozen build cannot be driven, or None when it can."""
    for path in (DIST_BIN / "loopback", CNITOOL):
        if not (path.exists() and os.access(path, os.X_OK)):
            return f"{path} is missing: run `make build cnitool`"
    return None


@pytest.fixture(scope="session")
def built() -> None:
    """Skip unless `dist/bin/loopback` and `dist/cnitool` exist."""
    reason = missing_build()
    if reason:
        if os.environ.get("PYCNI_REQUIRE_BUILD"):
            pytest.fail(reason)  # `make test` builds first: a missing build is a failure there
        pytest.skip(reason)


class ToolRun(NamedTuple):
    """What one cnitool run left."""

    status: int
    stdout: str
    stderr: str

    def ok(self) -> Any:
        """Assert the run succeeded; its stdout as JSON (None when empty)."""
        assert self.status == 0, (
            f"cnitool exited {self.status}\nstdout: {self.stdout}\nstderr: {self.stderr}")
        return json.loads(self.stdout) if self.stdout.strip() else None

    def failed(self) -> str:
        """Assert the run failed; its stderr, where cnitool prints the error."""
        assert self.status != 0, f"expected failure, got success: {self.stdout}"
        assert self.stderr.strip(), "cnitool failed without saying why"
        return self.stderr


class CniTool:
    """cnitool bound to one sandbox host namespace, a NETCONFPATH, and a cache directory."""

    def __init__(self, host: Netns, workdir: Path, cni_path: Path = DIST_BIN) -> None:
        self.host = host
        self.netconf_dir = workdir / "net.d"
        self.cache_dir = workdir / "cache"
        self.cni_path = cni_path
        self.container_id = f"ctr-{uuid.uuid4().hex[:12]}"
        self.netconf_dir.mkdir(parents=True, exist_ok=True)

    def write_conf(self, conf: dict[str, Any], filename: str = "10-net.conflist") -> Path:
        """Write a conflist (or a single-plugin `.conf`) into NETCONFPATH."""
        path = self.netconf_dir / filename
        path.write_text(json.dumps(conf, indent=2))
        return path

    def result_cache(self, network: str, ifname: str = LOOPBACK_IFNAME) -> Path:
        """Where libcni caches the ADD result of `network` for our container."""
        return self.cache_dir / "results" / f"{network}-{self.container_id}-{ifname}"

    def __call__(self, *args: str, ifname: str = LOOPBACK_IFNAME, **extra_env: str) -> ToolRun:
        """`cnitool <args>` inside the host namespace, e.g. ("add", "lo-net", pod.path)."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "NETCONFPATH": str(self.netconf_dir),
            "CNI_PATH": str(self.cni_path),
            "CNI_CACHE_DIR": str(self.cache_dir),
            "CNI_IFNAME": ifname,
            "CNI_CONTAINERID": self.container_id,
            **extra_env,
        }
        done = subprocess.run(["ip", "netns", "exec", self.host.name, str(CNITOOL), *args],
                              env=env, capture_output=True, text=True, timeout=120)
        return ToolRun(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    """A temporary directory removed after the test (pytest's tmp_path keeps old ones)."""
    with tempfile.TemporaryDirectory(prefix="pycni-conformance-") as path:
        yield Path(path)


@pytest.fixture
def cnitool(built: None, host_ns: Netns, scratch_dir: Path) -> CniTool:  # noqa: F811
    """cnitool running in a fresh sandbox host namespace with CNI_PATH=dist/bin."""
    return CniTool(host_ns, scratch_dir)
