"""macvlan, ipvlan, vlan, host-device, sriov, host-local and static (as their IPAM), tuning and
bandwidth (chained) as a runtime drives them: the frozen build through libcni (dist/cnitool),
ADD, CHECK (0.4.0 and later), DEL and DEL again in every spec version libcni speaks (1.1.0
through cnitool's shim), with libcni's result cache in use.

cnitool runs inside a sandbox host namespace standing for the node. The NICs are veth ends in
it, their peers in a sandbox "server" namespace standing for the segment behind the NIC. IPAM,
tuning, host-device and sriov keep their files in the test's scratch directory; sriov reads a
fake sysfs tree and a fake PF (tests/sriovlib.py) named by environment variables, which libcni
passes on to the plugin with the rest of its environment.

bandwidth needs a veth (it shapes the pod's host end), so its chain is bridge -> tuning ->
bandwidth; behind macvlan, which has no host end, it must fail cleanly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conformance.bridgelib import BRIDGE, bridge_conflist
from conformance.conftest import CniTool
from conformance.pluginlib import (
    VERSIONS,
    add,
    addresses,
    assert_ips,
    check,
    default_gateway,
    delete,
    details,
    files,
    host_local_allocations,
    ifbs,
    links,
    missing_link_kinds,
    ping,
    pod_interface,
    qdiscs,
    sysctl,
    wire_nic,
)
from tests import sriovlib
from tests.conftest import IS_ROOT, Netns, NetnsFactory

pytestmark = [pytest.mark.conformance, pytest.mark.kernel]

# The business segment behind the node's `eth1` (macvlan, ipvlan, vlan, tuning).
BUSINESS = "business"
MASTER = "eth1"
GATEWAY = "192.168.100.1"  # on the server
FIRST = "192.168.100.10/24"  # host-local's first address in the range below
POD_MAC = "02:00:c0:a8:64:0a"
TUNED_MAC = "02:11:22:33:44:55"
IFNAME = "net1"  # a secondary attachment, as Multus names them
# bandwidth: rates in bits per second, bursts in bits
SHAPING = {"ingressRate": 20_000_000, "ingressBurst": 1_000_000,
           "egressRate": 10_000_000, "egressBurst": 1_000_000}


def host_local(data_dir: Path, subnet: str = "192.168.100.0/24",
               range_start: str = "192.168.100.10", gateway: str = GATEWAY) -> dict[str, Any]:
    return {"type": "host-local", "dataDir": str(data_dir), "subnet": subnet,
            "rangeStart": range_start, "gateway": gateway, "routes": [{"dst": "0.0.0.0/0"}]}


def conflist(version: str, name: str, *plugins: dict[str, Any]) -> dict[str, Any]:
    return {"cniVersion": version, "name": name, "plugins": list(plugins)}


def assert_gone(pod: Netns, ifname: str = IFNAME) -> None:
    assert links(pod) == ["lo"], f"{ifname} outlived DEL: {links(pod)}"


@pytest.fixture
def server(host_ns: Netns, netns_factory: NetnsFactory) -> Netns:
    """The business segment: `eth1` on the node, up; the server behind it holds the pods'
    gateway."""
    segment = netns_factory("server")
    wire_nic(host_ns, segment, MASTER, "eth0", peer_addresses=(f"{GATEWAY}/24",))
    return segment


@pytest.fixture(scope="session")
def missing_kinds() -> Iterator[dict[str, str]]:
    """Link kinds this kernel cannot create (ipvlan, vlan), tried once in a scratch sandbox."""
    if not IS_ROOT:
        yield {}
        return
    factory = NetnsFactory()
    try:
        yield missing_link_kinds(factory)
    finally:
        factory.remove_all()


# --- macvlan with host-local -----------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_macvlan_with_host_local(version: str, cnitool: CniTool, host_ns: Netns, pod_ns: Netns,
                                 server: Netns, scratch_dir: Path) -> None:
    ipam_dir = scratch_dir / "ipam"
    cnitool.write_conf(conflist(version, BUSINESS, {
        "type": "macvlan", "master": MASTER, "mode": "bridge", "mtu": 1400, "mac": POD_MAC,
        "ipam": host_local(ipam_dir)}))
    node_links = links(host_ns)

    result = add(cnitool, BUSINESS, pod_ns, IFNAME, version)

    net1 = details(pod_ns, IFNAME)
    assert net1["linkinfo"]["info_kind"] == "macvlan"
    assert net1["linkinfo"]["info_data"]["mode"] == "bridge"
    assert net1["link_index"] == host_ns.link(MASTER)["ifindex"], "not on the master"
    assert (net1["mtu"], net1["address"]) == (1400, POD_MAC) and "UP" in net1["flags"]
    assert addresses(pod_ns, IFNAME) == [FIRST]
    assert default_gateway(pod_ns) == GATEWAY
    assert pod_interface(result, pod_ns, IFNAME) == {"name": IFNAME, "mac": POD_MAC,
                                                    "sandbox": pod_ns.path}
    assert_ips(result, version, [(FIRST, GATEWAY)])
    assert host_local_allocations(ipam_dir, BUSINESS) == {
        "192.168.100.10": cnitool.container_id}
    assert ping(pod_ns, GATEWAY), "the pod cannot reach the server through the master"

    check(cnitool, BUSINESS, pod_ns, IFNAME, version)

    delete(cnitool, BUSINESS, pod_ns, IFNAME)
    assert_gone(pod_ns)
    assert links(host_ns) == node_links
    assert host_local_allocations(ipam_dir, BUSINESS) == {}
    delete(cnitool, BUSINESS, pod_ns, IFNAME)  # DEL forgives: twice is fine


@pytest.mark.parametrize("version", ["1.0.0"])
def test_check_fails_when_the_macvlan_address_is_gone(version: str, cnitool: CniTool,
                                                      pod_ns: Netns, server: Netns,
                                                      scratch_dir: Path) -> None:
    """CHECK looks at the pod, not only at libcni's cache."""
    cnitool.write_conf(conflist(version, BUSINESS, {
        "type": "macvlan", "master": MASTER, "ipam": host_local(scratch_dir / "ipam")}))
    add(cnitool, BUSINESS, pod_ns, IFNAME, version)
    pod_ns.run("ip", "addr", "del", FIRST, "dev", IFNAME)

    message = cnitool("check", BUSINESS, pod_ns.path, ifname=IFNAME).failed()

    assert "192.168.100.10" in message, message
    delete(cnitool, BUSINESS, pod_ns, IFNAME)
    assert_gone(pod_ns)


