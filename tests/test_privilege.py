"""Least privilege: what the plugins leave on the node is root's only, logs carry no token,
and the meta plugin reads its kubeconfig from its configured path only.

- State: after real ADDs in sandbox namespaces (flannel -> bridge -> host-local, multus with
  the seed chain flannel + portmap and a business NAD, host-device, sriov on a fake sysfs),
  every file a plugin created is 0600 (lock files too) and every directory it created 0700,
  under umask 0 (and 022 in make stress). The roots the test gives stay as the test made
  them; directories created on the way to a configured dataDir count as the plugin's.
- Tokens: multus with a bearer-token kubeconfig, logging at DEBUG to a file, on the good path
  and failing ones (the API refusing the token, the API down, an unusable kubeconfig), and
  `pycni install-conf` writing a kubeconfig from a service account token: the token is in no
  log, stderr or stdout.
- The kubeconfig: with `kubeconfig` set, KUBECONFIG and ~/.kube/config (pointing at another
  server) are ignored, also when the configured file is absent; without it, no API is used at
  all, not even the in-cluster one KUBERNETES_SERVICE_HOST names (Multus' thin plugin would
  use that one).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import test_host_device, test_sriov
from tests.conftest import PYCNI, Netns, NetnsFactory, cni_env, run_exec
from tests.kubeapi import KubeApiServer, write_kubeconfig
from tests.multuslib import API_ADDRESS, MultusNode, interfaces

pytestmark = pytest.mark.kernel

TOKEN = "pycni-secret-token-5f3a9c1e7b2d4068a1c3e5f7"  # found by substring anywhere
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJl"  # a service account's
PORTMAP_LOCK_DIR = "/run/pycni"  # portmap's node lock lives here; a test dir is bound over it
SUBNET_ENV = ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n"
              "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")


# --- modes ----------------------------------------------------------------------------------

# umask 0 (nothing masked: every mode is ours alone) in make test; 022 too in make stress.
@pytest.fixture(params=[0o000, pytest.param(0o022, marks=pytest.mark.stress)],
                ids=["umask-000", "umask-022"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The umask the plugins run under (children inherit the test process's)."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def paths_under(*roots: Path) -> set[str]:
    found: set[str] = set()
    for root in roots:
        for directory, dirnames, filenames in os.walk(root):
            found.add(directory)
            found.update(os.path.join(directory, name) for name in dirnames + filenames)
    return found


def wrong_modes(before: set[str], *roots: Path) -> list[str]:
    """Paths created since `before` that are not a 0700 directory or a 0600 file."""
    wrong = []
    for path in sorted(paths_under(*roots) - before):
        info = os.lstat(path)
        shown = os.path.relpath(path, os.path.dirname(roots[0]))
        if stat.S_ISDIR(info.st_mode):
            wanted = 0o700
        elif stat.S_ISREG(info.st_mode):
            wanted = 0o600
        else:
            wrong.append(f"{shown}: not a file or directory ({stat.filemode(info.st_mode)})")
            continue
        if stat.S_IMODE(info.st_mode) != wanted:
            wrong.append(f"{shown}: {stat.S_IMODE(info.st_mode):04o}, not {wanted:04o}")
    return wrong


def assert_root_only(before: set[str], *roots: Path) -> None:
    wrong = wrong_modes(before, *roots)
    assert not wrong, "\n".join(wrong)


def created_files(before: set[str], *roots: Path) -> list[str]:
    return sorted(p for p in paths_under(*roots) - before if os.path.isfile(p))


# --- flannel -> bridge -> host-local ----------------------------------------------------------

def test_flannel_bridge_host_local_state_is_root_only(umask: int, host_ns: Netns,
                                                      netns_factory: NetnsFactory,
                                                      cni_bin: Path, tmp_path: Path) -> None:
    (tmp_path / "subnet.env").write_text(SUBNET_ENV)
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    before = paths_under(state)
    # neither dataDir exists yet: the plugins make every directory on the way
    conf = {"cniVersion": "1.1.0", "name": "cbr0", "type": "flannel",
            "subnetFile": str(tmp_path / "subnet.env"),
            "dataDir": str(state / "lib" / "flannel"),
            "ipam": {"dataDir": str(state / "lib" / "networks")}}
    pods = [netns_factory("pod") for _ in range(2)]
    for number, pod in enumerate(pods):
        run_exec([*PYCNI, "flannel"], cni_env("ADD", pod.path, container_id=f"ctr-{number}",
                                              path=str(cni_bin)), conf, in_ns=host_ns).ok()
    made = created_files(before, state)
    assert {os.path.basename(p) for p in made} >= {"ctr-0:eth0", "ctr-1:eth0", "10.244.3.2",
                                                   "10.244.3.3", "lock"}, made
    assert_root_only(before, state)
    for number, pod in enumerate(pods):
        run_exec([*PYCNI, "flannel"], cni_env("DEL", pod.path, container_id=f"ctr-{number}",
                                              path=str(cni_bin)), conf, in_ns=host_ns).ok()
    assert_root_only(before, state)


# --- host-device and sriov --------------------------------------------------------------------

def test_host_device_and_sriov_state_is_root_only(umask: int, host_ns: Netns,
                                                  netns_factory: NetnsFactory, cni_bin: Path,
                                                  tmp_path: Path) -> None:
    (tmp_path / "hd").mkdir(mode=0o755)
    (tmp_path / "sriov").mkdir(mode=0o755)
    device = test_host_device.Node(host_ns, netns_factory, cni_bin, tmp_path / "hd")
    sriov = test_sriov.Node(host_ns, netns_factory, cni_bin, tmp_path / "sriov")
    sriov.setup()
    device.device()
    before = paths_under(tmp_path)
    pod = netns_factory("pod")
    device_conf, sriov_conf = device.conf("1.1.0"), sriov.conf("1.1.0")
    device.add(device_conf, pod)
    sriov.run("ADD", sriov_conf, pod, ifname="net2").ok()
    made = created_files(before, tmp_path)
    names = {os.path.relpath(p, tmp_path) for p in made}
    assert {"hd/state/mgmt/ctr-1:net1", "hd/ipam/mgmt/10.0.0.10",
            "sriov/state/networks/storage/ctr-1:net2", f"sriov/state/vfs/{sriov_conf['deviceID']}",
            "sriov/ipam/storage/172.16.1.10"} <= names, names
    assert_root_only(before, tmp_path)
    sriov.run("DEL", sriov_conf, pod, ifname="net2").ok()
    device.delete(device_conf, pod)
    assert_root_only(before, tmp_path)


# --- multus (flannel + portmap, a business NAD) ------------------------------------------------

class PrivilegeNode(MultusNode):
    """The multus node, with a directory of the test bound over portmap's /run/pycni too."""

    @property
    def portmap_dir(self) -> Path:
        return self.root / "run-pycni"

    def argv(self, *cmd: str) -> list[str]:
        os.makedirs(PORTMAP_LOCK_DIR, exist_ok=True)  # a bind target; its contents stay
        self.portmap_dir.mkdir(exist_ok=True)
        script = ('set -e; mount --bind "$1" /run/flannel; mount --bind "$2" /var/lib/cni; '
                  'mount --bind "$3" /etc/cni/net.d; mount --bind "$4" /run/pycni; ns="$5"; '
                  'shift 5; exec ip netns exec "$ns" "$@"')
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                str(self.run_dir), str(self.lib_dir), str(self.etc_dir), str(self.portmap_dir),
                self.host.name, *cmd]


