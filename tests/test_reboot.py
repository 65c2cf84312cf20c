"""A node reboots: what the previous boot left on disk is reclaimed, DEL of its pods succeeds.

A reboot here is what a runtime finds after one: a new boot ID and every pod namespace
gone (with the veths and moved devices in them, and the node's bridge), while
/var/lib/cni still holds the previous boot's allocations, multus caches, flannel's saved
delegates and host-device's saved devices. The previous boot runs with its own boot ID: a
file bound over /proc/sys/kernel/random/boot_id in the plugin's private mount namespace
(where the node's directories are bound too, tests/multuslib.py); after the "reboot" the
plugins read the machine's real one. Every plugin runs as a process in the sandbox node.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PYCNI, Netns, NetnsFactory, Outcome, cni_env
from tests.multuslib import MultusNode, assert_nothing_left, interfaces, seed

pytestmark = pytest.mark.kernel

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
REAL_BOOT = Path(BOOT_ID_PATH).read_text().strip()
BIND_BOOT = f'mount --bind "$0" {BOOT_ID_PATH} && exec "$@"'
CLUSTER, BUSINESS, MANAGEMENT = "default-cni-network", "business-network", "management-network"


class RebootingNode(MultusNode):
    """A multus node whose plugins see `boot` as the boot ID until `reboot()`."""

    boot: str | None = None

    def argv(self, *cmd: str) -> list[str]:
        inner = super().argv(*cmd)
        if self.boot is None:
            return inner
        boot_file = self.root / "previous-boot-id"
        boot_file.write_text(self.boot + "\n")
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", BIND_BOOT,
                str(boot_file), *inner]

    def reboot(self, pods: list[Netns]) -> None:
        """The pods' namespaces and the node's bridge are gone; a new boot ID."""
        for pod in pods:
            self.namespaces.remove(pod)
        self.host.run("ip", "link", "del", "cni0", check=False)
        self.boot = None

    def saved(self, plugin: str) -> list[str]:
        """Files a plugin keeps per attachment under the node's /var/lib/cni/<plugin>."""
        directory = self.lib_dir / plugin
        return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                      if p.is_file() and not p.name.startswith(".") and p.name != "lock"
                      ) if directory.exists() else []

    def boots(self, network: str) -> set[str]:
        """The boot IDs recorded with the network's allocations."""
        meta_dir = self.lib_dir / "networks" / network / ".meta"
        return {json.loads(p.read_text())["boot"] for p in meta_dir.iterdir()}

    def plugin(self, plugin_type: str, command: str, conf: Any, **extra: str) -> Outcome:
        """`pycni <type>` run directly in the node (as a runtime runs a plugin)."""
        return self.exec([*PYCNI, plugin_type], cni_env(command, path=str(self.cni_bin),
                                                        **extra), conf)


@pytest.fixture
def node(netns_factory: NetnsFactory, tmp_path: Path, cni_bin: Path) -> Iterator[RebootingNode]:
    built = RebootingNode(netns_factory, tmp_path, cni_bin)
    try:
        yield built
    finally:
        built.close()


def management_nad(node: RebootingNode) -> dict[str, Any]:
    """The seed host-device NAD: eth2 of the node moves into the pod."""
    config: dict[str, Any] = seed("nad-management-network.host-device.json")
    node.api.add_nad("default", MANAGEMENT, config)
    return config


def previous_boot(node: RebootingNode) -> tuple[dict[str, Any], list[Netns]]:
    """Boot A: pod `a` on the cluster, business (macvlan) and management (host-device)
    networks, pod `b` on the cluster network only. The multus config and the pods."""
    node.boot = str(uuid.uuid4())
    node.business_nad()
    management_nad(node)
    conf = node.conf(cniVersion="1.1.0")
    first = node.add_pod("a", networks=[{"name": BUSINESS, "interface": "net1"},
                                        {"name": MANAGEMENT, "interface": "mgmt0"}])
    second = node.add_pod("b")
    node.run("ADD", conf, first, "a").ok()
    node.run("ADD", conf, second, "b").ok()
    assert set(interfaces(first)) == {"eth0", "net1", "mgmt0"}
    assert node.all_allocations() == {
        CLUSTER: {"10.244.1.2": "ctr-a", "10.244.1.3": "ctr-b"},
        BUSINESS: {"192.168.100.10": "ctr-a"}, MANAGEMENT: {"10.0.0.10": "ctr-a"}}
    assert node.caches() == ["ctr-a:eth0", "ctr-b:eth0"]
    assert node.saved("flannel") == [f"{CLUSTER}/ctr-a:eth0", f"{CLUSTER}/ctr-b:eth0"]
    assert node.saved("host-device") == [f"{MANAGEMENT}/ctr-a:mgmt0"]
    assert all(node.boots(network) == {node.boot} for network in (CLUSTER, BUSINESS))
    return conf, [first, second]


