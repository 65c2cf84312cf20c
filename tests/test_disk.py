"""Full and read-only data directories, and state files found damaged.

The data directory is a small tmpfs mounted on a directory of the test (unmounted in a
finalizer): filled with one big file it answers "No space left on device", remounted
read-only "Read-only file system". Each plugin keeping state on the node is shown there:
host-local (in-process: it touches no kernel state), bridge + host-local, flannel and the
meta plugin (as processes in sandbox namespaces). For each: ADD fails with code 5 naming the
path and the cause, nothing is half-written (no temp file, no allocation without its
attachment, no link or address left in the sandbox), and once there is room again ADD gets
the first address.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pycni.ipam.host_local.plugin import PLUGIN as HOST_LOCAL
from pycni.plugins.flannel import plugin as flannel_plugin
from pycni.plugins.flannel.plugin import PLUGIN as FLANNEL

from pycni.errors import CNIError
from pycni.skel import CmdArgs
from tests.conftest import (
    IS_ROOT,
    PYCNI,
    Netns,
    NetnsFactory,
    Outcome,
    cni_env,
    run_exec,
    run_in_process,
)
from tests.multuslib import MultusNode, interfaces

NETNS = "/var/run/netns/pycni-disk-unused"  # host-local never opens it
FULL = "No space left on device"
READ_ONLY = "Read-only file system"
FLANNEL_LEASE = ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n"
                 "FLANNEL_MTU=1400\nFLANNEL_IPMASQ=true\n")


class SmallDisk:
    """A 64 KiB tmpfs: filled, freed, remounted read-only or read-write."""

    SIZE = 64 * 1024

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def mount(self, option: str = "") -> None:
        options = f"size={self.SIZE}" + (f",{option}" if option else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "pycni-test-disk",
                        str(self.path)], check=True, capture_output=True)

    def remount(self, mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.path)], check=True,
                       capture_output=True)

    def fill(self, leave_pages: int = 0) -> None:
        """Take all the space but `leave_pages` pages."""
        stat = os.statvfs(self.path)
        size = max(0, (stat.f_bavail - leave_pages) * stat.f_bsize)
        with open(self.filler, "ab") as handle, contextlib.suppress(OSError):
            handle.write(b"\0" * size)
        assert os.statvfs(self.path).f_bavail == leave_pages

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def files(self) -> dict[str, int]:
        """Every file under the disk but the filler: relative path -> size."""
        return {str(p.relative_to(self.path)): p.stat().st_size
                for p in sorted(self.path.rglob("*")) if p.is_file() and p != self.filler}

    def temp_files(self) -> list[str]:
        return [name for name in self.files() if name.endswith(".tmp")]


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    if not IS_ROOT:
        pytest.skip("needs root to mount a tmpfs")
    found = SmallDisk(tmp_path / "disk")
    found.path.mkdir()
    found.mount()
    try:
        yield found
    finally:
        done = subprocess.run(["umount", str(found.path)], capture_output=True)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(found.path)], capture_output=True)


def io_error(outcome: Outcome, path: Path | str, cause: str) -> str:
    """Code 5, the message naming `path` and `cause`; the message."""
    msg = str(outcome.error(5)["msg"])
    assert str(path) in msg and cause in msg, msg
    return msg


# --- host-local, in-process -------------------------------------------------------------------

def ipam_conf(data_dir: Path | str, **ipam: Any) -> dict[str, Any]:
    return {"cniVersion": "1.1.0", "name": "net1", "type": "bridge",
            "ipam": {"type": "host-local", "subnet": "10.1.0.0/29", "dataDir": str(data_dir),
                     **ipam}}


def host_local(command: str, conf: Any, cid: str = "ctr-1") -> Outcome:
    netns = NETNS if command in ("ADD", "CHECK") else ""
    return run_in_process(HOST_LOCAL, cni_env(command, netns, container_id=cid), conf)


def allocated(outcome: Outcome) -> list[str]:
    return [ip["address"] for ip in outcome.ok()["ips"]]


def test_host_local_full_disk(disk: SmallDisk) -> None:
    conf = ipam_conf(disk.path)
    disk.fill()
    io_error(host_local("ADD", conf), disk.path / "net1" / "10.1.0.2", FULL)
    assert disk.files() == {} and not (disk.path / "net1").exists()  # the first use undone
    host_local("DEL", conf).ok()
    host_local("GC", {**conf, "cni.dev/valid-attachments": []}).ok()
    disk.free()
    assert allocated(host_local("ADD", conf)) == ["10.1.0.2/29"]


def test_host_local_room_for_the_address_but_not_its_metadata(disk: SmallDisk) -> None:
    """One page left: the allocation file is written, the metadata is not: the address is
    given back, so no allocation stays without its attachment."""
    conf = ipam_conf(disk.path)
    disk.fill(leave_pages=1)
    io_error(host_local("ADD", conf), disk.path / "net1" / ".meta" / "10.1.0.2", FULL)
    assert disk.files() == {"net1/lock": 0}
    disk.free()
    assert allocated(host_local("ADD", conf)) == ["10.1.0.2/29"]
    assert sorted(disk.files()) == ["net1/.meta/10.1.0.2", "net1/10.1.0.2",
                                    "net1/last_reserved_ip.0", "net1/lock"]


def test_host_local_read_only_disk(disk: SmallDisk) -> None:
    conf = ipam_conf(disk.path)
    disk.remount("ro")
    io_error(host_local("ADD", conf), disk.path / "net1", READ_ONLY)
    assert disk.files() == {}
    disk.remount("rw")
    assert allocated(host_local("ADD", conf)) == ["10.1.0.2/29"]
    before = disk.files()
    disk.remount("ro")
    io_error(host_local("ADD", conf, cid="ctr-2"), disk.path / "net1" / "lock", READ_ONLY)
    io_error(host_local("DEL", conf), disk.path / "net1" / "lock", READ_ONLY)
    assert disk.files() == before                    # nothing changed, nothing half-done
    disk.remount("rw")
    host_local("DEL", conf).ok()
    assert allocated(host_local("ADD", conf, cid="ctr-2")) == ["10.1.0.3/29"]


# --- bridge + host-local, flannel, multus: processes in sandbox namespaces ------------------

def pod_state(pod: Netns) -> list[tuple[str, list[str]]]:
    """Links of the pod and their addresses (lo alone when nothing was left)."""
    return [(link["ifname"], [a["local"] for a in link.get("addr_info", [])
                              if a.get("scope") == "global"])
            for link in pod.ip_json("addr")]


def node_state(host: Netns) -> list[tuple[str, str, list[str]]]:
    """The node's links (name, kind, global addresses)."""
    found = []
    for link in host.ip_json("-d", "addr"):
        kind = link.get("linkinfo", {}).get("info_kind", "")
        found.append((link["ifname"], kind, [a["local"] for a in link.get("addr_info", [])
                                             if a.get("scope") == "global"]))
    return found