# --- macvlan with static ---------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_macvlan_with_static(version: str, cnitool: CniTool, host_ns: Netns, pod_ns: Netns,
                             server: Netns, scratch_dir: Path) -> None:
    """static hands out exactly its configured address and routes; nothing to release."""
    cnitool.write_conf(conflist(version, "mgmt-static", {
        "type": "macvlan", "master": MASTER, "mode": "private",
        "ipam": {"type": "static",
                 "addresses": [{"address": "192.168.100.50/24", "gateway": GATEWAY}],
                 "routes": [{"dst": "10.99.0.0/16", "gw": GATEWAY}]}}))
    node_links = links(host_ns)

    result = add(cnitool, "mgmt-static", pod_ns, IFNAME, version)

    net1 = details(pod_ns, IFNAME)
    assert net1["linkinfo"]["info_kind"] == "macvlan"
    assert net1["linkinfo"]["info_data"]["mode"] == "private"
    assert net1["mtu"] == host_ns.link(MASTER)["mtu"]  # no `mtu`: the master's
    assert addresses(pod_ns, IFNAME) == ["192.168.100.50/24"]
    routes = pod_ns.ip_json("-4", "route", "show", "10.99.0.0/16")
    assert [(r["dst"], r["gateway"], r["dev"]) for r in routes] == [
        ("10.99.0.0/16", GATEWAY, IFNAME)]
    assert pod_interface(result, pod_ns, IFNAME) == {
        "name": IFNAME, "mac": net1["address"], "sandbox": pod_ns.path}
    assert_ips(result, version, [("192.168.100.50/24", GATEWAY)])
    assert result["routes"] == [{"dst": "10.99.0.0/16", "gw": GATEWAY}]
    assert ping(pod_ns, GATEWAY)

    check(cnitool, "mgmt-static", pod_ns, IFNAME, version)

    delete(cnitool, "mgmt-static", pod_ns, IFNAME)
    assert_gone(pod_ns)
    assert links(host_ns) == node_links
    delete(cnitool, "mgmt-static", pod_ns, IFNAME)


