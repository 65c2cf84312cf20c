"""A sandbox flannel cluster: an underlay L2 segment, N nodes, an agent per node, and pods.

- `underlay` netns: bridge `br0` holding 192.168.0.1/24 (the nodes' default gateway, and
  where etcd or the test API server listen).
- node i (1-based): netns with `eth0` 192.168.0.<10*i>/24 on `br0`, forwarding on. Each
  node also has its own mount namespace per command (`Node.argv`): a directory of the test
  is bound over `/run/flannel` and `/var/lib/cni`, so the agent's subnet.env, the plugins'
  state and the seed conflist's default paths are per node, as on real machines.
- `outside` netns: 192.168.0.254/24 on `br0`, a server beyond the cluster network.

Everything lives in namespaces and directories the test created; `close()` stops the agents
and the namespaces go with the netns factory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.conftest import PYCNI, Netns, NetnsFactory

UNDERLAY_GATEWAY = "192.168.0.1"
OUTSIDE_ADDRESS = "192.168.0.254"
NODE_MOUNTS = ("/run/flannel", "/var/lib/cni")
MOUNT_SCRIPT = ('set -e; mount --bind "$1" /run/flannel; mount --bind "$2" /var/lib/cni; '
                'ns="$3"; shift 3; exec ip netns exec "$ns" "$@"')


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll until `predicate()` is truthy; its last value (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


class Node:
    def __init__(self, cluster: Cluster, number: int, netns: Netns) -> None:
        self.cluster = cluster
        self.number = number
        self.netns = netns
        self.name = f"node{number}"
        self.address = f"192.168.0.{10 * number}"
        self.dir = cluster.root / self.name
        self.run_dir = self.dir / "run-flannel"
        self.lib_dir = self.dir / "var-lib-cni"
        for directory in (self.run_dir, self.lib_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.agent: subprocess.Popen[bytes] | None = None
        self.agent_log = self.dir / "agent.log"

    @property
    def subnet_file(self) -> Path:
        return self.run_dir / "subnet.env"

    def argv(self, *cmd: str) -> list[str]:
        """`cmd` inside this node: its netns, its /run/flannel and /var/lib/cni."""
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", MOUNT_SCRIPT,
                "sh", str(self.run_dir), str(self.lib_dir), self.netns.name, *cmd]

    def run(self, *cmd: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*cmd), check=check, capture_output=True, text=True,
                              **kw)

    def ip_json(self, *args: str) -> Any:
        return self.netns.ip_json(*args)

    def start_agent(self, *extra: str) -> None:
        assert self.agent is None, f"{self.name}: agent already running"
        args = [*self.cluster.program, "flanneld", "--iface", "eth0",
                "--net-config-path", str(self.cluster.net_conf_path),
                "--node-name", self.name, *self.cluster.store_args(self), *extra]
        with open(self.agent_log, "ab") as log:
            self.agent = subprocess.Popen(self.argv(*args), stdout=log, stderr=log,
                                          env={**os.environ, "PYCNI_LOG_LEVEL": "INFO"})

    def wait_ready(self, timeout: float = 20.0) -> dict[str, str]:
        """Wait for the agent's subnet.env; its values."""
        def ready() -> dict[str, str] | None:
            if self.agent is not None and self.agent.poll() is not None:
                raise AssertionError(f"{self.name}: agent exited {self.agent.returncode}:\n"
                                     f"{self.agent_log.read_text()}")
            if not self.subnet_file.exists():
                return None
            return dict(line.split("=", 1) for line in self.subnet_file.read_text().split())
        found = wait_for(ready, timeout)
        assert found, f"{self.name}: no subnet.env after {timeout} s:\n{self.agent_log.read_text()}"
        return found  # type: ignore[no-any-return]

    def stop_agent(self, sig: int = signal.SIGTERM) -> int | None:
        if self.agent is None:
            return None
        process, self.agent = self.agent, None
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def subnet(self) -> str:
        """The node's pod subnet, e.g. 10.244.3.0/24."""
        values = self.wait_ready()
        import ipaddress

        return str(ipaddress.ip_interface(values["FLANNEL_SUBNET"]).network)

    # kernel state
    def routes(self) -> list[dict[str, Any]]:
        return self.ip_json("route", "show")  # type: ignore[no-any-return]

    def neighbours(self, dev: str) -> list[dict[str, Any]]:
        return self.ip_json("neigh", "show", "dev", dev)  # type: ignore[no-any-return]

    def fdb(self, dev: str) -> list[dict[str, Any]]:
        return json.loads(self.netns.run("bridge", "-j", "fdb", "show", "dev", dev).stdout
                          or "[]")


class Cluster:
    def __init__(self, factory: NetnsFactory, root: Path, net_conf: dict[str, Any],
                 nodes: int = 3, program: list[str] | None = None, store: str = "file",
                 ip_masq: bool = True, lease_ttl: float | None = None) -> None:
        self.factory = factory
        self.root = root
        self.program = program or PYCNI
        self.store = store
        self.ip_masq = ip_masq
        self.lease_ttl = lease_ttl
        self.store_dir = root / "store"
        self.extra_store_args: list[str] = []
        root.mkdir(parents=True, exist_ok=True)
        self.net_conf_path = root / "net-conf.json"
        self.net_conf_path.write_text(json.dumps(net_conf))
        for mount_point in NODE_MOUNTS:
            os.makedirs(mount_point, exist_ok=True)  # bind targets; their contents stay
        self.underlay = factory("underlay")
        self.underlay.run("ip", "link", "set", "lo", "up")
        self.underlay.run("ip", "link", "add", "br0", "type", "bridge")
        self.underlay.run("ip", "addr", "add", f"{UNDERLAY_GATEWAY}/24", "dev", "br0")
        self.underlay.run("ip", "link", "set", "br0", "up")
        self.nodes = [self.add_node(number) for number in range(1, nodes + 1)]
        self.outside = factory("outside")
        self._plug(self.outside, "outside", f"{OUTSIDE_ADDRESS}/24")

    def _plug(self, netns: Netns, port: str, address: str, mtu: int = 1500) -> None:
        self.underlay.run("ip", "link", "add", port, "mtu", str(mtu), "type", "veth", "peer",
                          "name", "eth0", "netns", netns.name)
        self.underlay.run("ip", "link", "set", port, "master", "br0", "up")
        netns.run("ip", "link", "set", "lo", "up")
        netns.run("ip", "link", "set", "eth0", "mtu", str(mtu))
        netns.run("ip", "addr", "add", address, "dev", "eth0")
        netns.run("ip", "link", "set", "eth0", "up")

    def add_node(self, number: int) -> Node:
        netns = self.factory(f"node{number}")
        node = Node(self, number, netns)
        self._plug(netns, f"port{number}", f"{node.address}/24")
        netns.run("ip", "route", "add", "default", "via", UNDERLAY_GATEWAY)
        netns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        return node

    def store_args(self, node: Node) -> list[str]:
        args = list(self.extra_store_args)
        if self.store == "file":
            args += ["--store-dir", str(self.store_dir)]
        if self.ip_masq:
            args.append("--ip-masq")
        if self.lease_ttl:
            args += ["--lease-ttl", str(self.lease_ttl), "--resync-interval", "2"]
        return args

    def start(self) -> None:
        for node in self.nodes:
            node.start_agent()
        for node in self.nodes:
            node.wait_ready()

    def close(self) -> None:
        for node in self.nodes:
            node.stop_agent()