def no_veth_no_address(host: Netns) -> bool:
    """Nothing of a pod on the node: no veth, no address (an empty bridge may stay, as the
    reference leaves it)."""
    return all(kind != "veth" and not addresses for _, kind, addresses in node_state(host))


def test_bridge_with_host_local_on_a_full_then_read_only_disk(
        disk: SmallDisk, host_ns: Netns, netns_factory: NetnsFactory, cni_bin: Path) -> None:
    conf = {**ipam_conf(disk.path), "bridge": "cni0", "isGateway": True}
    host_ns.run("ip", "link", "set", "lo", "up")
    pod = netns_factory("pod")

    def run(command: str) -> Outcome:
        return run_exec([*PYCNI, "bridge"], cni_env(command, pod.path, path=str(cni_bin)),
                        conf, in_ns=host_ns)

    disk.fill()
    io_error(run("ADD"), disk.path / "net1" / "10.1.0.2", FULL)
    assert pod_state(pod) == [("lo", [])] and no_veth_no_address(host_ns)
    assert disk.files() == {} and not (disk.path / "net1").exists()
    disk.remount("ro")
    io_error(run("ADD"), disk.path / "net1", READ_ONLY)
    assert pod_state(pod) == [("lo", [])] and no_veth_no_address(host_ns)
    run("DEL").error(5)                              # cannot release: says why
    disk.remount("rw")
    disk.free()
    result = run("ADD").ok()
    assert [ip["address"] for ip in result["ips"]] == ["10.1.0.2/29"]
    assert pod_state(pod) == [("lo", []), ("eth0", ["10.1.0.2"])]
    run("DEL").ok()
    assert no_veth_no_address(host_ns) is False      # the gateway stays on cni0
    assert disk.temp_files() == []