@pytest.fixture
def node(netns_factory: NetnsFactory, tmp_path: Path, cni_bin: Path) -> Iterator[PrivilegeNode]:
    built = PrivilegeNode(netns_factory, tmp_path, cni_bin)
    try:
        yield built
    finally:
        built.close()


def test_multus_state_is_root_only(umask: int, node: PrivilegeNode) -> None:
    node.macvlan_nad("default", "business-network", "192.168.100.0/24", master="eth1")
    node.portmap_dir.mkdir(exist_ok=True)
    before = paths_under(node.lib_dir, node.portmap_dir)
    conf = node.conf(cniVersion="1.1.0", runtimeConfig={"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
    pods = {name: node.add_pod(name, networks="business-network") for name in ("a", "b")}
    for name, pod in pods.items():
        node.run("ADD", conf, pod, name).ok()
        assert sorted(interfaces(pod)) == ["eth0", "net1"]
    made = {os.path.relpath(p, node.root) for p in created_files(
        before, node.lib_dir, node.portmap_dir)}
    assert {"var-lib-cni/multus/ctr-a:eth0", "var-lib-cni/flannel/default-cni-network/ctr-a:eth0",
            "var-lib-cni/networks/default-cni-network/10.244.1.2",
            "var-lib-cni/networks/business-network/192.168.100.2",
            "var-lib-cni/multus/.lock.ctr-a", "run-pycni/portmap.lock"} <= made, made
    assert_root_only(before, node.lib_dir, node.portmap_dir)
    node.run("GC", {**conf, "cni.dev/valid-attachments": [
        {"containerID": "ctr-a", "ifname": "eth0"}]}, None, "none").ok()
    node.run("DEL", conf, pods["a"], "a").ok()
    assert_root_only(before, node.lib_dir, node.portmap_dir)


# --- no token in logs -------------------------------------------------------------------------

def outputs(*runs: Any, logs: list[Path]) -> str:
    text = "".join(run.stdout + run.stderr for run in runs)
    return text + "".join(log.read_text() for log in logs if log.exists())


def test_multus_logs_carry_no_token(node: PrivilegeNode, tmp_path: Path) -> None:
    node.api.token = TOKEN
    write_kubeconfig(node.etc_dir / "multus.d" / "multus.kubeconfig", node.api.url, TOKEN)
    node.business_nad()
    log_file = tmp_path / "logs" / "multus.log"
    log_file.parent.mkdir()
    conf = node.conf(logLevel="debug", logFile=str(log_file))
    debug = {"PYCNI_LOG_LEVEL": "DEBUG", "PYCNI_LOG_FILE": str(log_file)}
    runs = []

    pod = node.add_pod("good", networks="business-network")
    runs.append(node.run("ADD", conf, pod, "good", **debug))
    runs[-1].ok()
    assert sorted(interfaces(pod)) == ["eth0", "net1"]
    runs.append(node.run("DEL", conf, pod, "good", **debug))
    runs[-1].ok()

    node.api.token = "another-token"  # the API refuses ours
    refused = node.add_pod("refused", networks="business-network")
    runs.append(node.run("ADD", conf, refused, "refused", **debug))
    assert "401" in runs[-1].error(999)["msg"]
    runs.append(node.run("DEL", conf, refused, "refused", cid="ctr-never-added", **debug))
    runs[-1].ok()  # no cache: the API (refusing) is asked, then the cluster network

    node.api.stop()  # the API down
    down = node.namespaces("pod")
    runs.append(node.run("ADD", conf, down, "down", **debug))
    runs[-1].error(11)
    runs.append(node.run("DEL", conf, down, "down", cid="ctr-never-added-2", **debug))
    runs[-1].ok()

    broken = node.etc_dir / "multus.d" / "multus.kubeconfig"  # unusable: no current context
    kubeconfig = json.loads(broken.read_text())
    kubeconfig["current-context"] = "missing"
    broken.write_text(json.dumps(kubeconfig))
    runs.append(node.run("ADD", conf, down, "down", **debug))
    assert "kubeconfig" in runs[-1].error(7)["msg"]

    assert log_file.exists() and stat.S_IMODE(log_file.stat().st_mode) == 0o600
    assert TOKEN not in outputs(*runs, logs=[log_file])
    assert not node.all_allocations()


def test_install_conf_logs_carry_no_token(umask: int, tmp_path: Path) -> None:
    secrets = tmp_path / "sa"
    secrets.mkdir()
    (secrets / "token").write_text(TOKEN)
    (secrets / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n"
                                    "-----END CERTIFICATE-----\n")
    source = tmp_path / "src.conf"
    source.write_text(json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "bridge"}))
    log_file = tmp_path / "install.log"
    kubeconfig = tmp_path / "net.d" / "multus.d" / "multus.kubeconfig"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYCNI_LOG_LEVEL": "DEBUG",
           "PYCNI_LOG_FILE": str(log_file), "KUBERNETES_SERVICE_HOST": "10.96.0.1",
           "KUBERNETES_SERVICE_PORT": "443"}
    runs = []
    for extra in ([], ["--token-file", str(tmp_path / "missing")]):
        runs.append(subprocess.run(
            [*PYCNI, "install-conf", "--once", "--conf", str(source),
             "--to", str(tmp_path / "net.d" / "00-multus.conf"), "--kubeconfig", str(kubeconfig),
             "--token-file", str(secrets / "token"), "--ca-file", str(secrets / "ca.crt"),
             *extra], env=env, capture_output=True, text=True, timeout=60, check=False))
    assert runs[0].returncode == 0, runs[0].stderr
    assert runs[1].returncode == 1 and "missing" in runs[1].stderr
    assert TOKEN in kubeconfig.read_text()  # where it belongs, and only there
    assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o600
    assert stat.S_IMODE(kubeconfig.parent.stat().st_mode) == 0o700  # holds a credential
    assert stat.S_IMODE(kubeconfig.parent.parent.stat().st_mode) == 0o755  # the runtime's
    logged = "".join(r.stdout + r.stderr for r in runs)
    logged += log_file.read_text() if log_file.exists() else ""
    assert "wrote" in logged and TOKEN not in logged


