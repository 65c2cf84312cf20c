"""host-local against the reference plugin (containernetworking-plugins, Debian's 1.1.1).

The acceptance: a data directory written by the reference host-local is read correctly by ours
and the other way round, so a node can switch plugins without losing allocations; and for the
same config both give the same results. Both are IPAM plugins that touch no kernel state, so
they run as plain processes; every run points `dataDir` at the test's own directory.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PYCNI, Outcome, cni_env, run_exec

REFERENCE = Path("/usr/lib/cni/host-local")
REF = [str(REFERENCE)]
OURS = [*PYCNI, "host-local"]
NETWORK = "shared-net"
# IPAM plugins never open the namespace; the reference only wants the variable set.
NETNS = "/var/run/netns/pycni-not-opened"

IPV4 = {"ranges": [[{"subnet": "10.10.0.0/24"}]]}
DUAL_STACK = {"ranges": [[{"subnet": "10.10.0.0/24"}], [{"subnet": "fd10::/64"}]]}


@pytest.fixture(scope="module", autouse=True)
def reference_plugin() -> None:
    """Skip unless the reference host-local is installed (CI installs it: there, fail)."""
    if not (REFERENCE.is_file() and os.access(REFERENCE, os.X_OK)):
        reason = f"{REFERENCE} is missing: apt-get install containernetworking-plugins"
        if os.environ.get("PYCNI_REQUIRE_BUILD"):
            pytest.fail(reason)
        pytest.skip(reason)


class Network:
    """One network's data directory under `tmp_path`, driven by either plugin."""

    def __init__(self, data_dir: Path, ipam: dict[str, Any], name: str = NETWORK) -> None:
        self.data_dir, self.ipam, self.name = data_dir, ipam, name
        self.directory = data_dir / name

    def conf(self, version: str = "0.4.0", **extra: Any) -> dict[str, Any]:
        ipam = {"type": "host-local", **self.ipam, "dataDir": str(self.data_dir)}
        return {"cniVersion": version, "name": self.name, "type": "host-local", "ipam": ipam,
                **extra}

    def run(self, plugin: list[str], command: str, container: str, version: str = "0.4.0",
            ifname: str = "eth0", **extra: Any) -> Outcome:
        env = cni_env(command, NETNS, ifname=ifname, container_id=container,
                      path=str(REFERENCE.parent))
        return run_exec(plugin, env, self.conf(version, **extra))

    def add(self, plugin: list[str], container: str, version: str = "0.4.0") -> list[str]:
        """ADD, asserting success; the addresses handed out, without prefix length."""
        return addresses(self.run(plugin, "ADD", container, version).ok())

    def gc(self, plugin: list[str], valid: list[tuple[str, str]]) -> Outcome:
        attachments = [{"containerID": c, "ifname": i} for c, i in valid]
        env = cni_env("GC", path=str(REFERENCE.parent), ifname="", container_id="")
        return run_exec(plugin, env, self.conf("1.1.0", **{
            "cni.dev/valid-attachments": attachments}))

    def allocations(self) -> dict[str, bytes]:
        """Every allocation file: address -> content, exactly as on disk."""
        found = {}
        for path in self.directory.iterdir():
            try:
                ipaddress.ip_address(path.name)
            except ValueError:
                continue
            found[path.name] = path.read_bytes()
        return found

    def last_reserved(self, range_set: int) -> str:
        return (self.directory / f"last_reserved_ip.{range_set}").read_text()

    def modes(self) -> dict[str, int]:
        """Permission bits of the allocation and last_reserved_ip files."""
        allocated = self.allocations()
        return {p.name: p.stat().st_mode & 0o7777 for p in self.directory.iterdir()
                if p.name in allocated or p.name.startswith("last_reserved_ip.")}

    def metadata(self) -> set[str]:
        meta = self.directory / ".meta"
        return {p.name for p in meta.iterdir()} if meta.is_dir() else set()


def addresses(result: dict[str, Any]) -> list[str]:
    return [str(ipaddress.ip_interface(ip["address"]).ip) for ip in result["ips"]]


def after(address: str) -> str:
    return str(ipaddress.ip_address(address) + 1)


def holder(container: str, ifname: str = "eth0") -> bytes:
    return f"{container}\r\n{ifname}".encode()


def without_empty_dns(result: Any) -> Any:
    """The reference always prints `"dns": {}`, ours leaves an empty DNS out (asserted in
    test_without_resolv_conf_only_empty_dns_differs)."""
    if isinstance(result, dict) and result.get("dns") == {}:
        return {k: v for k, v in result.items() if k != "dns"}
    return result