# --- ipvlan and vlan (where the kernel has their modules) ------------------------------------

SUBLINKS = {
    "ipvlan": ({"mode": "l2"}, {"mode": "l2"}),
    "vlan": ({"vlanId": 100}, {"protocol": "802.1Q", "id": 100}),
}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("link_kind", sorted(SUBLINKS))
def test_ipvlan_and_vlan(link_kind: str, version: str, missing_kinds: dict[str, str],
                         cnitool: CniTool, host_ns: Netns, pod_ns: Netns, server: Netns,
                         scratch_dir: Path) -> None:
    """The link on `eth1` in the pod, with the master's MAC; its kind's data as asked."""
    if link_kind in missing_kinds:
        pytest.skip(missing_kinds[link_kind])
    keys, info_data = SUBLINKS[link_kind]
    ipam_dir = scratch_dir / "ipam"
    cnitool.write_conf(conflist(version, BUSINESS, {
        "type": link_kind, "master": MASTER, "mtu": 1400, **keys,
        "ipam": host_local(ipam_dir)}))
    node_links = links(host_ns)
    master_mac = host_ns.link(MASTER)["address"]

    result = add(cnitool, BUSINESS, pod_ns, IFNAME, version)

    net1 = details(pod_ns, IFNAME)
    assert net1["linkinfo"]["info_kind"] == link_kind
    assert info_data.items() <= net1["linkinfo"]["info_data"].items(), net1["linkinfo"]
    assert net1["link_index"] == host_ns.link(MASTER)["ifindex"], "not on the master"
    assert (net1["mtu"], net1["address"]) == (1400, master_mac) and "UP" in net1["flags"]
    assert addresses(pod_ns, IFNAME) == [FIRST]
    assert pod_interface(result, pod_ns, IFNAME) == {"name": IFNAME, "mac": master_mac,
                                                    "sandbox": pod_ns.path}
    assert_ips(result, version, [(FIRST, GATEWAY)])
    assert host_local_allocations(ipam_dir, BUSINESS) == {
        "192.168.100.10": cnitool.container_id}
    if link_kind == "ipvlan":  # the server is on the untagged segment
        assert ping(pod_ns, GATEWAY)

    check(cnitool, BUSINESS, pod_ns, IFNAME, version)

    delete(cnitool, BUSINESS, pod_ns, IFNAME)
    assert_gone(pod_ns)
    assert links(host_ns) == node_links
    assert host_local_allocations(ipam_dir, BUSINESS) == {}
    delete(cnitool, BUSINESS, pod_ns, IFNAME)