def test_flannel_data_dir_full_then_read_only(disk: SmallDisk, host_ns: Netns,
                                              netns_factory: NetnsFactory, cni_bin: Path,
                                              tmp_path: Path) -> None:
    subnet_file = tmp_path / "subnet.env"
    subnet_file.write_text(FLANNEL_LEASE)
    ipam_dir = tmp_path / "ipam"
    conf = {"cniVersion": "1.0.0", "name": "cbr0", "type": "flannel",
            "subnetFile": str(subnet_file), "dataDir": str(disk.path),
            "ipam": {"dataDir": str(ipam_dir)}}
    host_ns.run("ip", "link", "set", "lo", "up")
    pod = netns_factory("pod")
    saved = disk.path / "cbr0" / "ctr-1:eth0"

    def run(command: str) -> Outcome:
        return run_exec([*PYCNI, "flannel"], cni_env(command, pod.path, path=str(cni_bin)),
                        conf, in_ns=host_ns)

    def nothing_left() -> None:
        assert disk.files() == {}
        assert not ipam_dir.exists() or not any(ipam_dir.glob("cbr0/10.*"))
        assert pod_state(pod) == [("lo", [])] and no_veth_no_address(host_ns)

    disk.fill()
    io_error(run("ADD"), saved, FULL)
    nothing_left()
    disk.remount("ro")
    io_error(run("ADD"), disk.path / "cbr0", READ_ONLY)
    nothing_left()
    run("DEL").ok()                                  # nothing saved: nothing to undo
    disk.remount("rw")
    disk.free()
    result = run("ADD").ok()
    assert [ip["address"] for ip in result["ips"]] == ["10.244.3.2/24"]
    assert list(disk.files()) == ["cbr0/ctr-1:eth0"]
    run("DEL").ok()
    assert disk.files() == {} and not any(ipam_dir.glob("cbr0/10.*"))


@pytest.fixture
def multus_node(netns_factory: NetnsFactory, tmp_path: Path,
                cni_bin: Path) -> Iterator[MultusNode]:
    built = MultusNode(netns_factory, tmp_path / "node", cni_bin)
    try:
        yield built
    finally:
        built.close()


def test_multus_cache_dir_full_then_read_only(disk: SmallDisk,
                                              multus_node: MultusNode) -> None:
    node = multus_node
    conf = node.conf(cniDir=str(disk.path))
    pod = node.add_pod("web")
    cache = disk.path / "ctr-web:eth0"

    def nothing_left() -> None:
        assert [name for name in disk.files() if not name.startswith(".lock.")] == []
        assert interfaces(pod) == {} and node.all_allocations() == {}
        assert not (node.lib_dir / "flannel").exists() or not any(
            (node.lib_dir / "flannel").rglob("ctr-*"))

    disk.fill()
    io_error(node.run("ADD", conf, pod, "web"), cache, FULL)
    nothing_left()
    disk.remount("ro")
    io_error(node.run("ADD", conf, pod, "web"), disk.path / ".lock.ctr-web", READ_ONLY)
    nothing_left()
    disk.remount("rw")
    disk.free()
    result = node.run("ADD", conf, pod, "web").ok()
    assert [ip["address"] for ip in result["ips"]] == ["10.244.1.2/24"]
    assert "ctr-web:eth0" in disk.files()
    node.run("DEL", conf, pod, "web").ok()
    nothing_left()


# --- damaged state files ------------------------------------------------------------------

def test_host_local_truncated_files(tmp_path: Path) -> None:
    """An empty allocation file, an empty last_reserved_ip, empty and half-written metadata:
    ADD, CHECK, DEL, STATUS and GC carry on; GC reclaims the ownerless address."""
    conf = ipam_conf(tmp_path)
    net_dir = tmp_path / "net1"
    (net_dir / ".meta").mkdir(parents=True)
    (net_dir / "10.1.0.2").write_bytes(b"")                       # truncated allocation
    (net_dir / "10.1.0.3").write_bytes(b"ctr-old\r\neth0")
    (net_dir / ".meta" / "10.1.0.3").write_bytes(b"")              # truncated metadata
    (net_dir / "10.1.0.4").write_bytes(b"ctr-half\r\neth0")
    (net_dir / ".meta" / "10.1.0.4").write_bytes(b'{"boot": "x", "crea')
    (net_dir / "last_reserved_ip.0").write_bytes(b"")
    assert allocated(host_local("ADD", conf)) == ["10.1.0.5/29"]
    host_local("CHECK", conf).ok()
    host_local("STATUS", conf).ok()
    host_local("DEL", conf, cid="ctr-old").ok()
    assert not (net_dir / "10.1.0.3").exists() and not (net_dir / ".meta" / "10.1.0.3").exists()
    valid = [{"containerID": "ctr-1", "ifname": "eth0"},
             {"containerID": "ctr-half", "ifname": "eth0"}]
    host_local("GC", {**conf, "cni.dev/valid-attachments": valid}).ok()
    assert sorted(p.name for p in net_dir.glob("10.*")) == ["10.1.0.4", "10.1.0.5"]
    assert allocated(host_local("ADD", conf, cid="ctr-2")) == ["10.1.0.6/29"]