# --- 1. ours reads a directory the reference wrote --------------------------------------------

@pytest.mark.parametrize("ipam", [IPV4, DUAL_STACK], ids=["ipv4", "dual-stack"])
def test_ours_continues_a_reference_directory(tmp_path: Path, ipam: dict[str, Any]) -> None:
    net = Network(tmp_path, ipam)
    sets = len(ipam["ranges"])
    a, b = net.add(REF, "a"), net.add(REF, "b")
    # A container that came and went: the first free address (its) and the next round-robin
    # address differ, so picking the latter proves ours read last_reserved_ip.N.
    gone = net.add(REF, "gone")
    net.run(REF, "DEL", "gone").ok()
    assert net.allocations() == {**{x: holder("a") for x in a}, **{x: holder("b") for x in b}}
    assert [net.last_reserved(i) for i in range(sets)] == gone

    c = net.add(OURS, "c")
    assert c == [after(x) for x in gone]
    assert not set(c) & set(a + b)
    assert [net.last_reserved(i) for i in range(sets)] == c  # readable by the reference

    # An ADD retried for a: ours returns what a holds (the reference would refuse, see
    # test_retried_add_differs) and takes nothing more.
    before = net.allocations()
    assert net.add(OURS, "a") == a
    assert net.allocations() == before
    assert [net.last_reserved(i) for i in range(sets)] == c

    assert net.run(OURS, "CHECK", "a").ok() is None
    net.run(OURS, "CHECK", "nobody").error(999)  # CHECK looks, it does not just succeed

    net.run(OURS, "DEL", "b").ok()
    assert net.allocations() == {**{x: holder("a") for x in a}, **{x: holder("c") for x in c}}

    net.gc(OURS, [("c", "eth0")]).ok()
    assert net.allocations() == {x: holder("c") for x in c}
    assert net.metadata() <= set(c)
    assert (net.directory / "lock").exists()
    assert [net.last_reserved(i) for i in range(sets)] == c

    # And back: the reference sees what ours left.
    assert net.run(REF, "CHECK", "c").ok() is None
    assert net.add(REF, "d") == [after(x) for x in c]


# --- 2. the reference reads a directory ours wrote --------------------------------------------

@pytest.mark.parametrize("ipam", [IPV4, DUAL_STACK], ids=["ipv4", "dual-stack"])
def test_reference_continues_our_directory(tmp_path: Path, ipam: dict[str, Any]) -> None:
    net = Network(tmp_path, ipam)
    sets = len(ipam["ranges"])
    x, y = net.add(OURS, "x"), net.add(OURS, "y")
    gone = net.add(OURS, "gone")
    net.run(OURS, "DEL", "gone").ok()
    # Byte for byte what the reference writes, or its CHECK and DEL would not match them.
    assert net.allocations() == {**{i: holder("x") for i in x}, **{i: holder("y") for i in y}}
    assert [net.last_reserved(i) for i in range(sets)] == gone
    # Our metadata sits inside the directory the reference walks: it must ignore it.
    assert net.metadata() == set(x + y)

    z = net.add(REF, "z")
    assert z == [after(i) for i in gone]

    assert net.run(REF, "CHECK", "x").ok() is None
    net.run(REF, "CHECK", "nobody").error(999)

    error = net.run(REF, "ADD", "x").error(999)
    assert "duplicate allocation is not allowed" in error["msg"], error
    assert f"{x[0]} has been allocated to x," in error["msg"], error

    net.run(REF, "DEL", "y").ok()
    assert net.allocations() == {**{i: holder("x") for i in x}, **{i: holder("z") for i in z}}
    assert (net.directory / ".meta").is_dir()  # the reference removed only allocation files

    # The reference left y's metadata behind; our GC tidies it and keeps everything valid.
    net.gc(OURS, [("x", "eth0"), ("z", "eth0")]).ok()
    assert net.allocations() == {**{i: holder("x") for i in x}, **{i: holder("z") for i in z}}
    assert net.metadata() == set(x)


# --- 3. the same config through both ---------------------------------------------------------

RESOLV_CONF = """\
# written by the test
; also a comment
nameserver 10.0.0.53
nameserver fd00::53
domain example.com
search one.example.com two.example.com
options ndots:2 edns0
"""