# --- host-device -----------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_host_device(version: str, cnitool: CniTool, host_ns: Netns, pod_ns: Netns,
                     netns_factory: NetnsFactory, scratch_dir: Path) -> None:
    """`eth2` (down, as a spare NIC) moves into the pod as net1 and comes back as it was."""
    management = netns_factory("server")
    mac = wire_nic(host_ns, management, "eth2", "srv0", peer_addresses=("10.0.0.100/24",),
                   up=False)
    ipam_dir, state_dir = scratch_dir / "ipam", scratch_dir / "host-device"
    cnitool.write_conf(conflist(version, "mgmt", {
        "type": "host-device", "device": "eth2", "mtu": 1400, "dataDir": str(state_dir),
        "ipam": host_local(ipam_dir, "10.0.0.0/24", "10.0.0.10", "10.0.0.1")}))
    node_links = links(host_ns)

    result = add(cnitool, "mgmt", pod_ns, IFNAME, version)

    assert "eth2" not in links(host_ns)
    net1 = pod_ns.link(IFNAME)
    assert (net1["address"], net1["mtu"], net1.get("ifalias")) == (mac, 1400, "eth2")
    assert "UP" in net1["flags"]
    assert addresses(pod_ns, IFNAME) == ["10.0.0.10/24"]
    # 1.1.0 adds the interface's `mtu`; libcni 1.1.2 drops it (cnitool's shim)
    assert pod_interface(result, pod_ns, IFNAME) == {"name": IFNAME, "mac": mac,
                                                    "sandbox": pod_ns.path}
    assert_ips(result, version, [("10.0.0.10/24", "10.0.0.1")])
    assert files(state_dir) == [f"mgmt/{cnitool.container_id}:{IFNAME}"]
    assert host_local_allocations(ipam_dir, "mgmt") == {"10.0.0.10": cnitool.container_id}
    assert ping(pod_ns, "10.0.0.100"), "the moved device does not reach its segment"

    check(cnitool, "mgmt", pod_ns, IFNAME, version)

    delete(cnitool, "mgmt", pod_ns, IFNAME)
    assert_gone(pod_ns)
    assert links(host_ns) == node_links
    eth2 = host_ns.link("eth2")
    assert (eth2["address"], eth2["mtu"], eth2.get("ifalias")) == (mac, 1500, None)
    assert "UP" not in eth2["flags"], "the device came back up; it was down"
    assert files(state_dir) == [] and host_local_allocations(ipam_dir, "mgmt") == {}
    delete(cnitool, "mgmt", pod_ns, IFNAME)


# --- sriov (a fake sysfs tree and PF, passed on by libcni's environment) ---------------------

VF_NETDEVS = [f"eth2v{n}" for n in range(len(sriovlib.VF_ADDRESSES))]


@pytest.mark.parametrize("version", VERSIONS)
def test_sriov(version: str, cnitool: CniTool, host_ns: Netns, pod_ns: Netns,
               netns_factory: NetnsFactory, scratch_dir: Path) -> None:
    """The VF named by the device plugin (capability `deviceID`, CAP_ARGS) moves into the
    pod with its VLAN set on the PF; DEL gives it back and restores the PF's settings."""
    storage = netns_factory("server")
    storage.run("ip", "link", "add", "br0", "type", "bridge")
    storage.run("ip", "addr", "add", "172.16.1.1/16", "dev", "br0")
    storage.run("ip", "link", "set", "br0", "up")
    for number, netdev in enumerate(VF_NETDEVS):  # spare VFs: down on the node
        wire_nic(host_ns, storage, netdev, f"srv{number}", up=False)
        storage.run("ip", "link", "set", f"srv{number}", "master", "br0")
    sriovlib.build_sysfs(scratch_dir / "sys", VF_NETDEVS)
    pf_file, state_dir = scratch_dir / "pf.json", scratch_dir / "sriov"
    sriovlib.write_pf(pf_file)
    env = {"PYCNI_SYSFS_ROOT": str(scratch_dir / "sys"), "PYCNI_SRIOV_FAKE_PF": str(pf_file),
           "PYCNI_SRIOV_DATA_DIR": str(state_dir),
           "CAP_ARGS": json.dumps({"deviceID": sriovlib.VF_ADDRESSES[2]})}
    ipam_dir = scratch_dir / "ipam"
    cnitool.write_conf(conflist(version, "storage", {
        "type": "sriov", "vlan": 200, "capabilities": {"deviceID": True},
        "ipam": host_local(ipam_dir, "172.16.0.0/16", "172.16.1.10", "172.16.1.1")}))
    node = {item["ifname"]: item["address"] for item in host_ns.ip_json("link")}
    mac = node["eth2v2"]

    result = add(cnitool, "storage", pod_ns, IFNAME, version, **env)

    assert "eth2v2" not in links(host_ns)
    net1 = pod_ns.link(IFNAME)
    assert net1["address"] == mac and "UP" in net1["flags"]
    assert addresses(pod_ns, IFNAME) == ["172.16.1.10/16"]
    vfs = sriovlib.read_pf(pf_file)
    assert vfs[2]["vlan"] == 200
    assert all(vfs[n] == sriovlib.DEFAULT_VF for n in (0, 1, 3))
    # 1.1.0 adds `mtu` and `pciID`; libcni 1.1.2 drops them (cnitool's shim)
    assert pod_interface(result, pod_ns, IFNAME) == {"name": IFNAME, "mac": mac,
                                                    "sandbox": pod_ns.path}
    assert_ips(result, version, [("172.16.1.10/16", "172.16.1.1")])
    assert sriovlib.VF_ADDRESSES[2] in " ".join(files(state_dir)), files(state_dir)
    assert host_local_allocations(ipam_dir, "storage") == {"172.16.1.10": cnitool.container_id}
    assert ping(pod_ns, "172.16.1.1")

    check(cnitool, "storage", pod_ns, IFNAME, version, **env)

    delete(cnitool, "storage", pod_ns, IFNAME, **env)
    assert_gone(pod_ns)
    assert {item["ifname"]: item["address"] for item in host_ns.ip_json("link")} == node
    assert "UP" not in host_ns.link("eth2v2")["flags"]
    assert sriovlib.read_pf(pf_file) == {n: sriovlib.DEFAULT_VF for n in range(4)}
    assert files(state_dir) == [] and host_local_allocations(ipam_dir, "storage") == {}
    delete(cnitool, "storage", pod_ns, IFNAME, **env)


