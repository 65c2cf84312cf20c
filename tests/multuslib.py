"""A sandbox node for the multus tests: the users' node layout, the test API server, pods.

- `host`: the node's network namespace, with `eth1` (the business NIC, a veth whose peer
  stays in the node) and a veth to the `api` namespace, where the test API server listens
  on 192.168.0.1:6443 (the node is 192.168.0.10/24).
- Every plugin run gets its own mount namespace binding the node's directories of the test
  over `/run/flannel`, `/var/lib/cni` and `/etc/cni/net.d` (bind targets are created empty
  on the machine if absent, their contents are never touched), so the users' configs run
  unchanged: the seed multus config with its kubeconfig path, flannel's subnet.env,
  host-local's and multus' default directories.
- NADs from the seeds, pods with their annotations, runs of `pycni multus` as a runtime
  does, and readers of what the kernel and the directories hold.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PYCNI, Netns, NetnsFactory, Outcome, cni_env
from tests.kubeapi import KubeApiServer, write_kubeconfig

SEEDS = Path("/work/shared/seeds")
API_ADDRESS, NODE_ADDRESS = "192.168.0.1", "192.168.0.10"
NODE_MOUNTS = ("/run/flannel", "/var/lib/cni", "/etc/cni/net.d")
MOUNT_SCRIPT = ('set -e; mount --bind "$1" /run/flannel; mount --bind "$2" /var/lib/cni; '
                'mount --bind "$3" /etc/cni/net.d; ns="$4"; shift 4; '
                'exec ip netns exec "$ns" "$@"')
SUBNET_ENV = ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
              "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
KUBECONFIG = "/etc/cni/net.d/multus.d/multus.kubeconfig"  # as the seed config says
STORAGE_SUBNET = "172.16.0.0/16"  # the seeds' storage plane


def seed(name: str) -> Any:
    return json.loads((SEEDS / name).read_text())


@dataclass
class MultusNode:
    """One node: namespaces, directories, the API server; pods made on demand."""

    namespaces: NetnsFactory
    root: Path
    cni_bin: Path
    host: Netns = field(init=False)
    api_ns: Netns = field(init=False)
    api: KubeApiServer = field(init=False)

    def __post_init__(self) -> None:
        for mount_point in NODE_MOUNTS:
            os.makedirs(mount_point, exist_ok=True)  # bind targets; their contents stay
        for directory in (self.run_dir, self.lib_dir, self.etc_dir / "multus.d"):
            directory.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "subnet.env").write_text(SUBNET_ENV)
        self.host = self.namespaces("host")
        self.api_ns = self.namespaces("api")
        for ns in (self.host, self.api_ns):
            ns.run("ip", "link", "set", "lo", "up")
        self.host.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "api0",
                      "netns", self.api_ns.name)
        self.host.run("ip", "addr", "add", f"{NODE_ADDRESS}/24", "dev", "eth0")
        self.host.run("ip", "link", "set", "eth0", "up")
        self.api_ns.run("ip", "addr", "add", f"{API_ADDRESS}/24", "dev", "api0")
        self.api_ns.run("ip", "link", "set", "api0", "up")
        for nic, peer in (("eth1", "eth1-peer"), ("eth2", "eth2-peer")):
            self.host.run("ip", "link", "add", nic, "type", "veth", "peer", "name", peer)
            self.host.run("ip", "link", "set", nic, "up")
            self.host.run("ip", "link", "set", peer, "up")
        self.api = KubeApiServer(self.api_ns.path, host=API_ADDRESS, port=6443).start()
        write_kubeconfig(self.etc_dir / "multus.d" / "multus.kubeconfig",
                         f"http://{API_ADDRESS}:6443")

    def close(self) -> None:
        self.api.stop()

    # --- directories --------------------------------------------------------------------

    @property
    def run_dir(self) -> Path:
        return self.root / "run-flannel"

    @property
    def lib_dir(self) -> Path:
        """The node's /var/lib/cni."""
        return self.root / "var-lib-cni"

    @property
    def etc_dir(self) -> Path:
        """The node's /etc/cni/net.d."""
        return self.root / "etc-cni-net.d"

    @property
    def cache_dir(self) -> Path:
        return self.lib_dir / "multus"

    def caches(self) -> list[str]:
        return sorted(p.name for p in self.cache_dir.iterdir()
                      if not p.name.startswith(".")) if self.cache_dir.exists() else []

    def allocations(self, network: str) -> dict[str, str]:
        """host-local's files under the node's /var/lib/cni/networks: address -> container."""
        directory = self.lib_dir / "networks" / network
        held = {}
        for path in directory.iterdir() if directory.exists() else []:
            if path.name[0].isdigit() and not path.name.startswith("last_reserved"):
                held[path.name] = path.read_text().splitlines()[0].strip()
        return held

    def all_allocations(self) -> dict[str, dict[str, str]]:
        networks = self.lib_dir / "networks"
        found = {p.name: self.allocations(p.name) for p in networks.iterdir()} if (
            networks.exists()) else {}
        return {name: held for name, held in found.items() if held}

    # --- the cluster ---------------------------------------------------------------------

    def conf(self, **keys: Any) -> dict[str, Any]:
        """The users' multus config (seed, unchanged) with `keys` added or replaced."""
        conf: dict[str, Any] = seed("multus-conf.json")
        conf.update(keys)
        return conf

    def business_nad(self, namespace: str = "default", name: str = "business-network",
                     **changes: Any) -> dict[str, Any]:
        """The seed business NAD (macvlan on eth1), stored in the API with `changes`."""
        config = seed("nad-business-network.macvlan.json")
        config.update(changes)
        self.api.add_nad(namespace, name, config)
        return config

    def macvlan_nad(self, namespace: str, name: str, subnet: str, master: str = "eth2",
                    **changes: Any) -> dict[str, Any]:
        """A macvlan NAD on its own host-local subnet."""
        config = {"cniVersion": "0.3.1", "type": "macvlan", "master": master, "mode": "bridge",
                  "ipam": {"type": "host-local", "subnet": subnet}, **changes}
        self.api.add_nad(namespace, name, config)
        return config

    def add_pod(self, name: str, namespace: str = "default", networks: Any = None,
                **annotations: str) -> Netns:
        """A pod in the API (its annotation: a list is written as JSON) and its netns."""
        if networks is not None:
            annotations["k8s.v1.cni.cncf.io/networks"] = (
                networks if isinstance(networks, str) else json.dumps(networks))
        self.api.add_pod(namespace, name, node_name="node1", annotations=annotations)
        return self.namespaces("pod")

    def network_status(self, name: str, namespace: str = "default") -> Any:
        annotations = self.api.pod(namespace, name)["metadata"].get("annotations") or {}
        raw = annotations.get("k8s.v1.cni.cncf.io/network-status")
        return None if raw is None else json.loads(raw)

    # --- runs ----------------------------------------------------------------------------

    def argv(self, *cmd: str) -> list[str]:
        """`cmd` inside the node: its netns and its directories."""
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", MOUNT_SCRIPT,
                "sh", str(self.run_dir), str(self.lib_dir), str(self.etc_dir), self.host.name,
                *cmd]

    def run(self, command: str, conf: Any, pod: Netns | None, name: str,
            namespace: str = "default", cid: str | None = None, ifname: str = "eth0",
            **extra: str) -> Outcome:
        """`pycni multus` as the runtime runs it for pod `namespace/name`."""
        cni_args = (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};"
                    f"K8S_POD_INFRA_CONTAINER_ID={cid or name}")
        env = cni_env(command, pod.path if pod else "", ifname=ifname,
                      container_id=cid or f"ctr-{name}", path=str(self.cni_bin),
                      CNI_ARGS=cni_args, **extra)
        return self.exec([*PYCNI, "multus"], env, conf)

    def exec(self, argv: list[str], env: dict[str, str], stdin: Any = b"") -> Outcome:
        data = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
        full_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **env}
        if "PYTHONPATH" in os.environ:
            full_env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        done = subprocess.run(self.argv(*argv), input=data, env=full_env,
                              capture_output=True, timeout=120)
        return Outcome(done.returncode, done.stdout.decode(), done.stderr.decode())

    def hotplug(self, verb: str, pod: Netns | None, name: str, network: str,
                namespace: str = "default", cid: str | None = None) -> Outcome:
        """`pycni multus attach|detach` with the node's seed config."""
        config = self.etc_dir / "00-multus.conf"
        if not config.exists():
            config.write_text(json.dumps(self.conf()))
        argv = [*PYCNI, "multus", verb, "--pod", f"{namespace}/{name}", "--network", network,
                "--container-id", cid or f"ctr-{name}", "--config", "/etc/cni/net.d/00-multus.conf",
                "--cni-path", str(self.cni_bin)]
        if pod is not None:
            argv += ["--netns", pod.path]
        return self.exec(argv, {})


