"""host-local: the reference's keys and files, every spec version, retries, reboots, GC, STATUS.

IPAM touches no kernel state, so most cases drive the dispatcher in-process; a few run the real
program to prove exit status and stdout, and 64 processes race for one network. Every case gets
its own data directory under tmp_path.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from pycni.ipam.host_local.plugin import PLUGIN

from pycni import spec
from tests.conftest import PYCNI, REPO, Outcome, cni_env, run_exec, run_in_process

NETNS = "/var/run/netns/ipam-test"  # IPAM never opens it
BOOT_ID = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
SEEDS = REPO / "tests" / "seeds"  # the users' configurations, as they gave them


# --- helpers --------------------------------------------------------------------------------

@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """Not created: a case that must write nothing can assert it still does not exist."""
    return tmp_path / "data"


def net(data_dir: Path, version: str = "1.0.0", name: str = "net1", top: dict[str, Any] | None
        = None, **ipam: Any) -> dict[str, Any]:
    """A network config with a host-local `ipam` section (keys as given, plus dataDir)."""
    return {"cniVersion": version, "name": name, "type": "bridge", **(top or {}),
            "ipam": {"type": "host-local", "dataDir": str(data_dir), **ipam}}


def legacy(data_dir: Path, subnet: str = "10.1.0.0/24", version: str = "1.0.0",
           **keys: Any) -> dict[str, Any]:
    return net(data_dir, version, subnet=subnet, **keys)


def run(command: str, conf: Any, cid: str = "ctr-1", ifname: str = "eth0",
        **env: str) -> Outcome:
    netns = NETNS if command in ("ADD", "CHECK") else ""
    return run_in_process(PLUGIN, cni_env(command, netns, ifname=ifname, container_id=cid,
                                          **env), conf)


def add(conf: Any, cid: str = "ctr-1", ifname: str = "eth0", **env: str) -> Any:
    return run("ADD", conf, cid, ifname, **env).ok()


def addresses(result: Any) -> list[str]:
    return [ip["address"] for ip in result["ips"]]


def held(net_dir: Path) -> dict[str, str]:
    """The allocation files, address -> exact content (bytes decoded, no newline mangling)."""
    found = {}
    for path in net_dir.iterdir() if net_dir.is_dir() else []:
        try:
            ipaddress.ip_address(path.name)
        except ValueError:
            continue
        found[path.name] = path.read_bytes().decode()
    return found


def meta(net_dir: Path, address: str) -> dict[str, Any]:
    return json.loads((net_dir / ".meta" / address).read_text())  # type: ignore[no-any-return]


def meta_names(net_dir: Path) -> list[str]:
    directory = net_dir / ".meta"
    return sorted(os.listdir(directory)) if directory.is_dir() else []


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with its content (None for directories)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def from_earlier_boot(net_dir: Path, address: str) -> None:
    """Pretend `address` was allocated before the last reboot."""
    info = meta(net_dir, address)
    info["boot"] = str(uuid.uuid4())
    (net_dir / ".meta" / address).write_text(json.dumps(info))


def expected_ip(version: str, address: str, gateway: str) -> dict[str, str]:
    entry = {"address": address, "gateway": gateway}
    if not spec.at_least(version, "1.0.0"):
        entry["version"] = "6" if ":" in address else "4"
    return entry


def assert_allocated(net_dir: Path, address: str, cid: str, ifname: str = "eth0") -> None:
    """The reference's file, and our metadata with this boot."""
    assert held(net_dir)[address] == f"{cid}\r\n{ifname}"
    info = meta(net_dir, address)
    assert info["boot"] == BOOT_ID
    assert (info["containerID"], info["ifname"]) == (cid, ifname)
    assert abs(info["created"] - time.time()) < 120


# --- every spec version ---------------------------------------------------------------------

ROUTES = [{"dst": "0.0.0.0/0"}, {"dst": "10.20.0.0/16", "gw": "10.1.0.254"},
          {"dst": "::/0", "gw": "fd00:1::fe"}]


@pytest.mark.parametrize("version", spec.ALL)
def test_legacy_keys_add_check_del_every_version(version: str, data_dir: Path) -> None:
    conf = legacy(data_dir, version=version, routes=ROUTES[:2])
    result = add(conf)
    assert result["cniVersion"] == version
    assert "interfaces" not in result
    if spec.at_least(version, "0.3.0"):
        assert result["ips"] == [expected_ip(version, "10.1.0.2/24", "10.1.0.1")]
        assert result["routes"] == ROUTES[:2]
        assert "interface" not in result["ips"][0]
    else:
        assert result == {"cniVersion": version, "ip4": {
            "ip": "10.1.0.2/24", "gateway": "10.1.0.1", "routes": ROUTES[:2]}}

    net_dir = data_dir / "net1"
    assert_allocated(net_dir, "10.1.0.2", "ctr-1")
    assert (net_dir / "last_reserved_ip.0").read_text() == "10.1.0.2"
    assert (net_dir / "lock").is_file()
    assert sorted(p.name for p in net_dir.iterdir()) == [
        ".meta", "10.1.0.2", "last_reserved_ip.0", "lock"]
    for name in ("10.1.0.2", "last_reserved_ip.0", ".meta/10.1.0.2"):  # root's only
        assert (net_dir / name).stat().st_mode & 0o777 == 0o600, name
    for directory in (net_dir, net_dir / ".meta"):
        assert directory.stat().st_mode & 0o777 == 0o700, directory

    check = run("CHECK", conf)
    if spec.at_least(version, "0.4.0"):
        assert check.ok() is None
    else:
        assert "CHECK" in check.error(1)["msg"]

    for _ in range(2):  # DEL, and DEL again
        assert run("DEL", conf).ok() is None
        assert held(net_dir) == {} and meta_names(net_dir) == []
    assert (net_dir / "last_reserved_ip.0").read_text() == "10.1.0.2"
    assert (net_dir / "lock").is_file()
    if spec.at_least(version, "0.4.0"):
        assert "ctr-1/eth0" in run("CHECK", conf).error(999)["msg"]