def test_log_redacts_bearer_tokens(tmp_path: Path) -> None:
    """Whatever a message or a traceback holds, a bearer token or a token value is cut."""
    log_file = tmp_path / "plugin.log"
    script = "\n".join([
        "from pycni import log",
        f"logger = log.setup(level='DEBUG', file={str(log_file)!r})",
        f"logger.debug('headers %s', {{'Authorization': 'Bearer {TOKEN}'}})",
        f"logger.info('kubeconfig user: {{\"token\": \"{TOKEN}\"}}')",
        f"logger.info('yaml token: {TOKEN}')",
        f"logger.warning('the token file held %s', {JWT!r})",
        "try:",
        f"    raise RuntimeError('request failed: authorization=Bearer {TOKEN}')",
        "except RuntimeError:",
        "    logger.error('unexpected', exc_info=True)",
    ])
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    text = log_file.read_text()
    assert TOKEN not in text + done.stderr and text.count("<redacted>") == 5, text
    assert JWT not in text and "RuntimeError: request failed" in text


@pytest.mark.parametrize("message", [
    "cannot read the service account token /var/run/secrets/token",
    "tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token",
    "Kubernetes API: get pod default/a: 401 Unauthorized",
    "wrote /etc/cni/net.d/multus.d/multus.kubeconfig (token or CA changed)",
])
def test_redaction_leaves_ordinary_messages_alone(message: str) -> None:
    from pycni import log

    assert log.redact(message) == message