# --- tuning chained after macvlan ------------------------------------------------------------

# Every version of tuning runs in the three-plugin chain below; here, behind macvlan, with its
# link keys, the version whose prevResult passes through cnitool's 1.1.0 shim.
@pytest.mark.parametrize("version", ["1.1.0"])
def test_tuning_after_macvlan(version: str, cnitool: CniTool, host_ns: Netns, pod_ns: Netns,
                              server: Netns, scratch_dir: Path) -> None:
    """tuning gets macvlan's result as prevResult, changes the interface and reports the new
    MAC in the result it passes on; DEL restores the pod's sysctls."""
    ipam_dir, tuning_dir = scratch_dir / "ipam", scratch_dir / "tuning"
    env = {"PYCNI_TUNING_ALLOWLIST": str(scratch_dir / "no-allowlist.conf")}
    cnitool.write_conf(conflist(
        version, BUSINESS,
        {"type": "macvlan", "master": MASTER, "ipam": host_local(ipam_dir)},
        {"type": "tuning", "dataDir": str(tuning_dir), "mac": TUNED_MAC, "mtu": 1300,
         "promisc": True, "txQLen": 321,
         "sysctl": {"net.ipv4.conf.IFNAME.arp_filter": "1", "net.core.somaxconn": "512"}}))
    somaxconn = sysctl(pod_ns, "net.core.somaxconn")
    assert somaxconn != "512"

    result = add(cnitool, BUSINESS, pod_ns, IFNAME, version, **env)

    net1 = details(pod_ns, IFNAME)
    assert net1["linkinfo"]["info_kind"] == "macvlan"
    assert (net1["address"], net1["mtu"], net1["txqlen"]) == (TUNED_MAC, 1300, 321)
    assert "PROMISC" in net1["flags"]
    assert sysctl(pod_ns, f"net.ipv4.conf.{IFNAME}.arp_filter") == "1"
    assert sysctl(pod_ns, "net.core.somaxconn") == "512"
    assert pod_interface(result, pod_ns, IFNAME)["mac"] == TUNED_MAC
    assert_ips(result, version, [(FIRST, GATEWAY)])  # macvlan's, passed on by tuning
    cached = json.loads(cnitool.result_cache(BUSINESS, IFNAME).read_text())["result"]
    assert cached["interfaces"][0]["mac"] == TUNED_MAC
    assert files(tuning_dir) == [f"{BUSINESS}/{cnitool.container_id}_{IFNAME}"]
    assert ping(pod_ns, GATEWAY)

    check(cnitool, BUSINESS, pod_ns, IFNAME, version, **env)

    delete(cnitool, BUSINESS, pod_ns, IFNAME, **env)
    assert_gone(pod_ns)
    assert sysctl(pod_ns, "net.core.somaxconn") == somaxconn
    assert files(tuning_dir) == [] and host_local_allocations(ipam_dir, BUSINESS) == {}
    delete(cnitool, BUSINESS, pod_ns, IFNAME, **env)