def interfaces(pod: Netns) -> dict[str, list[str]]:
    """The pod's interfaces (not lo) and their global IPv4 addresses with prefix."""
    found = {}
    for link in pod.ip_json("addr"):
        if link["ifname"] == "lo":
            continue
        found[link["ifname"]] = [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]
                                 if a.get("family") == "inet"]
    return found


def default_routes(pod: Netns) -> list[dict[str, Any]]:
    return [r for r in pod.ip_json("-4", "route") if r.get("dst") == "default"]


def assert_nothing_left(node: MultusNode) -> None:
    """No address held, no cache, no port left on the node's bridge."""
    assert node.all_allocations() == {}
    assert node.caches() == []
    bridge_ports = [link["ifname"] for link in node.host.ip_json("link", "show", "master",
                                                                  "cni0")] if any(
        link["ifname"] == "cni0" for link in node.host.ip_json("link")) else []
    assert bridge_ports == []


@pytest.fixture(name="node")
def multus_node(netns_factory: NetnsFactory, tmp_path: Path,
                cni_bin: Path) -> Iterator[MultusNode]:
    """A test's sandbox multus node, closed however the test ends: a test module imports
    this to have it as its `node` fixture."""
    built = MultusNode(netns_factory, tmp_path, cni_bin)
    try:
        yield built
    finally:
        built.close()