SIDE_BY_SIDE = {
    "ipv4": {
        "ranges": [[{"subnet": "10.10.0.0/24", "rangeStart": "10.10.0.100",
                     "rangeEnd": "10.10.0.200", "gateway": "10.10.0.254"}]],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.10.0.254"}],
    },
    "ipv6": {
        "ranges": [[{"subnet": "fd10::/64", "rangeStart": "fd10::100", "rangeEnd": "fd10::1ff"}]],
        "routes": [{"dst": "::/0"}],
    },
    "dual-stack": {
        "ranges": [[{"subnet": "10.10.0.0/24"}], [{"subnet": "fd10::/64"}]],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd10::1"}],
    },
    "legacy-single-range": {
        "subnet": "10.20.0.0/16", "rangeStart": "10.20.1.10", "rangeEnd": "10.20.1.20",
        "gateway": "10.20.0.1", "routes": [{"dst": "0.0.0.0/0"}],
    },
    # The first range holds one address (.2; .1 is its gateway), so three ADDs cross into
    # the second range, whose gateway sits at its end.
    "two-ranges-one-set": {
        "ranges": [[{"subnet": "10.30.0.0/30"},
                    {"subnet": "10.30.1.0/24", "gateway": "10.30.1.254"}]],
    },
    "ipv6-two-ranges-one-set": {
        "ranges": [[{"subnet": "fd30::/64", "rangeStart": "fd30::fe", "rangeEnd": "fd30::ff"},
                    {"subnet": "fd31::/64"}]],
    },
}


def side_by_side(tmp_path: Path, ipam: dict[str, Any], steps: list[tuple[str, str]],
                 version: str) -> tuple[list[Outcome], list[Outcome], list[Network]]:
    """Run the same steps through each plugin in its own fresh data directory."""
    outcomes: list[list[Outcome]] = []
    networks = []
    for plugin, label in ((REF, "reference"), (OURS, "ours")):
        net = Network(tmp_path / label, ipam)
        outcomes.append([net.run(plugin, command, container, version)
                         for command, container in steps])
        networks.append(net)
    return outcomes[0], outcomes[1], networks


# 0.4.0's result is 0.3.1's plus CHECK: make stress compares it too.
@pytest.mark.parametrize("version", ["0.3.1", pytest.param("0.4.0", marks=pytest.mark.stress),
                                     "1.0.0"])
@pytest.mark.parametrize("case", list(SIDE_BY_SIDE))
def test_same_results_as_reference(tmp_path: Path, case: str, version: str) -> None:
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text(RESOLV_CONF)
    ipam = {**SIDE_BY_SIDE[case], "resolvConf": str(resolv_conf)}
    steps = [("ADD", "a"), ("ADD", "b"), ("ADD", "c"), ("CHECK", "a"), ("DEL", "b"),
             ("DEL", "b"), ("ADD", "d")]
    reference, ours, (ref_net, our_net) = side_by_side(tmp_path, ipam, steps, version)

    for (command, container), theirs, mine in zip(steps, reference, ours, strict=True):
        if command == "CHECK" and version == "0.3.1":  # no CHECK before 0.4.0, for either
            theirs.error(1)
            mine.error(1)
            continue
        # dicts compare without regard to key order
        assert mine.ok() == theirs.ok(), f"{command} {container} at {version}"
    first = reference[0].ok()
    assert first["dns"] == {"nameservers": ["10.0.0.53", "fd00::53"], "domain": "example.com",
                            "search": ["one.example.com", "two.example.com"],
                            "options": ["ndots:2", "edns0"]}
    assert first.get("routes", []) == SIDE_BY_SIDE[case].get("routes", [])
    # And the directories they leave are the same, file for file.
    assert our_net.allocations() == ref_net.allocations()
    for i in range(len(ipam.get("ranges", [None]))):
        assert our_net.last_reserved(i) == ref_net.last_reserved(i)
    # Deliberate: ours are root's only (0600), the reference's 0644 (docs/differences.md).
    assert set(our_net.modes().values()) == {0o600}
    assert our_net.modes().keys() == ref_net.modes().keys()


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_without_resolv_conf_only_empty_dns_differs(tmp_path: Path, version: str) -> None:
    (theirs,), (mine,), _ = side_by_side(tmp_path, DUAL_STACK, [("ADD", "a")], version)
    reference, ours = theirs.ok(), mine.ok()
    # Deliberate: the reference's Go struct always serialises `"dns": {}`; ours leaves an
    # empty DNS out (the field is optional in every spec version). Otherwise equal.
    assert reference.pop("dns") == {}
    assert "dns" not in ours
    assert ours == reference


