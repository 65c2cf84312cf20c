"""multus over a pod's life in a sandbox node: hot-plug, CHECK, STATUS, GC, a corrupt
cache, the seed business NAD's own default route beside the cluster network's, and the
container's lock file (gone with its last cache, also under concurrent runs).

Same node as test_multus.py (`tests/multuslib.py`); split from it to keep each file short.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from pycni.meta.multus import cache

from tests.conftest import Netns, Outcome
from tests.multuslib import (
    STORAGE_SUBNET,
    MultusNode,
    assert_nothing_left,
    default_routes,
    interfaces,
    multus_node,  # noqa: F401 (the `node` fixture)
    seed,
)

pytestmark = pytest.mark.kernel

ANNOTATIONS = seed("pod-annotations.json")


def test_hotplug_attach_and_detach(node: MultusNode) -> None:
    node.business_nad()
    node.macvlan_nad("default", "storage-network", STORAGE_SUBNET)
    pod = node.add_pod("vm", networks="business-network")
    conf = node.conf()
    node.run("ADD", conf, pod, "vm").ok()
    attached = node.hotplug("attach", pod, "vm", "storage-network").ok()
    assert attached["interface"] == "net2"
    assert interfaces(pod)["net2"] == ["172.16.0.2/16"]
    assert [s["interface"] for s in node.network_status("vm")] == ["eth0", "net1", "net2"]
    node.hotplug("detach", None, "vm", "storage-network").ok()
    assert sorted(interfaces(pod)) == ["eth0", "net1"]
    assert [s["interface"] for s in node.network_status("vm")] == ["eth0", "net1"]
    assert node.allocations("storage-network") == {}
    # attach again, then the pod's DEL removes the hot-plugged one with the rest
    node.hotplug("attach", pod, "vm", "storage-network@extra0").ok()
    assert sorted(interfaces(pod)) == ["eth0", "extra0", "net1"]
    node.run("DEL", conf, pod, "vm").ok()
    assert interfaces(pod) == {}
    assert_nothing_left(node)


def test_corrupt_cache_is_removed_after_a_best_effort_del(node: MultusNode) -> None:
    pod = node.add_pod("corrupt")
    conf = node.conf()
    node.run("ADD", conf, pod, "corrupt").ok()
    (node.cache_dir / "ctr-corrupt:eth0").write_text("{not json")
    node.run("DEL", conf, pod, "corrupt").ok()
    assert interfaces(pod) == {}
    assert_nothing_left(node)


def test_status_and_gc(node: MultusNode, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    conf = node.conf(cniVersion="1.1.0", readinessindicatorfile=str(ready))
    node.run("STATUS", conf, None, "none").error(50)
    ready.write_text("")
    node.run("STATUS", conf, None, "none").ok()
    pods = {name: node.add_pod(name) for name in ("kept", "gone")}
    for name, pod in pods.items():
        node.run("ADD", conf, pod, name).ok()
    gc = {**conf, "cni.dev/valid-attachments": [{"containerID": "ctr-kept", "ifname": "eth0"}]}
    node.run("GC", gc, None, "none").ok()
    assert node.caches() == ["ctr-kept:eth0"]
    assert interfaces(pods["gone"]) == {}
    assert node.allocations("default-cni-network") == {"10.244.1.2": "ctr-kept"}
    node.run("DEL", conf, pods["kept"], "kept").ok()
    assert_nothing_left(node)


def test_seed_business_nad_unchanged_beside_a_default_cluster_route(node: MultusNode) -> None:
    node.business_nad()
    pod = node.add_pod("seed", networks=ANNOTATIONS["business-app"])
    try:
        node.run("ADD", node.conf(), pod, "seed").ok()
        gateways = sorted((r.get("gateway"), r["dev"]) for r in default_routes(pod))
        assert gateways == sorted([("10.244.1.1", "eth0"), ("192.168.100.1", "net1")])
    finally:
        node.run("DEL", node.conf(), pod, "seed")
    assert_nothing_left(node)


# --- the container's lock file ---------------------------------------------------------------

def leftovers(node: MultusNode, container_id: str) -> list[str]:
    """Every file in cniDir naming the container: its caches, its lock, temp files."""
    if not node.cache_dir.exists():
        return []
    return sorted(p.name for p in node.cache_dir.iterdir() if container_id in p.name)


def flannel_saved(node: MultusNode) -> list[str]:
    """flannel's saved delegate configs (its default dataDir, the node's /var/lib/cni)."""
    data = node.lib_dir / "flannel"
    return sorted(str(p.relative_to(data)) for p in data.rglob("*")
                  if p.is_file()) if data.exists() else []


def test_lock_file_goes_with_the_last_cache(node: MultusNode) -> None:
    """ADD keeps `.lock.<containerID>` beside the cache; DEL, a failed ADD and a DEL with
    nothing cached leave nothing of the container in cniDir."""
    conf = node.conf()
    pod = node.add_pod("cycle")
    node.run("ADD", conf, pod, "cycle").ok()
    assert leftovers(node, "ctr-cycle") == [".lock.ctr-cycle", "ctr-cycle:eth0"]
    node.run("DEL", conf, pod, "cycle").ok()
    assert leftovers(node, "ctr-cycle") == []
    node.run("DEL", conf, pod, "cycle").ok()  # again: nothing cached, nothing made
    assert leftovers(node, "ctr-cycle") == []

    node.macvlan_nad("default", "broken", STORAGE_SUBNET, master="missing0")
    failing = node.add_pod("failing", networks="broken")
    error = node.run("ADD", conf, failing, "failing")
    assert error.status == 1 and "broken" in error.json()["msg"], error
    assert interfaces(failing) == {}
    assert leftovers(node, "ctr-failing") == []
    assert_nothing_left(node)
    assert flannel_saved(node) == []


def test_lock_file_stays_while_another_interface_is_cached(tmp_path: Path) -> None:
    cni_dir = str(tmp_path / "multus")
    for ifname in ("eth0", "eth1"):
        with cache.locked(cni_dir, "ctr-two"):
            cache.save(cni_dir, cache.PodCache("ctr-two", ifname, "", "default", "two"))
    for ifname, left in (("eth0", [".lock.ctr-two", "ctr-two:eth1"]), ("eth1", [])):
        with cache.locked(cni_dir, "ctr-two"):
            cache.remove(cni_dir, "ctr-two", ifname)
        assert sorted(os.listdir(cni_dir)) == left


def test_lock_holds_while_holders_remove_its_file(tmp_path: Path) -> None:
    """Threads locking one container, each saving then removing its cache (so every holder
    removes the lock file on its way out): never two inside at once."""
    cni_dir = str(tmp_path / "multus")
    inside: list[int] = []
    overlaps: list[tuple[int, ...]] = []
    rounds = 40

    def worker(number: int) -> None:
        for _ in range(rounds):
            with cache.locked(cni_dir, "ctr-busy"):
                inside.append(number)
                if len(inside) > 1:
                    overlaps.append(tuple(inside))
                cache.save(cni_dir, cache.PodCache("ctr-busy", "eth0", "", "default", "busy"))
                time.sleep(0.001)  # widens the window another holder would have to enter
                cache.remove(cni_dir, "ctr-busy", "eth0")
                inside.remove(number)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == []
    assert os.listdir(cni_dir) == []


def lock_waiters(lock: Path) -> int:
    """Processes blocked on an flock of `lock` (the `->` lines of /proc/locks)."""
    try:
        inode = os.stat(lock).st_ino
    except FileNotFoundError:
        return 0
    with open("/proc/locks") as locks:
        return sum(1 for line in locks if "->" in line
                   and any(field.endswith(f":{inode}") for field in line.split()))


def run_while_locked(node: MultusNode, pod: Netns, name: str,
                     runs: dict[str, str]) -> dict[str, Outcome]:
    """Start `runs` (label: verb) for pod `name` while this process holds its container's
    lock, wait until all are blocked on it, then let go: they go in turn, each after the
    lock file it waited on was removed by the holder before it whenever no cache was left."""
    outcomes: dict[str, Outcome] = {}
    lock = node.cache_dir / f".lock.ctr-{name}"

    def run(label: str, verb: str) -> None:
        outcomes[label] = node.run(verb, node.conf(), pod, name)

    with cache.locked(str(node.cache_dir), f"ctr-{name}"):
        threads = [threading.Thread(target=run, args=item) for item in runs.items()]
        for thread in threads:
            thread.start()
        for _ in range(1200):  # every run is blocked on the lock (bounded, 120 s)
            if lock_waiters(lock) == len(runs) or not any(t.is_alive() for t in threads):
                break
            time.sleep(0.1)
        assert lock_waiters(lock) == len(runs), "the runs never queued on the lock"
    for thread in threads:
        thread.join()
    return outcomes


def test_concurrent_runs_of_one_container_queue_on_a_removed_lock(node: MultusNode) -> None:
    """Two DELs queued behind the holder of an added pod: the first DELs it and removes the
    lock file the second waits on, which locks again and finds nothing to do. ADD and DEL
    queued behind a holder without a cache (which removes the file as it lets go): both
    succeed in either order. Nothing of the container is left at the end."""
    pod = node.add_pod("racing")
    node.run("ADD", node.conf(), pod, "racing").ok()
    both = run_while_locked(node, pod, "racing", {"first": "DEL", "second": "DEL"})
    for outcome in both.values():
        outcome.ok()
    assert interfaces(pod) == {}
    assert leftovers(node, "ctr-racing") == []

    mixed = run_while_locked(node, pod, "racing", {"add": "ADD", "del": "DEL"})
    for outcome in mixed.values():
        outcome.ok()
    node.run("DEL", node.conf(), pod, "racing").ok()  # whichever went last, the pod goes
    assert interfaces(pod) == {}
    assert leftovers(node, "ctr-racing") == []
    assert_nothing_left(node)


# --- a corrupt cache: GC and CHECK ------------------------------------------------------------

def test_gc_of_a_corrupt_cache_deletes_the_cluster_network(node: MultusNode) -> None:
    """As DEL does: the cluster network DEL'd under the file's container and interface
    (address and flannel's saved config released), then the file and the lock removed."""
    conf = node.conf(cniVersion="1.1.0")
    pods = {name: node.add_pod(name) for name in ("kept", "torn")}
    for name, pod in pods.items():
        node.run("ADD", conf, pod, name).ok()
    assert len(flannel_saved(node)) == 2
    (node.cache_dir / "ctr-torn:eth0").write_text('{"format": 1, "attach')
    pods["torn"].run("ip", "link", "del", "eth0")  # the sandbox went, and its veth with it
    gc = {**conf, "cni.dev/valid-attachments": [{"containerID": "ctr-kept", "ifname": "eth0"}]}
    node.run("GC", gc, None, "none").ok()
    assert leftovers(node, "ctr-torn") == []
    assert node.all_allocations() == {"default-cni-network": {"10.244.1.2": "ctr-kept"}}
    assert flannel_saved(node) == ["default-cni-network/ctr-kept:eth0"]
    node.run("DEL", conf, pods["kept"], "kept").ok()
    assert_nothing_left(node)
    assert flannel_saved(node) == []


def test_gc_keeps_a_live_pod_whose_cache_is_corrupt(node: MultusNode) -> None:
    """A pod the runtime still lists: no DEL, its cache kept for its own DEL, and its
    address and flannel's saved config kept although GC (delegates at 1.1.0 here) reaches
    host-local without a cache telling where the pod is."""
    conf = node.conf(cniVersion="1.1.0")
    conf["delegates"][0]["cniVersion"] = "1.1.0"
    pod = node.add_pod("live")
    node.run("ADD", conf, pod, "live").ok()
    (node.cache_dir / "ctr-live:eth0").write_text("{}")
    gc = {**conf, "cni.dev/valid-attachments": [{"containerID": "ctr-live", "ifname": "eth0"}]}
    node.run("GC", gc, None, "none").ok()
    assert leftovers(node, "ctr-live") == [".lock.ctr-live", "ctr-live:eth0"]
    assert node.all_allocations() == {"default-cni-network": {"10.244.1.2": "ctr-live"}}
    assert interfaces(pod) == {"eth0": ["10.244.1.2/24"]}
    assert flannel_saved(node) == ["default-cni-network/ctr-live:eth0"]
    node.run("DEL", conf, pod, "live").ok()
    assert leftovers(node, "ctr-live") == []
    assert_nothing_left(node)
    assert flannel_saved(node) == []


def test_check_of_a_corrupt_cache_names_the_file(node: MultusNode) -> None:
    conf = node.conf(cniVersion="1.1.0")
    pod = node.add_pod("torn")
    added = node.run("ADD", conf, pod, "torn").ok()
    (node.cache_dir / "ctr-torn:eth0").write_text("[]")
    checked = node.run("CHECK", {**conf, "prevResult": added}, pod, "torn")
    msg = checked.error(999)["msg"]
    assert "/var/lib/cni/multus/ctr-torn:eth0" in msg and "corrupt" in msg, msg
    assert "Traceback" not in checked.stderr
    node.run("DEL", conf, pod, "torn").ok()
    assert_nothing_left(node)