def test_flannel_empty_saved_config(tmp_path: Path) -> None:
    """An empty saved delegate: DEL forgets it (there is no delegate to call), CHECK names
    it, GC drops it when the runtime no longer lists it; no subnet.env needed for any."""
    conf = {"cniVersion": "1.1.0", "name": "cbr0", "type": "flannel",
            "subnetFile": str(tmp_path / "absent.env"), "dataDir": str(tmp_path / "data")}
    saved = tmp_path / "data" / "cbr0"
    saved.mkdir(parents=True)
    for cid in ("ctr-1", "ctr-2"):
        (saved / f"{cid}:eth0").write_bytes(b"")

    def run(command: str, cid: str, extra: dict[str, Any] | None = None) -> Outcome:
        return run_in_process(FLANNEL, cni_env(command, container_id=cid),
                              {**conf, **(extra or {})})

    # CHECK through its handler: the dispatcher would want a pod namespace first.
    check = CmdArgs("CHECK", "ctr-2", "", "eth0", "", [], b"", conf, "1.1.0", {})
    with pytest.raises(CNIError, match="ctr-2:eth0.* is not a delegate config"):
        flannel_plugin.cmd_check(check)
    run("DEL", "ctr-1").ok()
    assert sorted(p.name for p in saved.iterdir()) == ["ctr-2:eth0"]
    run("GC", "ctr-1", {"cni.dev/valid-attachments": []}).ok()
    assert list(saved.iterdir()) == []


def half_written_cache(node: MultusNode, name: str) -> tuple[dict[str, Any], Netns, Any]:
    """A pod added, then its cache cut in the middle; (conf, pod, ADD result)."""
    conf = node.conf(cniVersion="1.1.0")
    pod = node.add_pod(name)
    added = node.run("ADD", conf, pod, name).ok()
    cache = node.cache_dir / f"ctr-{name}:eth0"
    text = cache.read_text()
    cache.write_text(text[: len(text) // 2])
    return conf, pod, added


def test_multus_half_written_cache_check_and_gc(multus_node: MultusNode) -> None:
    """CHECK fails naming the attachment, GC removes the cache (DEL of a half cache, which
    also releases the cluster network, is in test_multus_lifecycle)."""
    node = multus_node
    conf, pod, added = half_written_cache(node, "half")
    msg = node.run("CHECK", {**conf, "prevResult": added}, pod, "half").error(999)["msg"]
    assert "ctr-half" in msg and "corrupt" in msg, msg
    node.run("GC", {**conf, "cni.dev/valid-attachments": []}, None, "half").ok()
    assert node.caches() == []


def test_multus_gc_of_a_half_written_cache_releases_the_cluster_network(
        multus_node: MultusNode) -> None:
    node = multus_node
    conf, _, _ = half_written_cache(node, "half")
    node.run("GC", {**conf, "cni.dev/valid-attachments": []}, None, "half").ok()
    assert node.all_allocations() == {}


# Files that open something for writing that is not node state, and why.
NOT_STATE = {
    "pycni/sysctl.py": "writes /proc/sys: kernel settings, not files",
    "pycni/daemon.py": "reopens its own standard streams (fds 1 and 2)",
    "pycni/faults.py": "appends a trace of injected faults, for tests only",
}


def test_state_is_written_through_the_atomic_writer() -> None:
    """Every state file of the plugins goes through pycni.store (temp file, fsync, rename):
    no plugin opens a state file for writing itself."""
    import re

    from tests.conftest import REPO

    pattern = re.compile(r"""open\([^)]*['"][wa]b?['"]|\.write_text\(|\.write_bytes\(""")
    offenders = []
    for folder in ("pycni", "plugins", "ipam", "meta"):
        for path in sorted((REPO / folder).rglob("*.py")):
            name = str(path.relative_to(REPO))
            if name in NOT_STATE:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{name}:{number}: {line.strip()}")
    assert offenders == []