def test_exhausted_set_wraps_like_reference(tmp_path: Path) -> None:
    """Round robin over two ranges, through holes, until the set is full, and after."""
    ipam = {"ranges": [[{"subnet": "10.40.0.0/30"},
                        {"subnet": "10.40.1.0/29", "rangeStart": "10.40.1.2",
                         "rangeEnd": "10.40.1.4"}]]}
    steps = [("ADD", "a"), ("ADD", "b"), ("ADD", "c"), ("DEL", "b"), ("ADD", "d"), ("ADD", "e"),
             ("ADD", "f"), ("DEL", "a"), ("ADD", "g"), ("ADD", "h")]
    reference, ours, (ref_net, our_net) = side_by_side(tmp_path, ipam, steps, "1.0.0")
    for (command, container), theirs, mine in zip(steps, reference, ours, strict=True):
        if container in ("f", "h"):  # the set is full: both fail (their messages differ)
            assert "no IP addresses available" in theirs.error(999)["msg"]
            assert "no IP addresses available" in mine.error(999)["msg"]
        else:
            assert mine.ok() == without_empty_dns(theirs.ok()), f"{command} {container}"
    assert our_net.allocations() == ref_net.allocations()
    assert our_net.allocations() == {"10.40.0.2": holder("g"), "10.40.1.2": holder("e"),
                                     "10.40.1.3": holder("c"), "10.40.1.4": holder("d")}


def test_retried_add_differs(tmp_path: Path) -> None:
    """Deliberate difference: an ADD retried for an attachment that holds addresses."""
    steps = [("ADD", "a"), ("ADD", "a")]
    reference, ours, (ref_net, our_net) = side_by_side(tmp_path, DUAL_STACK, steps, "1.0.0")
    # The reference refuses...
    first = without_empty_dns(reference[0].ok())
    assert "duplicate allocation is not allowed" in reference[1].error(999)["msg"]
    # ...ours returns what the attachment holds, so a runtime's retry after a lost reply works.
    assert ours[0].ok() == first
    assert ours[1].ok() == first
    assert our_net.allocations() == ref_net.allocations()


def test_resolv_conf_inline_hash_read_like_reference(tmp_path: Path) -> None:
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("nameserver 10.0.0.53\nsearch one.example.com #c\n")
    ipam = {**IPV4, "resolvConf": str(resolv_conf)}
    (theirs,), (mine,), _ = side_by_side(tmp_path, ipam, [("ADD", "a")], "1.0.0")
    assert theirs.ok()["dns"]["search"] == ["one.example.com", "#c"]
    assert mine.ok() == theirs.ok()


@pytest.mark.parametrize("plugin", [OURS, REF], ids=["ours", "reference"])
def test_both_take_the_same_lock(tmp_path: Path, plugin: list[str]) -> None:
    """Both flock `<dataDir>/<network>/lock`, so the two can run side by side on a node."""
    net = Network(tmp_path, IPV4)
    net.directory.mkdir(parents=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           **cni_env("ADD", NETNS, container_id="a", path=str(REFERENCE.parent))}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    stdin = tmp_path / "conf.json"
    stdin.write_text(json.dumps(net.conf()))
    with open(net.directory / "lock", "a") as lock, open(stdin) as conf:
        fcntl.flock(lock, fcntl.LOCK_EX)
        process = subprocess.Popen(plugin, stdin=conf, stdout=subprocess.PIPE, env=env)
        time.sleep(1.5)  # ours starts in about 0.3 s
        assert process.poll() is None, "ADD went ahead while the lock was held"
        assert net.allocations() == {}
        fcntl.flock(lock, fcntl.LOCK_UN)
        stdout, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    assert addresses(json.loads(stdout)) == ["10.10.0.2"]
    assert net.allocations() == {"10.10.0.2": holder("a")}


# --- 4. files from old reference versions ----------------------------------------------------

@pytest.mark.parametrize("plugin", [OURS, REF], ids=["ours", "reference"])
def test_del_releases_old_format_file(tmp_path: Path, plugin: list[str]) -> None:
    """Very old reference versions wrote the container ID alone, without `\\r\\n<ifname>`."""
    net = Network(tmp_path, IPV4)
    net.directory.mkdir(parents=True)
    old_files = {"10.10.0.7": b"old", "10.10.0.8": holder("old", "eth1"),
                 "10.10.0.9": b"older"}
    for name, content in old_files.items():
        (net.directory / name).write_bytes(content)

    if plugin is OURS:  # ours also counts the old file as the attachment's on ADD and CHECK
        assert net.add(OURS, "old") == ["10.10.0.7"]
        assert net.run(OURS, "CHECK", "old").ok() is None
        assert net.allocations() == old_files

    net.run(plugin, "DEL", "old").ok()
    del old_files["10.10.0.7"]
    assert net.allocations() == old_files
    net.run(plugin, "DEL", "old").ok()  # again: nothing held is fine
    assert net.allocations() == old_files