@pytest.mark.parametrize("version", spec.ALL)
def test_dual_stack_every_version(version: str, data_dir: Path) -> None:
    conf = net(data_dir, version, ranges=[[{"subnet": "10.1.0.0/24"}],
                                          [{"subnet": "fd00:1::/64"}]], routes=ROUTES)
    result = add(conf, cid="dual")
    if spec.at_least(version, "0.3.0"):
        assert result["ips"] == [expected_ip(version, "10.1.0.2/24", "10.1.0.1"),
                                 expected_ip(version, "fd00:1::2/64", "fd00:1::1")]
        assert result["routes"] == ROUTES
    else:  # one block per family, each with the routes of its family
        assert result["ip4"] == {"ip": "10.1.0.2/24", "gateway": "10.1.0.1",
                                 "routes": ROUTES[:2]}
        assert result["ip6"] == {"ip": "fd00:1::2/64", "gateway": "fd00:1::1",
                                 "routes": ROUTES[2:]}
    net_dir = data_dir / "net1"
    assert_allocated(net_dir, "10.1.0.2", "dual")
    assert_allocated(net_dir, "fd00:1::2", "dual")
    assert (net_dir / "last_reserved_ip.0").read_text() == "10.1.0.2"
    assert (net_dir / "last_reserved_ip.1").read_text() == "fd00:1::2"
    if spec.at_least(version, "0.4.0"):
        run("CHECK", conf, cid="dual").ok()
    run("DEL", conf, cid="dual").ok()
    assert held(net_dir) == {} and meta_names(net_dir) == []


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0"])
@pytest.mark.parametrize("family", ["10.{}.0.0/24", "fd00:{}::/64"])
def test_legacy_versions_refuse_two_addresses_of_one_family(version: str, family: str,
                                                            data_dir: Path) -> None:
    conf = net(data_dir, version, ranges=[[{"subnet": family.format(1)}],
                                          [{"subnet": family.format(2)}]])
    error = run("ADD", conf).error(1)
    assert "does not support more than 1 address per family" in error["msg"]
    assert not data_dir.exists()


@pytest.mark.parametrize("version", [v for v in spec.ALL if spec.at_least(v, "0.3.0")])
def test_two_ranges_of_one_family_from_0_3_0(version: str, data_dir: Path) -> None:
    conf = net(data_dir, version, ranges=[[{"subnet": "10.1.0.0/24"}],
                                          [{"subnet": "10.2.0.0/24"}]])
    assert addresses(add(conf)) == ["10.1.0.2/24", "10.2.0.2/24"]


@pytest.mark.parametrize("command", ["STATUS", "GC"])
@pytest.mark.parametrize("version", spec.ALL[:-1])
def test_status_and_gc_only_at_1_1_0(command: str, version: str, data_dir: Path) -> None:
    conf = legacy(data_dir, version=version, **{"cni.dev/valid-attachments": []})
    run(command, conf).error(1)
    assert not data_dir.exists()


def test_config_without_cni_version_is_0_1_0(data_dir: Path) -> None:
    conf = legacy(data_dir)
    del conf["cniVersion"]
    assert add(conf) == {"cniVersion": "0.1.0",
                         "ip4": {"ip": "10.1.0.2/24", "gateway": "10.1.0.1"}}


# --- defaults and the ranges' keys ----------------------------------------------------------

def test_defaults_gateway_first_range_end_before_broadcast(data_dir: Path) -> None:
    conf = legacy(data_dir, "10.1.0.0/29")
    got = [add(conf, cid=f"c{i}")["ips"][0] for i in range(5)]
    assert [ip["address"] for ip in got] == [f"10.1.0.{i}/29" for i in range(2, 7)]
    assert {ip["gateway"] for ip in got} == {"10.1.0.1"}
    error = run("ADD", conf, cid="c5").error(999)
    assert error["msg"] == ("no IP addresses available in range set 10.1.0.1-10.1.0.6: "
                            "5 of 5 in use")
    assert "10.1.0.7" not in held(data_dir / "net1")  # the broadcast address
    for i in range(5):
        run("DEL", conf, cid=f"c{i}").ok()
    again = [addresses(add(conf, cid=f"d{i}"))[0] for i in range(5)]
    assert again == [f"10.1.0.{i}/29" for i in range(2, 7)]  # all back, round-robin wrapped


def test_runtime_config_ip_ranges_come_first(data_dir: Path) -> None:
    runtime = {"runtimeConfig": {"ipRanges": [[{"subnet": "10.9.0.0/24",
                                                "rangeStart": "10.9.0.50"}]]}}
    conf = net(data_dir, top=runtime, ranges=[[{"subnet": "fd00:1::/64"}]])
    assert add(conf)["ips"] == [{"address": "10.9.0.50/24", "gateway": "10.9.0.1"},
                                {"address": "fd00:1::2/64", "gateway": "fd00:1::1"}]
    net_dir = data_dir / "net1"
    assert (net_dir / "last_reserved_ip.0").read_text() == "10.9.0.50"
    assert (net_dir / "last_reserved_ip.1").read_text() == "fd00:1::2"
    only_runtime = net(data_dir, top=runtime)
    assert addresses(add(only_runtime, cid="b")) == ["10.9.0.51/24"]
    run("CHECK", only_runtime, cid="b").ok()


def test_ipv6_defaults_include_the_last_address(data_dir: Path) -> None:
    conf = legacy(data_dir, "fd00:9::/126")
    assert addresses(add(conf, cid="a")) == ["fd00:9::2/126"]
    result = add(conf, cid="b")
    assert result["ips"] == [{"address": "fd00:9::3/126", "gateway": "fd00:9::1"}]
    assert "2 of 2 in use" in run("ADD", conf, cid="c").error(999)["msg"]
    net_dir = data_dir / "net1"
    assert_allocated(net_dir, "fd00:9::3", "b")
    assert (net_dir / "last_reserved_ip.0").read_text() == "fd00:9::3"


def test_smallest_subnets_allowed(data_dir: Path) -> None:
    assert addresses(add(legacy(data_dir, "10.1.0.0/30"))) == ["10.1.0.2/30"]
    assert "1 of 1 in use" in run("ADD", legacy(data_dir, "10.1.0.0/30"), cid="x").error(
        999)["msg"]


def test_range_start_end_and_gateway(data_dir: Path) -> None:
    conf = net(data_dir, ranges=[[{"subnet": "10.2.0.0/24", "rangeStart": "10.2.0.100",
                                   "rangeEnd": "10.2.0.101", "gateway": "10.2.0.254"}]])
    assert add(conf, cid="a")["ips"] == [{"address": "10.2.0.100/24", "gateway": "10.2.0.254"}]
    assert addresses(add(conf, cid="b")) == ["10.2.0.101/24"]
    assert "range set 10.2.0.100-10.2.0.101: 2 of 2" in run("ADD", conf, cid="c").error(
        999)["msg"]


