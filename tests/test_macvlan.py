"""macvlan in sandbox namespaces: the users' business network, every key, every spec version.

The sandbox node has `eth1` (10.0.0.10/24), a veth end standing for the business NIC; its
peer sits in a "business server" namespace (10.0.0.100/24, and 192.168.100.1/16: the pods'
gateway in the seed NetworkAttachmentDefinition). The plugin runs as a process inside the
node's namespace with CNI_PATH holding every pycni type, so host-local runs as a real
delegate. The machine's own namespace is never touched.

ipvlan and vlan share the `Business` helpers below (tests/test_ipvlan_vlan.py).
"""

from __future__ import annotations

import ipaddress
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pycni import spec
from tests.conftest import PYCNI, REPO, Netns, NetnsFactory, Outcome, cni_env, run_exec

SEED = REPO / "tests" / "seeds" / "nad-business-network.macvlan.json"
NODE_ADDRESS, SERVER_ADDRESS = "10.0.0.10/24", "10.0.0.100/24"
GATEWAY = "192.168.100.1"  # on the server, as the seed's IPAM says
FIRST, SECOND = "192.168.100.10/16", "192.168.100.11/16"


# --- the sandbox business network ------------------------------------------------------------

@dataclass
class Business:
    """The sandbox node with its business NIC `eth1`, the server behind it, pods on demand."""

    host: Netns
    server: Netns
    namespaces: NetnsFactory
    cni_bin: Path
    data_dir: Path

    def pod(self, role: str = "pod") -> Netns:
        return self.namespaces(role)

    def seed(self, name: str = "business-network") -> dict[str, Any]:
        """The seed NAD as Multus hands it over: its name added, host-local's files in tmp."""
        conf: dict[str, Any] = json.loads(SEED.read_text())
        conf["name"] = name
        conf["ipam"]["dataDir"] = str(self.data_dir)
        return conf

    def conf(self, version: str = "1.0.0", plugin: str = "macvlan", ipam: bool = True,
             **keys: Any) -> dict[str, Any]:
        conf = {**self.seed(), "cniVersion": version, "type": plugin, **keys}
        if not ipam:
            del conf["ipam"]
        return conf

    def run(self, command: str, conf: dict[str, Any], pod: Netns | None = None,
            cid: str = "ctr-1", ifname: str = "net1", netns: str | None = None,
            **env: str) -> Outcome:
        """Run the config's plugin in the node's namespace (`netns` overrides CNI_NETNS)."""
        path = netns if netns is not None else (pod.path if pod else "")
        return run_exec([*PYCNI, conf["type"]],
                        cni_env(command, path, ifname=ifname, container_id=cid,
                                path=str(self.cni_bin), **env),
                        conf, in_ns=self.host)

    def add(self, conf: dict[str, Any], pod: Netns, cid: str = "ctr-1", **env: str) -> Any:
        return self.run("ADD", conf, pod, cid, **env).ok()

    def check(self, conf: dict[str, Any], result: Any, pod: Netns,
              cid: str = "ctr-1") -> Outcome:
        """CHECK with the ADD result as prevResult, as a runtime does."""
        return self.run("CHECK", {**conf, "prevResult": result}, pod, cid)

    def delete(self, conf: dict[str, Any], pod: Netns | None, cid: str = "ctr-1") -> None:
        self.run("DEL", conf, pod, cid).ok()

    def allocations(self, network: str = "business-network") -> dict[str, str]:
        """host-local's files: address -> the container holding it."""
        held = {}
        directory = self.data_dir / network
        for path in directory.iterdir() if directory.exists() else []:
            try:
                ipaddress.ip_address(path.name.replace("_", ":"))
            except ValueError:
                continue
            held[path.name] = path.read_text().splitlines()[0].strip()
        return held


def wire(host: Netns, server: Netns) -> None:
    """`eth1` on the node, its peer `eth0` in the server: one L2 segment."""
    host.run("ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth0",
             "netns", server.name)
    host.run("ip", "addr", "add", NODE_ADDRESS, "dev", "eth1")
    host.run("ip", "link", "set", "eth1", "up")
    for cidr in (SERVER_ADDRESS, f"{GATEWAY}/16"):
        server.run("ip", "addr", "add", cidr, "dev", "eth0")
    server.run("ip", "link", "set", "eth0", "up")
    server.run("ip", "link", "set", "lo", "up")


def business_network(host: Netns, namespaces: NetnsFactory, cni_bin: Path,
                     tmp_path: Path) -> Business:
    server = namespaces("server")
    wire(host, server)
    return Business(host, server, namespaces, cni_bin, tmp_path / "ipam")