# --- three plugins: bridge -> tuning -> bandwidth --------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_bridge_tuning_bandwidth(version: str, cnitool: CniTool, host_ns: Netns,
                                 pod_ns: Netns, scratch_dir: Path) -> None:
    """Each plugin gets the one before's result: tuning changes the MAC in bridge's result,
    bandwidth finds the pod's host veth in tuning's; the final result carries both."""
    ipam_dir, tuning_dir = scratch_dir / "ipam", scratch_dir / "tuning"
    env = {"PYCNI_TUNING_ALLOWLIST": str(scratch_dir / "no-allowlist.conf")}
    conf = bridge_conflist(version, ipam_dir)
    conf["plugins"] += [
        {"type": "tuning", "dataDir": str(tuning_dir), "mac": TUNED_MAC,
         "sysctl": {"net.core.somaxconn": "512"}},
        {"type": "bandwidth", **SHAPING}]
    cnitool.write_conf(conf)
    network, ifname = conf["name"], "eth0"
    somaxconn = sysctl(pod_ns, "net.core.somaxconn")

    result = add(cnitool, network, pod_ns, ifname, version, **env)

    bridge, veth, inside = result["interfaces"]
    assert bridge["name"] == BRIDGE and veth["name"].startswith("veth")
    assert inside == {"name": ifname, "mac": TUNED_MAC, "sandbox": pod_ns.path}
    assert pod_ns.link(ifname)["address"] == TUNED_MAC
    assert [(ip["address"], ip["interface"]) for ip in result["ips"]] == [("10.22.0.2/24", 2)]
    assert sysctl(pod_ns, "net.core.somaxconn") == "512"
    assert host_ns.link(veth["name"])["master"] == BRIDGE
    # to the pod: a tbf on its host end; from the pod: redirected to an IFB, shaped there
    on_veth = qdiscs(host_ns, veth["name"])
    assert "ingress" in on_veth
    assert on_veth["tbf"]["rate"] * 8 == SHAPING["ingressRate"]
    [ifb] = ifbs(host_ns)
    assert ifb["ifalias"] == f"{cnitool.container_id}/{ifname}"
    assert qdiscs(host_ns, ifb["ifname"])["tbf"]["rate"] * 8 == SHAPING["egressRate"]
    assert files(tuning_dir) == [f"{network}/{cnitool.container_id}_{ifname}"]
    assert host_local_allocations(ipam_dir, network) == {"10.22.0.2": cnitool.container_id}

    check(cnitool, network, pod_ns, ifname, version, **env)

    delete(cnitool, network, pod_ns, ifname, **env)
    assert_gone(pod_ns, ifname)
    assert ifbs(host_ns) == [], "the IFB outlived DEL"
    assert links(host_ns) == sorted(["lo", BRIDGE]), "the host veth outlived DEL"
    assert sysctl(pod_ns, "net.core.somaxconn") == somaxconn
    assert files(tuning_dir) == [] and host_local_allocations(ipam_dir, network) == {}
    delete(cnitool, network, pod_ns, ifname, **env)


def test_bandwidth_after_macvlan_fails_and_del_cleans_up(cnitool: CniTool, host_ns: Netns,
                                                         pod_ns: Netns, server: Netns,
                                                         scratch_dir: Path) -> None:
    """macvlan has no host end to shape: bandwidth's ADD fails naming the interface, libcni
    caches nothing, and the runtime's DEL removes what macvlan made."""
    ipam_dir = scratch_dir / "ipam"
    cnitool.write_conf(conflist(
        "1.0.0", BUSINESS,
        {"type": "macvlan", "master": MASTER, "ipam": host_local(ipam_dir)},
        {"type": "bandwidth", **SHAPING}))

    message = cnitool("add", BUSINESS, pod_ns.path, ifname=IFNAME).failed()

    assert IFNAME in message and "veth" in message, message
    assert not cnitool.result_cache(BUSINESS, IFNAME).exists()
    assert ifbs(host_ns) == []
    delete(cnitool, BUSINESS, pod_ns, IFNAME)
    assert_gone(pod_ns)
    assert host_local_allocations(ipam_dir, BUSINESS) == {}