def test_gateway_inside_the_range_is_skipped(data_dir: Path) -> None:
    conf = legacy(data_dir, "10.3.0.0/24", rangeStart="10.3.0.1", rangeEnd="10.3.0.3",
                  gateway="10.3.0.2")
    assert [addresses(add(conf, cid=c))[0] for c in "ab"] == ["10.3.0.1/24", "10.3.0.3/24"]
    assert "2 of 2 in use" in run("ADD", conf, cid="c").error(999)["msg"]


def test_several_ranges_in_one_set_form_one_pool(data_dir: Path) -> None:
    conf = net(data_dir, ranges=[[{"subnet": "10.4.0.0/30"},
                                  {"subnet": "10.5.0.0/24", "rangeStart": "10.5.0.8",
                                   "rangeEnd": "10.5.0.9", "gateway": "10.5.0.1"}]])
    got = [add(conf, cid=f"c{i}")["ips"][0] for i in range(3)]
    assert got == [{"address": "10.4.0.2/30", "gateway": "10.4.0.1"},
                   {"address": "10.5.0.8/24", "gateway": "10.5.0.1"},
                   {"address": "10.5.0.9/24", "gateway": "10.5.0.1"}]
    error = run("ADD", conf, cid="c3").error(999)
    assert error["msg"] == ("no IP addresses available in range set "
                            "10.4.0.1-10.4.0.2,10.5.0.8-10.5.0.9: 3 of 3 in use")
    run("DEL", conf, cid="c0").ok()
    assert addresses(add(conf, cid="c3")) == ["10.4.0.2/30"]  # wraps to the first range


def test_round_robin_after_the_last_reserved(data_dir: Path) -> None:
    conf = legacy(data_dir, "10.1.0.0/29")
    for cid in "abc":
        add(conf, cid=cid)  # .2 .3 .4
    run("DEL", conf, cid="b").ok()
    assert addresses(add(conf, cid="d")) == ["10.1.0.5/29"]  # not the freed .3
    assert addresses(add(conf, cid="e")) == ["10.1.0.6/29"]
    assert addresses(add(conf, cid="f")) == ["10.1.0.3/29"]  # wrapped to the freed one
    net_dir = data_dir / "net1"
    assert (net_dir / "last_reserved_ip.0").read_text() == "10.1.0.3"
    assert held(net_dir) == {f"10.1.0.{i}": f"{cid}\r\neth0"
                             for i, cid in zip(range(2, 7), "afcde", strict=True)}


def test_round_robin_continues_from_a_reference_written_last_reserved(data_dir: Path) -> None:
    net_dir = data_dir / "net1"
    net_dir.mkdir(parents=True)
    (net_dir / "last_reserved_ip.0").write_text("10.1.0.200")
    assert addresses(add(legacy(data_dir))) == ["10.1.0.201/24"]
    # one outside the range (the ranges changed): start from the beginning
    (net_dir / "last_reserved_ip.0").write_text("192.0.2.9")
    assert addresses(add(legacy(data_dir), cid="b")) == ["10.1.0.2/24"]


def test_routes_and_their_v1_1_fields(data_dir: Path) -> None:
    routes = [{"dst": "10.9.0.0/16", "gw": "10.1.0.1", "mtu": 1400, "priority": 5,
               "table": 100}]
    assert add(legacy(data_dir, version="1.1.0", routes=routes))["routes"] == routes
    assert add(legacy(data_dir, version="1.0.0", routes=routes), cid="b")["routes"] == [
        {"dst": "10.9.0.0/16", "gw": "10.1.0.1"}]


def test_resolv_conf_gives_dns(data_dir: Path, tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# generated\nnameserver 10.96.0.10\n  ; nameserver 10.0.0.1\n"
                      "#nameserver 10.0.0.2\nnameserver fd00::10 # v6\n"
                      "domain cluster.local\nsearch svc.cluster.local cluster.local\n"
                      "options ndots:5 timeout:2\nnameserver\n\n")
    result = add(legacy(data_dir, resolvConf=str(resolv)))
    # as the reference: whole-line comments only, so `#` inside a line is a word
    assert result["dns"] == {"nameservers": ["10.96.0.10", "fd00::10"],
                             "domain": "cluster.local",
                             "search": ["svc.cluster.local", "cluster.local"],
                             "options": ["ndots:5", "timeout:2"]}
    legacy_result = add(legacy(data_dir, version="0.2.0", resolvConf=str(resolv)), cid="b")
    assert legacy_result["dns"]["nameservers"] == ["10.96.0.10", "fd00::10"]
    resolv.write_text("search one.example.com #c\n")
    assert add(legacy(data_dir, resolvConf=str(resolv)), cid="c")["dns"] == {
        "search": ["one.example.com", "#c"]}


def test_missing_resolv_conf_is_io_error_and_writes_nothing(data_dir: Path,
                                                            tmp_path: Path) -> None:
    error = run("ADD", legacy(data_dir, resolvConf=str(tmp_path / "nope"))).error(5)
    assert "resolvConf" in error["msg"] and "nope" in error["msg"]
    assert not data_dir.exists()


def test_networks_are_separate(data_dir: Path) -> None:
    assert addresses(add(legacy(data_dir))) == ["10.1.0.2/24"]
    other = legacy(data_dir)
    other["name"] = "net2"
    assert addresses(add(other)) == ["10.1.0.2/24"]
    assert held(data_dir / "net2") == {"10.1.0.2": "ctr-1\r\neth0"}


# --- the seed NetworkAttachmentDefinitions ---------------------------------------------------

SEED_CASES = [
    ("nad-business-network.macvlan.json", "192.168.100.10/16", "192.168.100.1"),
    ("nad-management-network.host-device.json", "10.0.0.10/24", "10.0.0.1"),
    ("nad-storage-network.sriov.json", "172.16.1.10/16", "172.16.1.1"),
    ("nad-vlan-network.vlan.json", "10.100.0.10/24", "10.100.0.1"),
]


@pytest.mark.parametrize(("seed", "first", "gateway"), SEED_CASES,
                         ids=[case[0].split(".")[0] for case in SEED_CASES])