@pytest.fixture
def business(host_ns: Netns, netns_factory: NetnsFactory, cni_bin: Path,
             tmp_path: Path) -> Business:
    return business_network(host_ns, netns_factory, cni_bin, tmp_path)


def details(netns: Netns, name: str) -> dict[str, Any]:
    found = netns.ip_json("-d", "link", "show", "dev", name)
    assert found, f"no link {name} in {netns.name}"
    return found[0]  # type: ignore[no-any-return]


def links(netns: Netns) -> list[str]:
    return [link["ifname"] for link in netns.ip_json("link")]


def addresses(netns: Netns, dev: str) -> list[str]:
    found = netns.ip_json("addr", "show", "dev", dev)
    return [f"{a['local']}/{a['prefixlen']}" for a in found[0]["addr_info"]
            if a.get("scope") == "global"]


def ping(pod: Netns, address: str) -> bool:
    return pod.run("ping", "-c1", "-w8", address, check=False).returncode == 0


def unreachable(pod: Netns, address: str) -> bool:
    return pod.run("ping", "-c1", "-W1", address, check=False).returncode != 0


def nothing_left(business: Business, pod: Netns) -> None:
    """A failed ADD leaves no link in the pod or on the node and no address allocated."""
    assert links(pod) == ["lo"]
    assert sorted(links(business.host)) == ["eth1", "lo"]
    assert business.allocations() == {}


# --- the users' business network -------------------------------------------------------------

def test_seed_business_network(business: Business) -> None:
    """The seed NAD unchanged (name and dataDir added): the first pod gets 192.168.100.10
    and reaches the business server through its gateway; the server learns the pod's MAC
    from the gratuitous ARP sent when the link came up, before the pod sends anything."""
    business.server.run("sysctl", "-w", "net.ipv4.conf.eth0.arp_accept=1")
    conf = business.seed()
    pod = business.pod()
    result = business.add(conf, pod)

    net1 = details(pod, "net1")
    assert result["cniVersion"] == "0.3.1"
    assert result["interfaces"] == [{"name": "net1", "mac": net1["address"],
                                     "sandbox": pod.path}]
    assert result["ips"] == [{"version": "4", "interface": 0, "address": FIRST,
                              "gateway": GATEWAY}]
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": GATEWAY}]
    assert net1["linkinfo"]["info_kind"] == "macvlan"
    assert net1["linkinfo"]["info_data"]["mode"] == "bridge"
    assert net1["mtu"] == 1500 and "UP" in net1["flags"]
    assert addresses(pod, "net1") == [FIRST]
    assert pod.run("sysctl", "-n", "net.ipv4.conf.net1.arp_notify").stdout.strip() == "1"
    assert pod.run("sysctl", "-n", "net.ipv6.conf.net1.ndisc_notify").stdout.strip() == "1"
    assert business.allocations() == {"192.168.100.10": "ctr-1"}

    learned = []
    for _ in range(50):  # the announcement is sent as the link comes up; give it a moment
        learned = business.server.ip_json("neigh", "show", FIRST.split("/")[0])
        if learned and learned[0].get("lladdr"):
            break
        time.sleep(0.1)
    assert learned and learned[0]["lladdr"] == net1["address"]

    assert ping(pod, SERVER_ADDRESS.split("/")[0])
    business.run("CHECK", {**conf, "prevResult": result}, pod).error(1)  # 0.3.1: no CHECK
    business.delete(conf, pod)
    assert links(pod) == ["lo"] and business.allocations() == {}


@pytest.mark.parametrize(("mode", "pods_meet"), [("bridge", True), ("private", False)])
def test_two_pods_by_mode(mode: str, pods_meet: bool, business: Business) -> None:
    """Bridge mode switches between pods on one master; private mode keeps them apart.
    Both reach the business server either way."""
    conf = business.conf(mode=mode)
    first, second = business.pod("pod-a"), business.pod("pod-b")
    business.add(conf, first, cid="pod-a")
    business.add(conf, second, cid="pod-b")
    assert addresses(first, "net1") == [FIRST] and addresses(second, "net1") == [SECOND]
    assert details(second, "net1")["linkinfo"]["info_data"]["mode"] == mode

    other = SECOND.split("/")[0]
    if pods_meet:
        assert ping(first, other)
    else:
        assert unreachable(first, other)
    assert ping(second, SERVER_ADDRESS.split("/")[0])
    business.delete(conf, first, cid="pod-a")
    business.delete(conf, second, cid="pod-b")
    assert business.allocations() == {}


# --- every version, every key ----------------------------------------------------------------

