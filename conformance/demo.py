"""`make demo`: the users' two-node cluster, built, exercised and removed in front of you.

Everything lives in network namespaces this program creates (their names start with
`pycni-demo<pid>-`) and in one temporary directory:

- `underlay`: bridge `br0`, 192.168.0.1/24, the nodes' `eth0` segment (tests.flannelcluster);
  the Kubernetes API stand-in (tests.kubeapi) listens there on 192.168.0.1:6443, and etcd on
  192.168.0.1:2379 with `--store etcd`;
- `node1`, `node2`: `eth0` 192.168.0.10 and .20, the flannel agent (`pycni flanneld`, the
  frozen build) with the seed `net-conf.vxlan.json`; `eth1` plugged into the business segment;
  every command on a node sees the node's own /run/flannel, /var/lib/cni and /etc/cni/net.d;
- `business`: bridge `br0` of the business L2 segment, and `server`: 192.168.100.200/24 on it;
- one pod per node, made by `dist/cnitool` (libcni) with CNI_PATH=dist/bin from the seed
  `multus-conf.json` (flannel + portmap), its annotation selecting the seed business NAD
  (macvlan on `eth1`).

It pings pod to pod across the nodes and each pod to the business server, shows the VXLAN
packets on the underlay, then DELs the pods and removes everything, also on Ctrl-C or
SIGTERM. Nothing in the machine's own network namespace is created or changed. Exit status:
0 when every ping succeeded and the capture saw VXLAN packets, 1 when a step failed, 2 when
the demo cannot run here, 128 + the signal when interrupted (130 for Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from conformance.conftest import CNITOOL, DIST_BIN, missing_build
from conformance.flannellib import PROGRAM, SEEDS
from tests.conftest import Netns, NetnsFactory
from tests.flannelcluster import UNDERLAY_GATEWAY, Cluster, Node
from tests.kubeapi import KubeApiServer, write_kubeconfig
from tests.multuslib import MOUNT_SCRIPT, NODE_MOUNTS

# Printed once both agents wrote subnet.env: the interruption test waits for it.
AGENTS_MARKER = "==> flannel agents running"
NETWORK = "multus-cni-network"            # the seed multus config's name
SERVER_ADDRESS = "192.168.100.200"
SERVER_PREFIX = 24
NAD_NAME = "business-network"
POD_NAMESPACE = "default"
# The seed annotation asks for 192.168.100.10/24; the second pod asks for the next address
# (each node's host-local would otherwise hand out .10 twice on the shared segment).
BUSINESS_ADDRESSES = {"node1": "192.168.100.10/24", "node2": "192.168.100.11/24"}
VXLAN_PORT = 8472


class StepFailed(Exception):
    """A step of the demo did not do what it shows."""


def say(text: str = "") -> None:
    print(text, flush=True)


def show(output: str, indent: str = "    ") -> None:
    for line in output.rstrip().splitlines():
        say(indent + line)


def run_checked(argv: list[str], what: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, **kw)
    if done.returncode != 0:
        raise StepFailed(f"{what} failed ({done.returncode}): {done.stderr}{done.stdout}")
    return done


@dataclass
class DemoNamespaces(NetnsFactory):
    """The tests' namespace factory with a per-run prefix, so teardown can also find a
    namespace whose creation a Ctrl-C cut short."""

    prefix: str = ""

    def __call__(self, role: str) -> Netns:
        return super().__call__(f"{self.prefix}-{role}")

    def sweep(self) -> None:
        """Delete every namespace of this run, after ending what still runs inside it."""
        self.remove_all()
        for name in list_namespaces():
            if name.startswith(f"pycni-{self.prefix}-"):
                end_processes_in(name)
                subprocess.run(["ip", "netns", "del", name], capture_output=True)


def list_namespaces() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


def end_processes_in(namespace: str) -> None:
    """SIGKILL the processes left in one of our namespaces (only ours live there)."""
    pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True,
                          text=True).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def missing_host_directories() -> list[Path]:
    """The bind targets (and their parents) absent from the machine: created for the run,
    removed after it."""
    missing: list[Path] = []
    for mount_point in NODE_MOUNTS:
        path = Path(mount_point)
        while not path.exists() and path not in missing:
            missing.append(path)
            path = path.parent
    return missing


def remove_directories(paths: list[Path]) -> None:
    for path in sorted(paths, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            path.rmdir()                  # only when still empty


@dataclass
class Pod:
    name: str
    node: Node
    netns: Netns
    container_id: str
    result: dict[str, Any]

    @property
    def address(self) -> str:
        return str(self.result["ips"][0]["address"]).split("/")[0]

    @property
    def business_address(self) -> str:
        return BUSINESS_ADDRESSES[self.node.name].split("/")[0]


class Demo:
    def __init__(self, store: str, keep_going: bool, root: Path, undo: contextlib.ExitStack,
                 namespaces: DemoNamespaces) -> None:
        self.store, self.keep_going, self.root = store, keep_going, root
        self.undo, self.namespaces = undo, namespaces
        self.failures: list[str] = []
        self.pods: list[Pod] = []

    # --- building ----------------------------------------------------------------------

    def build(self) -> None:
        net_conf = json.loads((SEEDS / "net-conf.vxlan.json").read_text())
        for mount_point in NODE_MOUNTS:
            os.makedirs(mount_point, exist_ok=True)   # bind targets; their contents stay
        say("==> underlay: bridge br0 (192.168.0.1/24) and two nodes on it")
        self.cluster = Cluster(self.namespaces, self.root / "cluster", net_conf, nodes=2,
                               program=PROGRAM, store=self.store)
        self.undo.callback(self.best_effort, "stop the flannel agents", self.cluster.close)
        for node in self.cluster.nodes:
            say(f"    {node.name}: netns {node.netns.name}, eth0 {node.address}/24")
            (self.etc_dir(node) / "multus.d").mkdir(parents=True, exist_ok=True)
        self.build_business_segment()
        self.start_api()
        if self.store == "etcd":
            self.start_etcd(net_conf)
        else:
            say(f"==> flannel store: files in {self.cluster.store_dir} (shared by both nodes)")

    def build_business_segment(self) -> None:
        say(f"==> business L2 segment: bridge br0 in its own netns, server "
            f"{SERVER_ADDRESS}/{SERVER_PREFIX}, each node's eth1 plugged in")
        self.business = self.namespaces("business")
        self.business.run("ip", "link", "set", "lo", "up")
        self.business.run("ip", "link", "add", "br0", "type", "bridge")
        self.business.run("ip", "link", "set", "br0", "up")
        self.server = self.namespaces("server")
        plugs = [(self.server, "server", "eth0")] + [
            (node.netns, node.name, "eth1") for node in self.cluster.nodes]
        for netns, port, nic in plugs:
            self.business.run("ip", "link", "add", port, "type", "veth", "peer", "name", nic,
                              "netns", netns.name)
            self.business.run("ip", "link", "set", port, "master", "br0", "up")
            netns.run("ip", "link", "set", nic, "up")
        self.server.run("ip", "link", "set", "lo", "up")
        self.server.run("ip", "addr", "add", f"{SERVER_ADDRESS}/{SERVER_PREFIX}", "dev", "eth0")

    def start_api(self) -> None:
        """The pods and the NAD live in the API stand-in, as multus reads them."""
        self.api = KubeApiServer(self.cluster.underlay.path, host=UNDERLAY_GATEWAY, port=6443)
        self.api.start()
        self.undo.callback(self.best_effort, "stop the API stand-in", self.api.stop)
        nad = json.loads((SEEDS / "nad-business-network.macvlan.json").read_text())
        # As with upstream Multus, a selection's `ips` reach host-local only through the
        # `ips` capability; without it each node's host-local hands out 192.168.100.10.
        nad["capabilities"] = {"ips": True}
        self.api.add_nad(POD_NAMESPACE, NAD_NAME, nad)
        say(f"==> Kubernetes API stand-in on {self.api.url}: NAD {POD_NAMESPACE}/{NAD_NAME} "
            f"(seed macvlan on eth1, {nad['ipam']['subnet']}, plus capabilities "
            '{"ips": true} so the annotation\'s static "ips" are used)')
        for node in self.cluster.nodes:
            write_kubeconfig(self.etc_dir(node) / "multus.d" / "multus.kubeconfig",
                             self.api.url)
            (self.etc_dir(node) / "00-multus.conf").write_text(
                (SEEDS / "multus-conf.json").read_text())

    def start_etcd(self, net_conf: dict[str, Any]) -> None:
        from tests.etcdlib import ETCD, EtcdServer

        if not os.path.exists(ETCD):
            raise StepFailed(f"{ETCD} is not installed (Debian package etcd-server)")
        etcd = EtcdServer(self.cluster.underlay, UNDERLAY_GATEWAY, self.root / "etcd")
        self.undo.callback(self.best_effort, "stop etcd", etcd.stop)
        etcd.start()
        etcd.etcdctl("put", "/coreos.com/network/config", json.dumps(net_conf))
        self.cluster.extra_store_args = ["--etcd-endpoints", etcd.url]
        say(f"==> flannel store: etcd on {etcd.url} (in the underlay netns)")

    def start_agents(self) -> None:
        say("==> starting the flannel agent on each node: pycni flanneld --iface eth0 "
            "(seed net-conf.vxlan.json)")
        self.cluster.start()
        for node in self.cluster.nodes:
            say(f"    {node.name}: {node.subnet_file.name}: "
                + " ".join(node.subnet_file.read_text().split()))
        say(AGENTS_MARKER)

    # --- the node's view: its own /run/flannel, /var/lib/cni, /etc/cni/net.d -------------

    def etc_dir(self, node: Node) -> Path:
        return node.dir / "etc-cni-net.d"

    def node_argv(self, node: Node, *cmd: str) -> list[str]:
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", MOUNT_SCRIPT,
                "sh", str(node.run_dir), str(node.lib_dir), str(self.etc_dir(node)),
                node.netns.name, *cmd]

    def cnitool(self, node: Node, verb: str, pod_name: str, container_id: str,
                netns: Netns) -> dict[str, Any] | None:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "NETCONFPATH": "/etc/cni/net.d", "CNI_PATH": str(DIST_BIN),
               "CNI_CACHE_DIR": str(node.dir / "libcni-cache"), "CNI_IFNAME": "eth0",
               "CNI_CONTAINERID": container_id,
               "CNI_ARGS": (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={POD_NAMESPACE};"
                            f"K8S_POD_NAME={pod_name};K8S_POD_INFRA_CONTAINER_ID={container_id}")}
        done = run_checked(self.node_argv(node, str(CNITOOL), verb, NETWORK, netns.path),
                           f"cnitool {verb} {pod_name} on {node.name}", env=env, timeout=120)
        return json.loads(done.stdout) if done.stdout.strip() else None

    # --- pods --------------------------------------------------------------------------

    def add_pods(self) -> None:
        annotation = json.loads((SEEDS / "pod-annotations.json").read_text())["business-app"]
        for number, node in enumerate(self.cluster.nodes, 1):
            name = f"pod{number}"
            selection = [{**entry, "ips": [BUSINESS_ADDRESSES[node.name]]}
                         for entry in annotation]
            networks = json.dumps(selection)
            self.api.add_pod(POD_NAMESPACE, name, node_name=node.name,
                             annotations={"k8s.v1.cni.cncf.io/networks": networks})
            netns = self.namespaces(f"{name}")
            container_id = f"demo-{name}"
            say(f"==> {name} on {node.name}: cnitool add {NETWORK} (seed multus-conf.json), "
                f"annotation k8s.v1.cni.cncf.io/networks={networks}")
            pending = Pod(name, node, netns, container_id, {})
            self.undo.callback(self.best_effort, f"DEL {name}", self.delete_pod, pending)
            result = self.cnitool(node, "add", name, container_id, netns)
            assert result is not None
            pending.result = result
            self.pods.append(pending)
            say(f"    result: eth0 {result['ips'][0]['address']} gateway "
                f"{result['ips'][0].get('gateway')}")
            say(f"    {name}$ ip -br addr")
            show(netns.run("ip", "-br", "addr").stdout, "      ")
            say(f"    {name}$ ip route")
            show(netns.run("ip", "route").stdout, "      ")

    def delete_pod(self, pod: Pod) -> None:
        self.cnitool(pod.node, "del", pod.name, pod.container_id, pod.netns)
        left = [link["ifname"] for link in pod.netns.ip_json("link") if link["ifname"] != "lo"]
        say(f"    {pod.name}: DEL done, interfaces left in the pod: {left or 'none'}")

    def show_nodes(self) -> None:
        node1 = self.cluster.nodes[0]
        say(f"==> {node1.name}: the routes and VXLAN forwarding entries flannel programmed")
        say(f"    {node1.name}$ ip route")
        show(node1.netns.run("ip", "route").stdout, "      ")
        say(f"    {node1.name}$ bridge fdb show dev flannel.1")
        show(node1.netns.run("bridge", "fdb", "show", "dev", "flannel.1").stdout, "      ")

    # --- traffic -----------------------------------------------------------------------

    def ping(self, pod: Pod, address: str, what: str) -> bool:
        say(f"==> ping {what}: {pod.name} -> {address}")
        done = pod.netns.run("ping", "-c", "3", "-W", "2", address, check=False)
        show(done.stdout or done.stderr)
        if done.returncode == 0:
            say(f"    OK: {what} ping succeeded")
            return True
        self.fail(f"{what} ping {pod.name} -> {address} failed")
        return False

    def ping_all(self) -> None:
        pod1, pod2 = self.pods
        self.ping(pod1, pod2.address, "cross-node")
        self.ping(pod2, pod1.address, "cross-node")
        for pod in self.pods:
            self.ping(pod, SERVER_ADDRESS, "business network")

    def capture_vxlan(self) -> None:
        pod1, pod2 = self.pods
        say(f"==> VXLAN on the underlay: tcpdump on br0 (udp port {VXLAN_PORT}) while "
            f"{pod1.name} pings {pod2.name}")
        lines = capture(self.cluster.underlay, "br0",
                        ["-T", "vxlan", "udp", "port", str(VXLAN_PORT)],
                        lambda: pod1.netns.run("ping", "-c", "2", "-W", "2", pod2.address,
                                               check=False), count=4)
        packets = [line for line in lines if "VXLAN" in line]
        show("\n".join(lines[:6]))
        node1, node2 = self.cluster.nodes
        if packets and any(node1.address in line and node2.address in line
                           for line in packets):
            say(f"    OK: {len(packets)} VXLAN packets between {node1.address} and "
                f"{node2.address} (outer), carrying {pod1.address} <-> {pod2.address}")
        else:
            self.fail("the capture saw no VXLAN packet between the nodes")

    def fail(self, message: str) -> None:
        self.failures.append(message)
        say(f"    FAILED: {message}")
        if not self.keep_going:
            raise StepFailed(message)

    def best_effort(self, what: str, action: Callable[..., Any], *args: Any) -> None:
        try:
            action(*args)
        except Exception as error:            # teardown goes on; say what stayed
            say(f"    teardown: could not {what}: {error}")


def capture(netns: Netns, iface: str, expression: list[str], action: Callable[[], Any],
            count: int) -> list[str]:
    """tcpdump lines of up to `count` packets on `iface` while `action()` runs; tcpdump is
    ended on every path (flannellib.capture leaves it running on an interruption)."""
    process = subprocess.Popen(["ip", "netns", "exec", netns.name, "tcpdump", "-l", "-nn",
                                "-i", iface, "-c", str(count), *expression],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)                   # tcpdump attaches
        action()
        try:
            out, _ = process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            process.terminate()
            out, _ = process.communicate()
        return out.splitlines()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def report_teardown(namespaces: DemoNamespaces, root: Path) -> None:
    left = [name for name in list_namespaces() if name.startswith(f"pycni-{namespaces.prefix}-")]
    if left or root.exists():
        say(f"==> teardown incomplete: left {left} {root if root.exists() else ''}")
    else:
        say("==> teardown complete: no namespace, process or file of the demo is left")


class Interrupted(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM: stop the steps, tear down, exit 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Teardown runs to the end: a second Ctrl-C is ignored while it does."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT,
                                                                     signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cannot_run() -> str | None:
    if os.geteuid() != 0:
        return "the demo needs root (it creates network namespaces)"
    reason = missing_build()
    if reason or not os.access(PROGRAM[0], os.X_OK):
        return reason or f"{PROGRAM[0]} is missing: run `make build cnitool`"
    for tool in ("ip", "unshare", "tcpdump", "ping", "bridge"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (see the README's apt-get line)"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=("file", "etcd"), default="file",
                        help="the flannel agents' store (default: a shared directory)")
    parser.add_argument("--keep-going", action="store_true",
                        help="run every step even after one failed")
    options = parser.parse_args(argv)
    reason = cannot_run()
    if reason:
        say(f"demo: {reason}")
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt)
    status = 1
    with contextlib.ExitStack() as undo:
        root = Path(tempfile.mkdtemp(prefix="pycni-demo-"))
        created_directories = missing_host_directories()
        namespaces = DemoNamespaces(prefix=f"demo{os.getpid()}")
        # Registered first, run last: what the steps below armed has been undone by then.
        undo.callback(report_teardown, namespaces, root)
        undo.callback(remove_directories, created_directories)
        undo.callback(shutil.rmtree, root, True)
        undo.callback(namespaces.sweep)
        demo = Demo(options.store, options.keep_going, root, undo, namespaces)
        try:
            demo.build()
            demo.start_agents()
            demo.add_pods()
            demo.show_nodes()
            demo.ping_all()
            demo.capture_vxlan()
            status = 1 if demo.failures else 0
        except StepFailed as error:
            if str(error) not in demo.failures:
                say(f"    FAILED: {error}")
        except Interrupted as stop:
            say(f"==> interrupted ({stop})")
            status = 128 + stop.signum
        finally:
            with shielded():
                say("==> teardown: DEL every pod, stop the agents and servers, remove the "
                    "namespaces and files")
                undo.close()
    if status == 0:
        say("==> demo OK: cross-node and business-network pings succeeded, VXLAN seen on the "
            "underlay")
    elif status == 1:
        say("==> demo FAILED: " + "; ".join(demo.failures or ["see above"]))
    return status


if __name__ == "__main__":
    sys.exit(main())