def test_seed_network_attachment_definitions(seed: str, first: str, gateway: str,
                                             data_dir: Path) -> None:
    conf = json.loads((SEEDS / seed).read_text())
    conf["name"] = "seed-net"  # Multus injects the NAD's name
    conf["ipam"]["dataDir"] = str(data_dir)
    result = add(conf, cid="pod-a", ifname="net1")
    assert result["cniVersion"] == conf["cniVersion"]
    assert result["ips"] == [{"version": "4", "address": first, "gateway": gateway}]
    assert result.get("routes", []) == conf["ipam"].get("routes", [])
    net_dir = data_dir / "seed-net"
    address = first.split("/")[0]
    assert_allocated(net_dir, address, "pod-a", "net1")

    # the range's end is its last address, then the allocator wraps to the start
    end = conf["ipam"]["rangeEnd"]
    before_end = str(ipaddress.ip_address(end) - 1)
    (net_dir / "last_reserved_ip.0").write_text(before_end)
    assert addresses(add(conf, cid="pod-b", ifname="net1")) == [
        f"{end}/{first.split('/')[1]}"]
    second = str(ipaddress.ip_address(address) + 1)
    assert addresses(add(conf, cid="pod-c", ifname="net1")) == [
        f"{second}/{first.split('/')[1]}"]
    run("CHECK", {**conf, "cniVersion": "0.4.0"}, cid="pod-a", ifname="net1").ok()
    for cid in ("pod-a", "pod-b", "pod-c"):
        run("DEL", conf, cid=cid, ifname="net1").ok()
    assert held(net_dir) == {} and meta_names(net_dir) == []


# --- requested addresses --------------------------------------------------------------------

REQUEST_SOURCES = {
    "cni-args": ({"CNI_ARGS": "IP=10.1.0.7"}, {}),
    "cni-args-k8s": ({"CNI_ARGS": "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;IP=10.1.0.7"}, {}),
    "args-cni-ips": ({}, {"args": {"cni": {"ips": ["10.1.0.7"]}}}),
    "runtime-config-ips": ({}, {"runtimeConfig": {"ips": ["10.1.0.7/24"]}}),
}


@pytest.mark.parametrize("source", REQUEST_SOURCES)
def test_requested_address(source: str, data_dir: Path) -> None:
    env, top = REQUEST_SOURCES[source]
    conf = net(data_dir, top=top, subnet="10.1.0.0/24")
    assert add(conf, **env)["ips"] == [{"address": "10.1.0.7/24", "gateway": "10.1.0.1"}]
    net_dir = data_dir / "net1"
    assert_allocated(net_dir, "10.1.0.7", "ctr-1")
    assert (net_dir / "last_reserved_ip.0").read_text() == "10.1.0.7"
    # the next one without a request continues round-robin after it
    assert addresses(add(legacy(data_dir), cid="b")) == ["10.1.0.8/24"]
    # a retried ADD with the same request keeps it
    assert addresses(add(conf, **env)) == ["10.1.0.7/24"]
    # someone else asking for it is refused, naming the holder, and nothing changes
    before = tree(data_dir)
    error = run("ADD", conf, cid="c", **env).error(999)
    assert "10.1.0.7" in error["msg"] and "ctr-1/eth0" in error["msg"]
    assert tree(data_dir) == before


def test_requested_addresses_dual_stack_from_every_source(data_dir: Path) -> None:
    conf = net(data_dir, top={"args": {"cni": {"ips": ["fd00:1::9"]}},
                              "runtimeConfig": {"ips": ["10.1.0.9/24"]}},
               ranges=[[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}],
                       [{"subnet": "10.2.0.0/24"}]])
    result = add(conf, CNI_ARGS="IP=10.2.0.9")
    assert addresses(result) == ["10.1.0.9/24", "fd00:1::9/64", "10.2.0.9/24"]
    assert sorted(held(data_dir / "net1")) == ["10.1.0.9", "10.2.0.9", "fd00:1::9"]


def test_the_same_address_from_two_sources_is_one_request(data_dir: Path) -> None:
    conf = net(data_dir, top={"runtimeConfig": {"ips": ["10.1.0.9/24"]}},
               subnet="10.1.0.0/24")
    assert addresses(add(conf, CNI_ARGS="IP=10.1.0.9")) == ["10.1.0.9/24"]