@pytest.mark.parametrize("version", spec.ALL)
def test_add_check_del_every_version(version: str, business: Business) -> None:
    dns = {"nameservers": ["192.168.100.53"]}
    conf = business.conf(version, mode="vepa", mtu=1400, bcqueuelen=300, dns=dns,
                         runtimeConfig={"mac": "0a:58:c0:a8:64:0a"})
    pod = business.pod()
    result = business.add(conf, pod)

    net1 = details(pod, "net1")
    assert net1["mtu"] == 1400
    assert net1["address"] == "0a:58:c0:a8:64:0a"
    assert net1["linkinfo"]["info_kind"] == "macvlan"
    assert net1["linkinfo"]["info_data"]["mode"] == "vepa"
    assert net1["linkinfo"]["info_data"]["bcqueuelen"] == 300
    assert addresses(pod, "net1") == [FIRST]
    assert any(r["dst"] == "default" and r["gateway"] == GATEWAY
               for r in pod.ip_json("-4", "route"))
    assert result["cniVersion"] == version
    assert result["dns"] == dns
    if spec.at_least(version, "0.3.0"):
        assert result["interfaces"] == [{"name": "net1", "mac": "0a:58:c0:a8:64:0a",
                                         "sandbox": pod.path}]
        assert [(ip["address"], ip["gateway"], ip["interface"]) for ip in result["ips"]] == [
            (FIRST, GATEWAY, 0)]
        assert all(("version" in ip) == (not spec.at_least(version, "1.0.0"))
                   for ip in result["ips"])
    else:
        assert result["ip4"] == {"ip": FIRST, "gateway": GATEWAY,
                                 "routes": [{"dst": "0.0.0.0/0", "gw": GATEWAY}]}

    check = business.check(conf, result, pod)
    if spec.at_least(version, "0.4.0"):
        assert check.ok() is None
    else:
        check.error(1)

    for _ in range(2):  # DEL, then DEL again
        business.delete(conf, pod)
        assert links(pod) == ["lo"] and business.allocations() == {}
    assert sorted(links(business.host)) == ["eth1", "lo"]


def test_passthru_l2_only(business: Business) -> None:
    """passthru (the other modes are taken by the tests above): the one macvlan of the
    master, L2 only here."""
    conf = business.conf(mode="passthru", ipam=False)
    pod = business.pod()
    result = business.add(conf, pod)
    assert details(pod, "net1")["linkinfo"]["info_data"]["mode"] == "passthru"
    business.check(conf, result, pod).ok()
    business.delete(conf, pod)


def test_mac_sources_in_order(business: Business) -> None:
    """CNI_ARGS MAC, then args.cni.mac, then runtimeConfig.mac: the later wins."""
    macs = {"args": "0a:00:00:00:00:01", "cni": "0a:00:00:00:00:02",
            "runtime": "0a:00:00:00:00:03"}
    in_args_cni = {"args": {"cni": {"mac": macs["cni"]}}}
    layers: list[tuple[dict[str, Any], str]] = [
        ({}, macs["args"]),
        (in_args_cni, macs["cni"]),
        ({**in_args_cni, "runtimeConfig": {"mac": macs["runtime"]}}, macs["runtime"])]
    for keys, wanted in layers:
        conf = business.conf(ipam=False, **keys)
        pod = business.pod()
        result = business.run("ADD", conf, pod,
                              CNI_ARGS=f"IgnoreUnknown=1;MAC={macs['args']}").ok()
        assert result["interfaces"][0]["mac"] == wanted == details(pod, "net1")["address"]
        business.delete(conf, pod)


def test_default_master_is_the_default_route_interface(business: Business) -> None:
    business.host.run("ip", "route", "add", "default", "via", "10.0.0.100", "dev", "eth1")
    conf = business.conf()
    del conf["master"]
    pod = business.pod()
    result = business.add(conf, pod)
    assert ping(pod, SERVER_ADDRESS.split("/")[0])  # so it sits on eth1
    business.check(conf, result, pod).ok()
    business.delete(conf, pod)


def test_link_in_container(business: Business) -> None:
    """The master lives in the pod (`linkInContainer`); without `master`, the pod's default
    route interface is taken."""
    pod = business.pod()
    pod.run("ip", "link", "add", "ens9", "type", "veth", "peer", "name", "ens9-peer")
    for name in ("ens9", "ens9-peer"):
        pod.run("ip", "link", "set", name, "up")
    pod.run("ip", "addr", "add", "10.7.0.2/24", "dev", "ens9")
    pod.run("ip", "route", "add", "default", "via", "10.7.0.1", "dev", "ens9")
    for master in ({"master": "ens9"}, {}):
        conf = business.conf(linkInContainer=True, ipam=False, **master)
        if not master:
            del conf["master"]
        result = business.add(conf, pod)
        assert details(pod, "net1")["link"] == "ens9"
        assert result["interfaces"] == [{"name": "net1", "mac": details(pod, "net1")["address"],
                                         "sandbox": pod.path}]
        business.check(conf, result, pod).ok()
        # the node's eth1 is no master in the pod
        missing = business.check({**conf, "master": "eth1"}, result, pod).error(7)
        assert "eth1" in missing["msg"]
        business.delete(conf, pod)
        assert "net1" not in links(pod)
    assert sorted(links(business.host)) == ["eth1", "lo"]