def test_gc_with_an_empty_list_reclaims_the_previous_boot(node: RebootingNode) -> None:
    """After the reboot the runtime lists no attachment: each plugin's GC reclaims its own
    state of the previous boot, then multus' GC its caches."""
    conf, pods = previous_boot(node)
    node.reboot(pods)
    empty: dict[str, Any] = {"cni.dev/valid-attachments": []}

    flannel = {"cniVersion": "1.1.0", "name": CLUSTER, "type": "flannel",
               "delegate": {"hairpinMode": True, "isDefaultGateway": True}, **empty}
    node.plugin("flannel", "GC", flannel).ok()       # its saved delegates; bridge, host-local
    assert node.saved("flannel") == []
    assert CLUSTER not in node.all_allocations()

    business = {**seed("nad-business-network.macvlan.json"), "cniVersion": "1.1.0",
                "name": BUSINESS, **empty}
    node.plugin("macvlan", "GC", business).ok()
    assert BUSINESS not in node.all_allocations()

    management = {**seed("nad-management-network.host-device.json"), "cniVersion": "1.1.0",
                  "name": MANAGEMENT, **empty}
    node.plugin("host-device", "GC", management).ok()
    assert node.saved("host-device") == [] and node.all_allocations() == {}

    node.run("GC", {**conf, **empty}, None, "gc").ok()
    assert_nothing_left(node)


def test_multus_gc_alone_reclaims_the_previous_boot(node: RebootingNode) -> None:
    """multus' GC by itself: each cached attachment the runtime no longer lists is DEL'd
    from its cache (the pod's namespace is gone: DEL without it), every delegate's state
    goes with it."""
    conf, pods = previous_boot(node)
    node.reboot(pods)
    node.run("GC", {**conf, "cni.dev/valid-attachments": []}, None, "gc").ok()
    assert_nothing_left(node)
    assert node.saved("flannel") == [] and node.saved("host-device") == []


def test_del_of_each_vanished_pod_succeeds_and_releases(node: RebootingNode) -> None:
    """The runtime DELs the pods it knew, with the namespace paths that no longer exist."""
    conf, pods = previous_boot(node)
    node.reboot(pods)
    for pod, name in zip(pods, ("a", "b"), strict=True):
        for _ in range(2):                           # repeated DEL is fine too
            node.run("DEL", conf, pod, name).ok()
    assert_nothing_left(node)
    assert node.saved("flannel") == [] and node.saved("host-device") == []


def test_exhausted_range_reclaims_the_previous_boots_address(node: RebootingNode) -> None:
    """A node subnet with one address: taken in the previous boot; after the reboot a new
    pod gets it (reclaimed, now of this boot); the old pod's late DEL leaves it alone."""
    (node.run_dir / "subnet.env").write_text(
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/30\nFLANNEL_MTU=1450\n"
        "FLANNEL_IPMASQ=true\n")
    conf = node.conf(cniVersion="1.1.0")
    node.boot = str(uuid.uuid4())
    old = node.add_pod("old")
    node.run("ADD", conf, old, "old").ok()
    second = node.add_pod("second")
    node.run("ADD", conf, second, "second").error(999)  # one address only, in this boot
    assert node.all_allocations() == {CLUSTER: {"10.244.1.2": "ctr-old"}}
    node.reboot([old, second])

    new = node.add_pod("new")
    result = node.run("ADD", conf, new, "new").ok()
    assert [ip["address"] for ip in result["ips"]] == ["10.244.1.2/30"]
    assert node.all_allocations() == {CLUSTER: {"10.244.1.2": "ctr-new"}}
    assert node.boots(CLUSTER) == {REAL_BOOT}
    node.run("DEL", conf, old, "old").ok()
    assert node.all_allocations() == {CLUSTER: {"10.244.1.2": "ctr-new"}}
    assert interfaces(new) == {"eth0": ["10.244.1.2/30"]}
    node.run("DEL", conf, new, "new").ok()
    assert_nothing_left(node)
