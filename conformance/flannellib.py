"""Pods on a sandbox flannel cluster (tests.flannelcluster) made through libcni from the seed
conflist, and packet captures: shared by the cluster tests and the flannel benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from conformance.conftest import CNITOOL, DIST_BIN
from tests.conftest import Netns, NetnsFactory
from tests.flannelcluster import Node

SEEDS = Path(__file__).resolve().parents[1] / "tests" / "seeds"
PROGRAM = [str(DIST_BIN / "pycni.bundle" / "pycni")]
NETWORK = "cbr0"   # the seed conflist's name


class Pod:
    def __init__(self, node: Node, netns: Netns, workdir: Path, container_id: str,
                 result: dict[str, Any]) -> None:
        self.node, self.netns, self.workdir = node, netns, workdir
        self.container_id, self.result = container_id, result
        self.address = result["ips"][0]["address"].split("/")[0]

    def ping(self, address: str, size: int = 56,
             count: int = 1) -> subprocess.CompletedProcess[str]:
        """Ping with DF set: a packet too big for the path fails instead of fragmenting."""
        return self.netns.run("ping", "-c", str(count), "-W", "2", "-M", "do", "-s", str(size),
                              address, check=False)

    def delete(self) -> None:
        cnitool(self.node, self.workdir, self.container_id, "del", NETWORK, self.netns.path)


def cnitool(node: Node, workdir: Path, container_id: str, *args: str) -> dict[str, Any] | None:
    """`cnitool <args>` on `node` (its netns and its /run/flannel, /var/lib/cni)."""
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "NETCONFPATH": str(workdir / "net.d"), "CNI_PATH": str(DIST_BIN),
           "CNI_CACHE_DIR": str(workdir / "cache"), "CNI_IFNAME": "eth0",
           "CNI_CONTAINERID": container_id}
    done = subprocess.run(node.argv(str(CNITOOL), *args), env=env, capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        raise AssertionError(f"cnitool {args[0]} on {node.name}: {done.stderr}{done.stdout}")
    return json.loads(done.stdout) if done.stdout.strip() else None


def add_pod(factory: NetnsFactory, node: Node) -> Pod:
    """A pod on `node` through libcni with the seed conflist, unchanged."""
    netns = factory(f"pod-{node.name}")
    container_id = f"pod-{uuid.uuid4().hex[:10]}"
    workdir = node.dir / container_id
    (workdir / "net.d").mkdir(parents=True)
    (workdir / "net.d" / "10-flannel.conflist").write_text(
        (SEEDS / "10-flannel.conflist").read_text())
    result = cnitool(node, workdir, container_id, "add", NETWORK, netns.path)
    assert result is not None
    return Pod(node, netns, workdir, container_id, result)


def capture(netns: Netns, iface: str, expression: str, action: Any,
            count: int = 1) -> list[str]:
    """tcpdump lines of `count` packets matching `expression` seen on `iface` while
    `action()` runs."""
    process = subprocess.Popen(["ip", "netns", "exec", netns.name, "tcpdump", "-l", "-nn",
                                "-i", iface, "-c", str(count), *expression.split()],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)   # tcpdump attaches
        action()
        out, _ = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return out.splitlines()