# --- the kubeconfig is read from its configured path only ------------------------------------

def test_multus_reads_only_its_configured_kubeconfig(node: PrivilegeNode,
                                                     tmp_path: Path) -> None:
    decoy = KubeApiServer(node.api_ns.path, host=API_ADDRESS, port=6444).start()
    try:
        decoy.add_nad("default", "business-network", {
            "cniVersion": "0.3.1", "type": "macvlan", "master": "eth2",
            "ipam": {"type": "host-local", "subnet": "172.31.0.0/24"}})
        node.business_nad()
        decoy_kubeconfig = write_kubeconfig(tmp_path / "decoy.kubeconfig", decoy.url)
        home = tmp_path / "home"
        (home / ".kube").mkdir(parents=True)
        write_kubeconfig(home / ".kube" / "config", decoy.url)
        elsewhere = {"KUBECONFIG": str(decoy_kubeconfig), "HOME": str(home),
                     "KUBERNETES_SERVICE_HOST": API_ADDRESS, "KUBERNETES_SERVICE_PORT": "6444"}
        for name in ("configured", "unconfigured"):
            node.add_pod(name, networks="business-network")
            decoy.add_pod("default", name, node_name="node1", annotations={
                "k8s.v1.cni.cncf.io/networks": "business-network"})

        pod = node.namespaces("pod")
        node.run("ADD", node.conf(), pod, "configured", **elsewhere).ok()
        assert interfaces(pod)["net1"] == ["192.168.100.10/16"]  # the configured API's NAD
        assert any("/pods/configured" in path for _, path, _ in node.api.requests)
        node.run("DEL", node.conf(), pod, "configured", **elsewhere).ok()

        served = len(node.api.requests)
        unconfigured = node.conf()
        del unconfigured["kubeconfig"]
        bare = node.namespaces("pod")
        node.run("ADD", unconfigured, bare, "unconfigured", **elsewhere).ok()
        assert sorted(interfaces(bare)) == ["eth0"]  # no API: no annotations, no NADs
        node.run("DEL", unconfigured, bare, "unconfigured", **elsewhere).ok()
        assert len(node.api.requests) == served

        configured = node.etc_dir / "multus.d" / "multus.kubeconfig"
        configured.rename(configured.with_suffix(".away"))  # configured, but absent
        absent = node.namespaces("pod")
        node.run("ADD", node.conf(), absent, "configured", cid="ctr-absent", **elsewhere).ok()
        assert sorted(interfaces(absent)) == ["eth0"]  # no API at all, as without one
        node.run("DEL", node.conf(), absent, "configured", cid="ctr-absent", **elsewhere).ok()
        assert len(node.api.requests) == served
        assert decoy.requests == []
    finally:
        decoy.stop()