def test_only_part_of_a_request_served_releases_the_rest(data_dir: Path) -> None:
    conf = net(data_dir, ranges=[[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.2.0.0/30"}]])
    add(conf, cid="holder", CNI_ARGS="IP=10.1.0.9,10.2.0.2")
    error = run("ADD", conf, cid="late", CNI_ARGS="IP=10.1.0.10,10.2.0.2").error(999)
    assert "10.2.0.2" in error["msg"] and "holder/eth0" in error["msg"]
    assert sorted(held(data_dir / "net1")) == ["10.1.0.9", "10.2.0.2"]
    assert meta_names(data_dir / "net1") == ["10.1.0.9", "10.2.0.2"]


# --- bad input: spec codes and nothing written ----------------------------------------------

BAD_CONFIGS: list[tuple[str, dict[str, Any], dict[str, str], int, str]] = [
    # (id, ipam keys or top-level keys under "top", env, code, words in the message)
    ("no-ranges", {}, {}, 7, "no IP ranges specified"),
    ("slash-31", {"subnet": "10.1.0.0/31"}, {}, 7, "too small to allocate from"),
    ("slash-32", {"subnet": "10.1.0.0/32"}, {}, 7, "too small to allocate from"),
    ("slash-127", {"ranges": [[{"subnet": "fd00::/127"}]]}, {}, 7, "too small"),
    ("slash-128", {"ranges": [[{"subnet": "fd00::/128"}]]}, {}, 7, "too small"),
    ("host-bits", {"subnet": "10.1.0.1/24"}, {}, 7, "host bits set"),
    ("host-bits-v6", {"ranges": [[{"subnet": "fd00::5/64"}]]}, {}, 7, "host bits set"),
    ("not-cidr", {"subnet": "10.1.0.0/33"}, {}, 7, "invalid subnet"),
    ("garbage-subnet", {"ranges": [[{"subnet": "nonsense"}]]}, {}, 7, "invalid subnet"),
    ("no-subnet", {"ranges": [[{"rangeStart": "10.1.0.5"}]]}, {}, 7, "range has no subnet"),
    ("start-outside", {"subnet": "10.1.0.0/24", "rangeStart": "10.2.0.5"}, {}, 7,
     "rangeStart 10.2.0.5 not in network 10.1.0.0/24"),
    ("end-outside", {"subnet": "10.1.0.0/24", "rangeEnd": "10.1.1.5"}, {}, 7,
     "rangeEnd 10.1.1.5 not in network"),
    ("start-after-end", {"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.9",
                         "rangeEnd": "10.1.0.5"}, {}, 7, "after rangeEnd"),
    ("bad-gateway", {"subnet": "10.1.0.0/24", "gateway": "10.1.0"}, {}, 7, "gateway"),
    ("gateway-other-family", {"subnet": "10.1.0.0/24", "gateway": "fd00::1"}, {}, 7,
     "gateway fd00::1"),
    ("mixed-families-in-set", {"ranges": [[{"subnet": "10.1.0.0/24"},
                                           {"subnet": "fd00::/64"}]]}, {}, 7,
     "mixed address families"),
    ("overlap-in-set", {"ranges": [[{"subnet": "10.1.0.0/24"},
                                    {"subnet": "10.1.0.0/25"}]]}, {}, 7, "overlap"),
    ("overlapping-sets", {"ranges": [[{"subnet": "10.1.0.0/24"}],
                                     [{"subnet": "10.1.0.0/16"}]]}, {}, 7,
     "range set 0 overlaps with 1"),
    ("legacy-overlaps-ranges", {"subnet": "10.1.0.0/24",
                                "ranges": [[{"subnet": "10.1.0.128/25"}]]}, {}, 7,
     "range set 0 overlaps with 1"),
    ("ranges-not-nested", {"ranges": [{"subnet": "10.1.0.0/24"}]}, {}, 7, "ipam.ranges"),
    ("empty-set", {"ranges": [[]]}, {}, 7, "empty range set"),
    ("runtime-ranges-malformed", {"subnet": "10.1.0.0/24", "top": {
        "runtimeConfig": {"ipRanges": [{"subnet": "10.9.0.0/24"}]}}}, {}, 7,
     "invalid range set 0"),
    ("runtime-ranges-overlap", {"subnet": "10.1.0.0/24", "top": {
        "runtimeConfig": {"ipRanges": [[{"subnet": "10.1.0.0/16"}]]}}}, {}, 7,
     "range set 0 overlaps with 1"),
    ("route-without-dst", {"subnet": "10.1.0.0/24", "routes": [{"gw": "10.1.0.1"}]}, {}, 7,
     "invalid route"),
    ("route-dst-not-cidr", {"subnet": "10.1.0.0/24", "routes": [{"dst": "here"}]}, {}, 7,
     "invalid route"),
    ("route-dst-a-number", {"subnet": "10.1.0.0/24", "routes": [{"dst": 5}]}, {}, 7,
     "invalid route"),
    ("route-gw-a-number", {"subnet": "10.1.0.0/24", "routes": [{"dst": "0.0.0.0/0",
                                                               "gw": 167837953}]}, {}, 7,
     "invalid route"),
    ("requested-outside", {"subnet": "10.1.0.0/24"}, {"CNI_ARGS": "IP=10.7.0.5"}, 7,
     "10.7.0.5 is not in any range set"),
    ("requested-outside-range-in-subnet", {"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.50"},
     {"CNI_ARGS": "IP=10.1.0.5"}, 7, "10.1.0.5 is not in any range set"),
    ("requested-broadcast", {"subnet": "10.1.0.0/24"}, {"CNI_ARGS": "IP=10.1.0.255"}, 7,
     "not in any range set"),
    ("requested-gateway", {"subnet": "10.1.0.0/24"}, {"CNI_ARGS": "IP=10.1.0.1"}, 7,
     "requested IP 10.1.0.1 is the gateway of 10.1.0.0/24"),
    ("requested-gateway-runtime", {"subnet": "10.1.0.0/24", "top": {
        "runtimeConfig": {"ips": ["10.1.0.1/24"]}}}, {}, 7, "is the gateway"),
    ("two-requested-one-set", {"subnet": "10.1.0.0/24"}, {"CNI_ARGS": "IP=10.1.0.5,10.1.0.6"},
     7, "same range set 0"),
    ("requested-not-an-ip", {"subnet": "10.1.0.0/24"}, {"CNI_ARGS": "IP=ten"}, 7,
     "invalid requested IP 'ten'"),
    ("ips-not-a-list", {"subnet": "10.1.0.0/24", "top": {
        "runtimeConfig": {"ips": "10.1.0.5"}}}, {}, 7, "runtimeConfig.ips must be a list"),
    ("unknown-cni-arg", {"subnet": "10.1.0.0/24"}, {"CNI_ARGS": "IPX=1"}, 2, "'IPX'"),
]


@pytest.mark.parametrize("populated", [False, True], ids=["fresh", "populated"])
@pytest.mark.parametrize(("ipam", "env", "code", "words"), [c[1:] for c in BAD_CONFIGS],
                         ids=[c[0] for c in BAD_CONFIGS])
def test_bad_input_is_refused_and_writes_nothing(ipam: dict[str, Any], env: dict[str, str],
                                                 code: int, words: str, populated: bool,
                                                 data_dir: Path) -> None:
    if populated:  # a network in use: its files must stay exactly as they are
        add(legacy(data_dir, "10.1.0.0/24"), cid="existing")
    before = tree(data_dir)
    keys = dict(ipam)
    top = keys.pop("top", None)
    error = run("ADD", net(data_dir, top=top, **keys), cid="newcomer", **env).error(code)
    assert words in error["msg"], error
    assert tree(data_dir) == before


def test_missing_ipam_section(data_dir: Path) -> None:
    conf = {"cniVersion": "1.0.0", "name": "net1", "type": "bridge"}
    assert "missing 'ipam'" in run("ADD", conf).error(7)["msg"]


@pytest.mark.parametrize("shape", ["data-dir-is-a-file", "parent-is-a-file"])
def test_data_directory_that_is_a_file(shape: str, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    data_dir = blocker if shape == "data-dir-is-a-file" else blocker / "sub"
    error = run("ADD", legacy(data_dir)).error(5)
    assert str(blocker) in error["msg"]
    assert blocker.read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["blocker"]


def test_network_directory_that_is_a_file(data_dir: Path) -> None:
    data_dir.mkdir()
    (data_dir / "net1").write_text("not a directory")
    assert "net1" in run("ADD", legacy(data_dir)).error(5)["msg"]
    assert tree(data_dir) == {"net1": b"not a directory"}


def test_failed_metadata_write_gives_the_address_back(data_dir: Path) -> None:
    net_dir = data_dir / "net1"
    net_dir.mkdir(parents=True)
    (net_dir / ".meta").write_text("in the way")
    error = run("ADD", legacy(data_dir)).error(5)
    assert ".meta" in error["msg"]
    assert held(net_dir) == {}


# --- retries, conflicts, DEL, CHECK ---------------------------------------------------------

def test_retried_add_returns_the_same_addresses(data_dir: Path) -> None:
    conf = net(data_dir, ranges=[[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]])
    first = add(conf)
    before = tree(data_dir / "net1")
    again = add(conf)
    assert again == first
    assert addresses(again) == ["10.1.0.2/24", "fd00:1::2/64"]
    assert tree(data_dir / "net1") == before  # nothing new reserved, nothing rewritten
    assert addresses(add(conf, ifname="net1")) == ["10.1.0.3/24", "fd00:1::3/64"]
    assert addresses(add(conf, cid="ctr-2")) == ["10.1.0.4/24", "fd00:1::4/64"]


def test_retry_with_a_conflicting_request_names_both(data_dir: Path) -> None:
    conf = legacy(data_dir)
    add(conf)
    before = tree(data_dir)
    error = run("ADD", conf, CNI_ARGS="IP=10.1.0.50").error(7)
    assert "ctr-1/eth0 already holds 10.1.0.2" in error["msg"]
    assert "requested 10.1.0.50" in error["msg"]
    assert tree(data_dir) == before


def test_retry_after_the_set_grew_fills_only_the_new_set(data_dir: Path) -> None:
    add(legacy(data_dir))
    grown = net(data_dir, subnet="10.1.0.0/24", ranges=[[{"subnet": "fd00:1::/64"}]])
    assert addresses(add(grown)) == ["10.1.0.2/24", "fd00:1::2/64"]
    assert sorted(held(data_dir / "net1")) == ["10.1.0.2", "fd00:1::2"]


def test_del_releases_only_the_attachment(data_dir: Path) -> None:
    conf = legacy(data_dir)
    add(conf, cid="a")
    add(conf, cid="a", ifname="net1")
    add(conf, cid="b")
    run("DEL", conf, cid="a").ok()
    assert held(data_dir / "net1") == {"10.1.0.3": "a\r\nnet1", "10.1.0.4": "b\r\neth0"}
    assert meta_names(data_dir / "net1") == ["10.1.0.3", "10.1.0.4"]


def test_del_needs_neither_netns_nor_valid_ranges(data_dir: Path) -> None:
    add(legacy(data_dir))
    no_ranges = net(data_dir)  # the ranges were removed from the config since
    env = cni_env("DEL", container_id="ctr-1")
    assert "CNI_NETNS" not in env
    run_in_process(PLUGIN, env, no_ranges).ok()
    assert held(data_dir / "net1") == {}


def test_del_of_unknown_attachment_and_network_is_fine(data_dir: Path) -> None:
    assert run("DEL", legacy(data_dir), cid="never-added").ok() is None
    add(legacy(data_dir))
    assert run("DEL", legacy(data_dir), cid="never-added").ok() is None
    assert list(held(data_dir / "net1")) == ["10.1.0.2"]


def test_check_needs_an_address_in_every_range_set(data_dir: Path) -> None:
    v4 = legacy(data_dir)
    add(v4)
    run("CHECK", v4).ok()
    both = net(data_dir, subnet="10.1.0.0/24", ranges=[[{"subnet": "fd00:1::/64"}]])
    error = run("CHECK", both).error(999)
    assert "range set 1 (fd00:1::1-fd00:1::ffff:ffff:ffff:ffff)" in error["msg"]
    assert "ctr-1/eth0" in error["msg"]
    assert "ctr-2/eth0" in run("CHECK", v4, cid="ctr-2").error(999)["msg"]


# --- files the reference plugin wrote -------------------------------------------------------

def write_reference_file(net_dir: Path, address: str, content: str,
                         earlier_boot: bool = False) -> None:
    net_dir.mkdir(parents=True, exist_ok=True)
    path = net_dir / address
    path.write_bytes(content.encode())
    if earlier_boot:
        os.utime(path, (1, 1))


def test_reference_files_are_honoured_and_released(data_dir: Path) -> None:
    net_dir = data_dir / "net1"
    write_reference_file(net_dir, "10.1.0.2", "ref-ctr\r\neth0")
    write_reference_file(net_dir, "10.1.0.3", "old-ctr")  # older reference: no ifname
    (net_dir / "last_reserved_ip.0").write_text("10.1.0.3")
    (net_dir / "lock").write_text("")
    conf = legacy(data_dir)
    assert addresses(add(conf)) == ["10.1.0.4/24"]
    # a retried ADD of the reference's attachments returns their addresses
    assert addresses(add(conf, cid="ref-ctr")) == ["10.1.0.2/24"]
    assert addresses(add(conf, cid="old-ctr")) == ["10.1.0.3/24"]
    run("CHECK", conf, cid="ref-ctr").ok()
    run("DEL", conf, cid="ref-ctr").ok()
    run("DEL", conf, cid="old-ctr").ok()
    assert held(net_dir) == {"10.1.0.4": "ctr-1\r\neth0"}


def test_metadata_is_hidden_from_a_reference_style_reader(data_dir: Path) -> None:
    """The reference reads every file under the network directory (filepath.Walk) and
    compares its trimmed content with `<id>\\r\\n<ifname>`: ours must never match."""
    add(legacy(data_dir), cid="x")
    net_dir = data_dir / "net1"
    matches = [p for p in net_dir.rglob("*") if p.is_file()
               and p.read_bytes().decode(errors="replace").strip() == "x\r\neth0"]
    assert matches == [net_dir / "10.1.0.2"]


def test_metadata_of_a_previous_holder_is_ignored(data_dir: Path) -> None:
    """The reference released 10.1.0.2 (leaving our metadata) and gave it to someone else in
    this boot: the new holder's file must not inherit the old holder's earlier boot."""
    conf = legacy(data_dir, "10.1.0.0/30", version="1.1.0")
    add(conf, cid="first")
    net_dir = data_dir / "net1"
    from_earlier_boot(net_dir, "10.1.0.2")
    write_reference_file(net_dir, "10.1.0.2", "second\r\neth0")  # the reference's new ADD
    assert "1 of 1 in use" in run("ADD", conf, cid="third").error(999)["msg"]
    run("STATUS", conf).error(50)
    run("GC", gc_conf(data_dir, [("second", "eth0")])).ok()
    assert held(net_dir) == {"10.1.0.2": "second\r\neth0"}


# --- reboots --------------------------------------------------------------------------------

def test_exhausted_range_reclaims_allocations_from_an_earlier_boot(data_dir: Path) -> None:
    conf = legacy(data_dir, "10.1.0.0/29")
    for i in range(5):
        add(conf, cid=f"c{i}")  # .2 to .6, full
    net_dir = data_dir / "net1"
    from_earlier_boot(net_dir, "10.1.0.4")
    from_earlier_boot(net_dir, "10.1.0.3")
    info = meta(net_dir, "10.1.0.3")
    info["created"] = 1.0  # the older of the two goes first
    (net_dir / ".meta" / "10.1.0.3").write_text(json.dumps(info))
    assert addresses(add(conf, cid="new")) == ["10.1.0.3/29"]
    assert_allocated(net_dir, "10.1.0.3", "new")
    assert addresses(add(conf, cid="newer")) == ["10.1.0.4/29"]
    assert "5 of 5 in use" in run("ADD", conf, cid="newest").error(999)["msg"]
    assert held(net_dir)["10.1.0.3"] == "new\r\neth0"


def test_allocations_from_an_earlier_boot_stay_while_free_addresses_remain(
        data_dir: Path) -> None:
    conf = legacy(data_dir, "10.1.0.0/29")
    add(conf, cid="old")
    from_earlier_boot(data_dir / "net1", "10.1.0.2")
    assert addresses(add(conf, cid="new")) == ["10.1.0.3/29"]
    assert held(data_dir / "net1")["10.1.0.2"] == "old\r\neth0"


def test_reference_files_older_than_the_boot_are_reclaimed(data_dir: Path) -> None:
    net_dir = data_dir / "net1"
    write_reference_file(net_dir, "10.1.0.2", "before-boot\r\neth0", earlier_boot=True)
    write_reference_file(net_dir, "10.1.0.3", "this-boot\r\neth0")
    conf = legacy(data_dir, "10.1.0.0/29", rangeEnd="10.1.0.3")
    assert addresses(add(conf, cid="new")) == ["10.1.0.2/29"]
    assert_allocated(net_dir, "10.1.0.2", "new")
    error = run("ADD", conf, cid="newer").error(999)
    assert "10.1.0.1-10.1.0.3: 2 of 2 in use" in error["msg"]
    assert held(net_dir)["10.1.0.3"] == "this-boot\r\neth0"


def test_requested_address_from_an_earlier_boot_is_reclaimed(data_dir: Path) -> None:
    conf = legacy(data_dir)
    add(conf, cid="old", CNI_ARGS="IP=10.1.0.77")
    from_earlier_boot(data_dir / "net1", "10.1.0.77")
    assert addresses(add(conf, cid="new", CNI_ARGS="IP=10.1.0.77")) == ["10.1.0.77/24"]
    assert_allocated(data_dir / "net1", "10.1.0.77", "new")


def test_retried_add_after_reboot_keeps_the_address_and_this_boot(data_dir: Path) -> None:
    conf = legacy(data_dir, "10.1.0.0/29", rangeEnd="10.1.0.2")
    add(conf, cid="pod")
    net_dir = data_dir / "net1"
    from_earlier_boot(net_dir, "10.1.0.2")
    assert addresses(add(conf, cid="pod")) == ["10.1.0.2/29"]  # re-established after reboot
    assert meta(net_dir, "10.1.0.2")["boot"] == BOOT_ID
    # so it is no longer up for reclaiming
    assert "1 of 1 in use" in run("ADD", conf, cid="other").error(999)["msg"]
    assert held(net_dir) == {"10.1.0.2": "pod\r\neth0"}


# --- GC -------------------------------------------------------------------------------------

def gc_conf(data_dir: Path, valid: list[tuple[str, str]] | None,
            key: str = "cni.dev/valid-attachments", **ipam: Any) -> dict[str, Any]:
    conf = net(data_dir, "1.1.0", **(ipam or {"subnet": "10.1.0.0/24"}))
    if valid is not None:
        conf[key] = [{"containerID": c, "ifname": i} for c, i in valid]
    return conf


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_frees_what_is_not_valid(key: str, data_dir: Path) -> None:
    conf = net(data_dir, "1.1.0", ranges=[[{"subnet": "10.1.0.0/24"}],
                                          [{"subnet": "fd00:1::/64"}]])
    for cid, ifname in [("keep", "eth0"), ("keep", "net1"), ("gone", "eth0")]:
        add(conf, cid=cid, ifname=ifname)
    net_dir = data_dir / "net1"
    write_reference_file(net_dir, "10.1.0.9", "ref-gone\r\neth0")
    write_reference_file(net_dir, "10.1.0.10", "keep")  # old format: container only
    (net_dir / ".meta" / "10.1.0.99").write_text("{}")  # orphaned metadata
    assert run("GC", gc_conf(data_dir, [("keep", "eth0"), ("keep", "net1")], key)).ok() is None
    assert held(net_dir) == {
        "10.1.0.2": "keep\r\neth0", "fd00:1::2": "keep\r\neth0",
        "10.1.0.3": "keep\r\nnet1", "fd00:1::3": "keep\r\nnet1", "10.1.0.10": "keep"}
    assert meta_names(net_dir) == ["10.1.0.2", "10.1.0.3", "fd00:1::2", "fd00:1::3"]
    assert (net_dir / "lock").is_file()
    assert (net_dir / "last_reserved_ip.0").read_text() == "10.1.0.4"
    assert (net_dir / "last_reserved_ip.1").read_text() == "fd00:1::4"
    assert run("GC", gc_conf(data_dir, [])).ok() is None
    assert held(net_dir) == {} and meta_names(net_dir) == []
    assert sorted(os.listdir(net_dir)) == [".meta", "last_reserved_ip.0",
                                           "last_reserved_ip.1", "lock"]


def test_gc_frees_allocations_from_an_earlier_boot(data_dir: Path) -> None:
    """After a reboot the runtime lists only live attachments: the old ones go. One it
    still lists is in use whatever its boot, and stays (freeing it would hand out a live
    address twice)."""
    conf = legacy(data_dir, version="1.1.0")
    for cid in ("old", "listed-old", "new"):
        add(conf, cid=cid)
    net_dir = data_dir / "net1"
    from_earlier_boot(net_dir, "10.1.0.2")
    from_earlier_boot(net_dir, "10.1.0.3")
    write_reference_file(net_dir, "10.1.0.9", "ref-old\r\neth0", earlier_boot=True)
    write_reference_file(net_dir, "10.1.0.10", "ref-now\r\neth0")
    valid = [("listed-old", "eth0"), ("new", "eth0"), ("ref-now", "eth0")]
    run("GC", gc_conf(data_dir, valid)).ok()
    assert held(net_dir) == {"10.1.0.3": "listed-old\r\neth0", "10.1.0.4": "new\r\neth0",
                             "10.1.0.10": "ref-now\r\neth0"}
    assert meta_names(net_dir) == ["10.1.0.3", "10.1.0.4"]


@pytest.mark.parametrize(("extra", "words"), [
    ({}, "GC needs cni.dev/valid-attachments"),
    ({"cni.dev/valid-attachments": [{"containerID": "x"}]}, "must be a list of"),
    ({"cni.dev/valid-attachments": "x"}, "must be a list of"),
])
def test_gc_refuses_a_malformed_list(extra: dict[str, Any], words: str,
                                     data_dir: Path) -> None:
    add(legacy(data_dir))
    before = tree(data_dir)
    conf = {**legacy(data_dir, version="1.1.0"), **extra}
    assert words in run("GC", conf).error(7)["msg"]
    assert tree(data_dir) == before


# --- STATUS ---------------------------------------------------------------------------------

def test_status_reports_exhaustion_until_an_address_is_freed(data_dir: Path) -> None:
    conf = net(data_dir, "1.1.0", ranges=[[{"subnet": "fd00:1::/64"}],
                                          [{"subnet": "10.1.0.0/30"}]])
    assert run("STATUS", conf).ok() is None
    add(conf, cid="a")
    error = run("STATUS", conf).error(50)
    assert error["msg"] == ("range set 1 (10.1.0.1-10.1.0.2) is exhausted: 1 of 1 in use")
    run("DEL", conf, cid="a").ok()
    assert run("STATUS", conf).ok() is None


def test_status_counts_earlier_boots_as_free(data_dir: Path) -> None:
    conf = legacy(data_dir, "10.1.0.0/30", version="1.1.0")
    add(conf, cid="old")
    run("STATUS", conf).error(50)
    from_earlier_boot(data_dir / "net1", "10.1.0.2")
    assert run("STATUS", conf).ok() is None


@pytest.mark.parametrize("shape", ["data-dir-is-a-file", "parent-is-a-file"])
def test_status_unusable_data_directory(shape: str, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    data_dir = blocker if shape == "data-dir-is-a-file" else blocker / "sub"
    error = run("STATUS", legacy(data_dir, version="1.1.0")).error(50)
    assert "data directory unusable" in error["msg"] and str(blocker) in error["msg"]
    assert blocker.read_text() == "keep me"


def test_status_refuses_a_bad_config(data_dir: Path) -> None:
    assert "too small" in run("STATUS", legacy(data_dir, "10.1.0.0/31",
                                               version="1.1.0")).error(7)["msg"]


# --- real processes -------------------------------------------------------------------------

def exec_host_local(command: str, conf: Any, cid: str = "ctr-1", **env: str) -> Outcome:
    netns = NETNS if command in ("ADD", "CHECK") else ""
    return run_exec([*PYCNI, "host-local"], cni_env(command, netns, container_id=cid, **env),
                    conf)


def test_process_add_check_del(data_dir: Path) -> None:
    conf = legacy(data_dir, version="0.4.0")
    outcome = exec_host_local("ADD", conf)
    assert outcome.status == 0
    assert json.loads(outcome.stdout) == {"cniVersion": "0.4.0", "ips": [
        {"version": "4", "address": "10.1.0.2/24", "gateway": "10.1.0.1"}]}
    assert outcome.stderr == ""
    assert_allocated(data_dir / "net1", "10.1.0.2", "ctr-1")
    check = exec_host_local("CHECK", conf)
    assert (check.status, check.stdout) == (0, "")
    for _ in range(2):
        done = exec_host_local("DEL", conf)
        assert (done.status, done.stdout) == (0, "")
    assert held(data_dir / "net1") == {}


def test_process_errors_are_json_on_stdout_and_exit_1(data_dir: Path, tmp_path: Path) -> None:
    bad = exec_host_local("ADD", legacy(data_dir, "10.1.0.0/31"))
    assert "too small" in bad.error(7)["msg"]
    assert bad.stdout.count("{") == 1
    blocker = tmp_path / "file"
    blocker.write_text("")
    exec_host_local("ADD", legacy(blocker)).error(5)
    add(legacy(data_dir, "10.1.0.0/30"))
    full = exec_host_local("ADD", legacy(data_dir, "10.1.0.0/30"), cid="b")
    assert "1 of 1 in use" in full.error(999)["msg"]
    status = exec_host_local("STATUS", legacy(data_dir, "10.1.0.0/30", version="1.1.0"))
    assert "exhausted" in status.error(50)["msg"]
    assert not (data_dir / "net1" / "10.1.0.3").exists()


def test_process_version() -> None:
    outcome = run_exec([*PYCNI, "host-local"], {"CNI_COMMAND": "VERSION"}, b"")
    assert outcome.ok() == {"cniVersion": "1.1.0", "supportedVersions": list(spec.ALL)}


def start_many(command: str, conf: dict[str, Any], container_ids: list[str],
               tmp_path: Path) -> list[tuple[str, subprocess.Popen[bytes]]]:
    """Start one real plugin process per container, all before any is waited for."""
    stdin_file = tmp_path / f"{command}.json"
    stdin_file.write_text(json.dumps(conf))
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    started = []
    for cid in container_ids:
        env = {**base, **cni_env(command, NETNS if command == "ADD" else "", container_id=cid)}
        with stdin_file.open("rb") as stdin:
            started.append((cid, subprocess.Popen([*PYCNI, "host-local"], stdin=stdin,
                                                   stdout=subprocess.PIPE,
                                                   stderr=subprocess.PIPE, env=env)))
    return started


def finish(started: list[tuple[str, subprocess.Popen[bytes]]]) -> dict[str, Outcome]:
    done = {}
    for cid, process in started:
        stdout, stderr = process.communicate(timeout=300)
        done[cid] = Outcome(process.returncode, stdout.decode(), stderr.decode())
    return done


def test_64_concurrent_adds_then_dels(data_dir: Path, tmp_path: Path) -> None:
    conf = legacy(data_dir, "10.64.0.0/24", rangeStart="10.64.0.10", rangeEnd="10.64.0.100")
    container_ids = [f"pod-{i:02d}" for i in range(64)]
    added = finish(start_many("ADD", conf, container_ids, tmp_path))
    given = {cid: addresses(outcome.ok())[0] for cid, outcome in added.items()}
    assert len(set(given.values())) == 64
    for address in given.values():
        ip = ipaddress.ip_interface(address)
        assert ip.network == ipaddress.ip_network("10.64.0.0/24")
        assert ipaddress.ip_address("10.64.0.10") <= ip.ip <= ipaddress.ip_address("10.64.0.100")
    net_dir = data_dir / "net1"
    assert held(net_dir) == {address.split("/")[0]: f"{cid}\r\neth0"
                             for cid, address in given.items()}
    for cid, address in given.items():
        assert_allocated(net_dir, address.split("/")[0], cid)
    assert not [n for n in os.listdir(net_dir) if n.endswith(".tmp")]

    deleted = finish(start_many("DEL", conf, container_ids, tmp_path))
    assert all(outcome.ok() is None for outcome in deleted.values())
    assert held(net_dir) == {} and meta_names(net_dir) == []
    assert set(os.listdir(net_dir)) <= {".meta", "lock", "last_reserved_ip.0"}