def test_l2_only(business: Business) -> None:
    """Without ipam the link comes up without addresses; the result has the interface only.
    Results below 0.3.0 cannot say that: refused before anything is created."""
    conf = business.conf(ipam=False)
    pod = business.pod()
    result = business.add(conf, pod)
    assert set(result) == {"cniVersion", "interfaces"} or result.get("ips", []) == []
    assert "UP" in details(pod, "net1")["flags"]
    assert addresses(pod, "net1") == []
    business.check(conf, result, pod).ok()
    business.delete(conf, pod)

    business.run("ADD", {**conf, "cniVersion": "0.2.0"}, pod).error(1)
    nothing_left(business, pod)


# --- DEL forgives ----------------------------------------------------------------------------

def test_del_with_the_pod_namespace_gone(business: Business) -> None:
    conf = business.conf()
    pod = business.pod()
    business.add(conf, pod)
    path = pod.path
    business.namespaces.remove(pod)
    assert business.allocations() == {"192.168.100.10": "ctr-1"}
    business.run("DEL", conf, netns=path).ok()
    assert business.allocations() == {}
    business.run("DEL", conf, netns="").ok()  # and without CNI_NETNS at all


def test_del_after_the_master_was_deleted(business: Business) -> None:
    conf = business.conf()
    pod = business.pod()
    business.add(conf, pod)
    business.host.run("ip", "link", "del", "eth1")  # its macvlans go with it
    assert links(pod) == ["lo"]
    business.delete(conf, pod)
    business.delete(conf, pod)
    assert business.allocations() == {}


# --- bad input: the code, and nothing created ------------------------------------------------

@pytest.mark.parametrize(("keys", "says"), [
    ({"master": "eth9"}, "eth9"),
    ({"master": ""}, "master"),  # no master and no default route on the node
    ({"mtu": 9000}, "1500"),
    ({"mtu": -1}, "MTU"),
    ({"mode": "hub"}, "hub"),
    ({"runtimeConfig": {"mac": "0a:00:00:00:01"}}, "MAC"),
    ({"bcqueuelen": -1}, "bcqueuelen"),
], ids=["unknown-master", "no-master", "mtu-above-master", "negative-mtu", "bad-mode",
        "bad-mac", "bad-bcqueuelen"])
def test_bad_config_is_code_7_and_creates_nothing(keys: dict[str, Any], says: str,
                                                  business: Business) -> None:
    pod = business.pod()
    error = business.run("ADD", business.conf(**keys), pod).error(7)
    assert says in error["msg"]
    nothing_left(business, pod)


def test_taken_name_rolls_back(business: Business) -> None:
    """A second attachment under a name the pod already has fails; the first stays and the
    second's address is given back."""
    conf = business.conf()
    pod = business.pod()
    result = business.add(conf, pod, cid="first")
    failed = business.run("ADD", conf, pod, cid="second")
    assert failed.status == 1 and "net1" in failed.json()["msg"]
    assert links(pod) == ["lo", "net1"]
    assert business.allocations() == {"192.168.100.10": "first"}
    business.check(conf, result, pod, cid="first").ok()
    business.delete(conf, pod, cid="first")


def test_check_finds_what_changed(business: Business) -> None:
    conf = business.conf()
    pod = business.pod()
    result = business.add(conf, pod)
    business.run("CHECK", conf, pod).error(7)  # no prevResult: a config the runtime got wrong
    other_mode = business.check({**conf, "mode": "private"}, result, pod).error(999)
    assert "mode" in other_mode["msg"]
    pod.run("ip", "addr", "del", FIRST, "dev", "net1")
    assert "192.168.100.10" in business.check(conf, result, pod).error(999)["msg"]
    business.delete(conf, pod)


def test_status_and_gc_reach_ipam(business: Business) -> None:
    conf = business.conf("1.1.0")
    pod = business.pod()
    business.add(conf, pod)
    assert business.run("STATUS", conf).ok() is None
    business.run("GC", {**conf, "cni.dev/valid-attachments": [
        {"containerID": "ctr-1", "ifname": "net1"}]}).ok()
    assert business.allocations() == {"192.168.100.10": "ctr-1"}
    business.run("GC", {**conf, "cni.dev/valid-attachments": []}).ok()
    assert business.allocations() == {}
    business.delete(conf, pod)
