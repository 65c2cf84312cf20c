"""bridge in sandbox namespaces: every key, every spec version, IPv4, IPv6 and dual stack.

The plugin runs as a real process inside a sandbox "host" namespace standing for the node,
with CNI_PATH holding every pycni type, so host-local runs as a real delegate. Pods are more
namespaces; an "outside" server is one more, wired to the host namespace by a veth pair made
inside those namespaces. The machine's own namespace is never touched.

Cleanup, failures, CHECK, GC, STATUS, spoof check and the cnv-bridge seed are in
test_bridge_lifecycle.py, which shares the `Node` helpers below.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pycni import spec
from tests.conftest import PYCNI, Netns, NetnsFactory, Outcome, cni_env, run_exec

SUBNET4, GATEWAY4 = "10.22.0.0/24", "10.22.0.1"
SUBNET6, GATEWAY6 = "fd22::/64", "fd22::1"
NODE_ADDRESS, OUTSIDE_ADDRESS = "192.0.2.1", "192.0.2.2"  # the outside link (TEST-NET-1)


# --- the sandbox node ------------------------------------------------------------------------

@dataclass
class Node:
    """The sandbox node: its namespace, CNI_PATH and IPAM data directory; pods on demand."""

    host: Netns
    namespaces: NetnsFactory
    cni_bin: Path
    data_dir: Path

    def pod(self, role: str = "pod") -> Netns:
        return self.namespaces(role)

    def conf(self, version: str = "1.0.0", subnets: tuple[str, ...] = (SUBNET4,),
             name: str = "net1", **keys: Any) -> dict[str, Any]:
        """A bridge config; host-local over `subnets` (one range set each), none if empty."""
        conf: dict[str, Any] = {"cniVersion": version, "name": name, "type": "bridge", **keys}
        if subnets:
            conf["ipam"] = {"type": "host-local", "dataDir": str(self.data_dir),
                            "ranges": [[{"subnet": subnet}] for subnet in subnets]}
        return conf

    def run(self, command: str, conf: Any, pod: Netns | None = None, cid: str = "ctr-1",
            ifname: str = "eth0", program: str | None = None, **env: str) -> Outcome:
        """Run bridge (or `program`, a file on CNI_PATH) in the host namespace."""
        argv = [program] if program else [*PYCNI, "bridge"]
        return run_exec(argv, cni_env(command, pod.path if pod else "", ifname=ifname,
                                      container_id=cid, path=str(self.cni_bin), **env),
                        conf, in_ns=self.host)

    def add(self, conf: Any, pod: Netns, cid: str = "ctr-1", **env: str) -> Any:
        return self.run("ADD", conf, pod, cid, **env).ok()

    def check(self, conf: dict[str, Any], result: Any, pod: Netns,
              cid: str = "ctr-1") -> Outcome:
        """CHECK with the ADD result as prevResult, as a runtime does."""
        return self.run("CHECK", {**conf, "prevResult": result}, pod, cid)

    def delete(self, conf: Any, pod: Netns | None, cid: str = "ctr-1") -> None:
        self.run("DEL", conf, pod, cid).ok()

    def allocations(self, network: str = "net1") -> dict[str, str]:
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

    def rules(self) -> str:
        """Every firewall rule of the host namespace, both tools' views."""
        return "\n".join(self.host.run(*cmd, check=False).stdout for cmd in (
            ("iptables-save",), ("ip6tables-save",), ("nft", "list", "ruleset")))

    def spoof_rules(self) -> str:
        return self.host.run("nft", "list", "table", "bridge", "nat", check=False).stdout


@pytest.fixture
def node(host_ns: Netns, netns_factory: NetnsFactory, cni_bin: Path, tmp_path: Path) -> Node:
    return Node(host_ns, netns_factory, cni_bin, tmp_path / "ipam")


def veths(netns: Netns) -> list[str]:
    return [link["ifname"] for link in netns.ip_json("-d", "link")
            if link.get("linkinfo", {}).get("info_kind") == "veth"]


def links(netns: Netns) -> list[str]:
    return [link["ifname"] for link in netns.ip_json("link")]


def port(netns: Netns, name: str) -> dict[str, Any]:
    """The bridge port attributes of `name` (hairpin, isolated, ...)."""
    info = netns.ip_json("-d", "link", "show", "dev", name)[0]["linkinfo"]
    return dict(info["info_slave_data"])


def addresses(netns: Netns, dev: str, scope: str = "global") -> list[str]:
    found = netns.ip_json("addr", "show", "dev", dev)
    return [f"{a['local']}/{a['prefixlen']}" for a in found[0]["addr_info"]
            if a.get("scope") == scope]


def sysctl(netns: Netns, key: str) -> str:
    return netns.run("sysctl", "-n", key).stdout.strip()


def ping(pod: Netns, address: str) -> bool:
    """One echo answered within a few seconds (a new IPv6 address may still be in DAD)."""
    return pod.run("ping", "-c1", "-w8", address, check=False).returncode == 0


def unreachable(pod: Netns, address: str) -> bool:
    return pod.run("ping", "-c2", "-W1", address, check=False).returncode != 0


def pod_entry(result: dict[str, Any]) -> dict[str, Any]:
    return dict(result["interfaces"][2])


def host_veth(result: dict[str, Any]) -> str:
    return str(result["interfaces"][1]["name"])


# --- every version: ADD, CHECK, DEL, DEL on dual stack ---------------------------------------

@pytest.mark.parametrize("version", spec.ALL)
def test_add_check_del_every_version(version: str, node: Node) -> None:
    pod = node.pod()
    dns = {"nameservers": ["10.22.0.53"], "search": ["pods.example"]}
    conf = node.conf(version, (SUBNET4, SUBNET6), isDefaultGateway=True, dns=dns)
    result = node.add(conf, pod)

    assert result["cniVersion"] == version
    assert result["dns"] == dns
    eth0 = pod.link("eth0")
    assert "UP" in eth0["flags"]
    assert sorted(addresses(pod, "eth0")) == ["10.22.0.2/24", "fd22::2/64"]
    assert sysctl(pod, "net.ipv6.conf.eth0.accept_dad") == "0"  # enabledad off
    assert {"dst": "default", "gateway": GATEWAY4} in [
        {k: r.get(k) for k in ("dst", "gateway")} for r in pod.ip_json("-4", "route")]
    assert any(r["dst"] == "default" and r["gateway"] == GATEWAY6
               for r in pod.ip_json("-6", "route"))
    # isDefaultGateway implies isGateway: the bridge (cni0 by default) holds both gateways
    assert sorted(addresses(node.host, "cni0")) == ["10.22.0.1/24", "fd22::1/64"]
    assert sysctl(node.host, "net.ipv4.ip_forward") == "1"
    assert sysctl(node.host, "net.ipv6.conf.all.forwarding") == "1"
    [veth] = veths(node.host)
    assert node.host.link(veth)["master"] == "cni0"

    if spec.at_least(version, "0.3.0"):
        bridge, host_end, inside = result["interfaces"]
        assert bridge == {"name": "cni0", "mac": node.host.link("cni0")["address"]}
        assert host_end == {"name": veth, "mac": node.host.link(veth)["address"]}
        assert inside == {"name": "eth0", "mac": eth0["address"], "sandbox": pod.path}
        assert [(ip["address"], ip["gateway"], ip["interface"]) for ip in result["ips"]] == [
            ("10.22.0.2/24", GATEWAY4, 2), ("fd22::2/64", GATEWAY6, 2)]
        assert all(("version" in ip) == (not spec.at_least(version, "1.0.0"))
                   for ip in result["ips"])
        assert {"dst": "0.0.0.0/0", "gw": GATEWAY4} in result["routes"]
        assert {"dst": "::/0", "gw": GATEWAY6} in result["routes"]
    else:
        assert result["ip4"] == {"ip": "10.22.0.2/24", "gateway": GATEWAY4,
                                 "routes": [{"dst": "0.0.0.0/0", "gw": GATEWAY4}]}
        assert result["ip6"] == {"ip": "fd22::2/64", "gateway": GATEWAY6,
                                 "routes": [{"dst": "::/0", "gw": GATEWAY6}]}

    check = node.check(conf, result, pod)
    if spec.at_least(version, "0.4.0"):
        assert check.ok() is None
    else:
        check.error(1)

    for _ in range(2):  # DEL, then DEL again
        node.delete(conf, pod)
        assert veths(node.host) == [] and links(pod) == ["lo"]
        assert node.allocations() == {}
    assert "cni0" in links(node.host)  # DEL never removes the bridge


# --- connectivity ----------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_pods_reach_each_other_and_the_gateway(family: str, node: Node) -> None:
    subnet, gateway = (SUBNET4, GATEWAY4) if family == "ipv4" else (SUBNET6, GATEWAY6)
    conf = node.conf(subnets=(subnet,), bridge="br-conn", isGateway=True)
    pod_a, pod_b = node.pod("a"), node.pod("b")
    result_a = node.add(conf, pod_a, "ctr-a")
    result_b = node.add(conf, pod_b, "ctr-b")
    address_a = result_a["ips"][0]["address"].split("/")[0]
    address_b = result_b["ips"][0]["address"].split("/")[0]
    assert result_a["ips"][0]["gateway"] == gateway
    assert f"{gateway}/{subnet.split('/')[1]}" in addresses(node.host, "br-conn")
    key = "net.ipv4.ip_forward" if family == "ipv4" else "net.ipv6.conf.all.forwarding"
    assert sysctl(node.host, key) == "1"

    assert ping(pod_a, address_b) and ping(pod_b, address_a)
    assert ping(pod_a, gateway) and ping(pod_b, gateway)
    assert "default" not in json.dumps(pod_a.ip_json("route"))  # isGateway alone: no default


def test_port_isolation_keeps_pods_apart_but_not_from_the_gateway(node: Node) -> None:
    conf = node.conf(bridge="br-iso", isGateway=True, portIsolation=True, enabledad=True)
    pod_a, pod_b = node.pod("a"), node.pod("b")
    result_a = node.add(conf, pod_a, "ctr-a")
    node.add(conf, pod_b, "ctr-b")
    assert port(node.host, host_veth(result_a))["isolated"] is True
    assert sysctl(pod_a, "net.ipv6.conf.eth0.accept_dad") == "1"
    assert sysctl(pod_a, "net.ipv6.conf.eth0.enhanced_dad") == "1"

    assert ping(pod_a, GATEWAY4) and ping(pod_b, GATEWAY4)
    assert unreachable(pod_a, "10.22.0.3") and unreachable(pod_b, "10.22.0.2")


@dataclass
class Outside:
    """A server namespace beyond the node, wired to it by a veth pair (o0 in the host)."""

    netns: Netns

    def peer_of_one_connection(self, pod: Netns) -> str:
        """Connect from `pod` to a listener here; the source address the listener saw."""
        listener = ("import socket\n"
                    "s = socket.create_server(('0.0.0.0', 8080))\n"
                    "s.settimeout(20)\n"
                    "print('ready', flush=True)\n"
                    "connection, peer = s.accept()\n"
                    "print(peer[0], flush=True)\n")
        server = subprocess.Popen(["ip", "netns", "exec", self.netns.name, sys.executable,
                                   "-c", listener], stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            assert server.stdout.readline().strip() == "ready"
            pod.run(sys.executable, "-c", "import socket; socket.create_connection("
                    f"('{OUTSIDE_ADDRESS}', 8080), timeout=20).close()")
            return server.communicate(timeout=30)[0].strip()
        finally:
            server.kill()
            server.wait()


@pytest.fixture
def outside(node: Node) -> Outside:
    netns = node.namespaces("outside")
    node.host.run("ip", "link", "add", "o0", "type", "veth", "peer", "name", "o1",
                  "netns", netns.name)
    node.host.run("ip", "addr", "add", f"{NODE_ADDRESS}/24", "dev", "o0")
    node.host.run("ip", "link", "set", "o0", "up")
    netns.run("ip", "addr", "add", f"{OUTSIDE_ADDRESS}/24", "dev", "o1")
    netns.run("ip", "link", "set", "o1", "up")
    return Outside(netns)


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_ip_masq_leaves_through_the_node_address(backend: str, node: Node,
                                                 outside: Outside) -> None:
    conf = node.conf(subnets=(SUBNET4, SUBNET6), isDefaultGateway=True, ipMasq=True,
                     ipMasqBackend=backend)
    pod = node.pod()
    node.add(conf, pod)
    rules = node.rules()
    if backend == "iptables":
        assert 'name: \\"net1\\" id: \\"ctr-1\\"' in rules and "MASQUERADE" in rules
        assert "pycni net1" not in rules
    else:
        assert rules.count('comment "pycni net1 ctr-1 eth0"') == 2  # one per address
        assert "CNI-" not in rules
    assert outside.peer_of_one_connection(pod) == NODE_ADDRESS

    node.delete(conf, pod)
    rules = node.rules()
    assert "ctr-1" not in rules and "CNI-" not in rules


# --- keys on the links -------------------------------------------------------------------------

def test_mtu_and_hairpin_on_a_new_bridge(node: Node) -> None:
    conf = node.conf(subnets=(), bridge="br-mtu", mtu=1400, hairpinMode=True)
    pod = node.pod()
    result = node.add(conf, pod)
    veth = host_veth(result)
    assert node.host.link("br-mtu")["mtu"] == 1400
    assert node.host.link(veth)["mtu"] == 1400 and pod.link("eth0")["mtu"] == 1400
    assert port(node.host, veth)["hairpin"] is True
    assert port(node.host, veth)["isolated"] is False
    assert "PROMISC" not in node.host.link("br-mtu")["flags"]
    # L2 only: the pod interface is up, without addresses
    assert "UP" in pod.link("eth0")["flags"] and addresses(pod, "eth0") == []
    assert result.get("ips") is None


def test_promisc_mode_on_the_bridge(node: Node) -> None:
    conf = node.conf(subnets=(), bridge="br-promisc", promiscMode=True)
    pod = node.pod()
    result = node.add(conf, pod)
    assert "PROMISC" in node.host.link("br-promisc")["flags"]
    assert port(node.host, host_veth(result))["hairpin"] is False
    node.check(conf, result, pod).ok()


def test_disable_container_interface_leaves_it_down(node: Node) -> None:
    conf = node.conf(subnets=(), bridge="br-off", disableContainerInterface=True)
    pod = node.pod()
    result = node.add(conf, pod)
    assert "UP" not in pod.link("eth0")["flags"]
    assert node.host.link(host_veth(result))["master"] == "br-off"


def test_mac_precedence(node: Node) -> None:
    """As the reference applies them, later winning: CNI_ARGS MAC, args.cni.mac,
    runtimeConfig.mac."""
    env_mac, args_mac, runtime_mac = "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"
    base = node.conf(subnets=(), bridge="br-mac", capabilities={"mac": True})
    cases = [
        ({**base, "args": {"cni": {"mac": args_mac}}, "runtimeConfig": {"mac": runtime_mac}},
         runtime_mac),
        ({**base, "args": {"cni": {"mac": args_mac}}}, args_mac),
        (base, env_mac),
    ]
    for number, (conf, expected) in enumerate(cases):
        pod = node.pod()
        result = node.add(conf, pod, f"ctr-{number}", CNI_ARGS=f"IgnoreUnknown=1;MAC={env_mac}")
        assert pod.link("eth0")["address"] == expected
        assert pod_entry(result)["mac"] == expected


# --- validation: code 7, nothing created ------------------------------------------------------

INVALID = [
    ({"vlan": -1}, "invalid VLAN ID -1"),
    ({"vlan": 4095}, "invalid VLAN ID 4095"),
    ({"vlanTrunk": [{"minID": 0, "maxID": 10}]}, "incorrect trunk minID"),
    ({"vlanTrunk": [{"minID": 10, "maxID": 4095}]}, "incorrect trunk maxID"),
    ({"vlanTrunk": [{"minID": 20, "maxID": 10}]}, "minID is greater than maxID"),
    ({"vlanTrunk": [{"minID": 10}]}, "maxID is missing"),
    ({"vlanTrunk": [{"maxID": 10}]}, "minID is missing"),
    ({"vlanTrunk": [{"id": 0}]}, "incorrect trunk id"),
    ({"vlanTrunk": [{"id": 4095}]}, "incorrect trunk id"),
    ({"vlan": 10, "vlanTrunk": [{"id": 20}]}, "cannot set vlan and vlanTrunk"),
    ({"hairpinMode": True, "promiscMode": True}, "hairpin mode and promiscuous mode"),
    ({"isDefaultGateway": True, "hairpinMode": True, "promiscMode": True},
     "hairpin mode and promiscuous mode"),
    ({"disableContainerInterface": True}, "disableContainerInterface cannot be used with IPAM"),
    ({"ipMasq": True, "ipMasqBackend": "ebtables"}, "invalid ipMasqBackend"),
    ({"runtimeConfig": {"mac": "02:00:00:00:00"}}, "invalid MAC address"),
    ({"bridge": "/var/lib/cni/../../etc"}, "invalid bridge name"),
    ({"bridge": "br-0123456789abc"}, "too long"),
    ({"bridge": "br 0"}, "contains / or : or whitespace"),
]


@pytest.mark.parametrize(("keys", "message"), INVALID,
                         ids=[message.replace(" ", "-") + f"-{n}"
                              for n, (_, message) in enumerate(INVALID)])
def test_invalid_config_is_refused_before_any_change(keys: dict[str, Any], message: str,
                                                     node: Node) -> None:
    pod = node.pod()
    conf = node.conf(**{"bridge": "br-bad", "isGateway": True, **keys})
    error = node.run("ADD", conf, pod).error(7)
    assert message in error["msg"]
    assert links(node.host) == ["lo"] and links(pod) == ["lo"]
    assert not node.data_dir.exists()


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0"])
def test_l2_only_refused_where_the_result_cannot_say_it(version: str, node: Node) -> None:
    pod = node.pod()
    error = node.run("ADD", node.conf(version, subnets=()), pod).error(1)
    assert "use cniVersion 0.3.0 or later" in error["msg"]
    assert links(node.host) == ["lo"] and links(pod) == ["lo"]


def test_valid_vlan_bounds_pass_validation(node: Node) -> None:
    """0 and 4094 are valid IDs, a full trunk too: what refuses them here is the kernel."""
    pod = node.pod()
    for keys in ({"vlan": 0}, {"vlan": 4094}, {"vlanTrunk": [{"minID": 1, "maxID": 4094}]}):
        outcome = node.run("ADD", node.conf(subnets=(), bridge="br-vl", **keys), pod)
        if outcome.status:
            assert outcome.json()["code"] != 7, outcome.stdout
        node.delete(node.conf(subnets=(), bridge="br-vl"), pod)


# --- VLANs: need bridge VLAN filtering in the kernel -------------------------------------------

def kernel_vlan_filtering(namespaces: NetnsFactory) -> bool:
    scratch = namespaces("vlan-probe")
    try:
        done = scratch.run("ip", "link", "add", "probe0", "type", "bridge", "vlan_filtering",
                           "1", check=False)
        return done.returncode == 0
    finally:
        namespaces.remove(scratch)


@pytest.fixture
def vlan_filtering(netns_factory: NetnsFactory) -> Iterator[None]:
    if not kernel_vlan_filtering(netns_factory):
        pytest.skip("this kernel has no bridge VLAN filtering (vlan_filtering: EOPNOTSUPP)")
    yield


def port_vlans(netns: Netns, dev: str) -> dict[int, list[str]]:
    """VLAN ID -> flags of a bridge port (`bridge -j vlan show`, ranges expanded)."""
    found: dict[int, list[str]] = {}
    for entry in json.loads(netns.run("bridge", "-j", "vlan", "show", "dev", dev).stdout):
        for vlan in entry["vlans"]:
            for vid in range(vlan["vlan"], vlan.get("vlanEnd", vlan["vlan"]) + 1):
                found[vid] = vlan.get("flags", [])
    return found


def test_vlan_access_port(node: Node, vlan_filtering: None) -> None:
    conf = node.conf(subnets=(), bridge="br-vlan", vlan=100)
    pod = node.pod()
    result = node.add(conf, pod)
    assert node.host.ip_json("-d", "link", "show", "br-vlan")[0]["linkinfo"]["info_data"][
        "vlan_filtering"] == 1
    vlans = port_vlans(node.host, host_veth(result))
    assert set(vlans[100]) == {"PVID", "Egress Untagged"}
    assert 1 in vlans  # preserveDefaultVlan defaults to true
    node.check(conf, result, pod).ok()
    node.delete(conf, pod)
    assert veths(node.host) == []


def test_vlan_gateway_lives_on_a_vlan_interface(node: Node, vlan_filtering: None) -> None:
    conf = node.conf(bridge="br-vgw", vlan=100, isGateway=True)
    pod = node.pod()
    result = node.add(conf, pod)
    names = [i["name"] for i in result["interfaces"]]
    assert names[3] == "br-vgw.100"
    gateway = node.host.ip_json("-4", "addr", "show", "dev", "br-vgw.100")[0]
    assert [a["local"] for a in gateway["addr_info"]] == [result["ips"][0]["gateway"]]
    assert node.host.ip_json("-4", "addr", "show", "dev", "br-vgw")[0]["addr_info"] == []
    node.delete(conf, pod)


def test_vlan_trunk_without_default_vlan(node: Node, vlan_filtering: None) -> None:
    conf = node.conf(subnets=(), bridge="br-trunk", preserveDefaultVlan=False,
                     vlanTrunk=[{"minID": 101, "maxID": 103}, {"id": 200}])
    pod = node.pod()
    result = node.add(conf, pod)
    vlans = port_vlans(node.host, host_veth(result))
    assert sorted(vlans) == [101, 102, 103, 200]
    assert not any("PVID" in flags or "Egress Untagged" in flags for flags in vlans.values())


def test_vlan_refused_clearly_without_kernel_support(node: Node) -> None:
    if kernel_vlan_filtering(node.namespaces):
        pytest.skip("this kernel has bridge VLAN filtering")
    pod = node.pod()
    conf = node.conf(bridge="br-vlan", vlan=100)
    error = node.run("ADD", conf, pod).error(999)
    assert "no bridge VLAN filtering" in error["msg"]
    assert links(node.host) == ["lo"] and links(pod) == ["lo"]
    # An existing bridge without filtering: the port's VLAN is refused, nothing is left.
    node.host.run("ip", "link", "add", "br-vlan", "type", "bridge")
    error = node.run("ADD", node.conf(bridge="br-vlan", vlanTrunk=[{"id": 7}]), pod).error(999)
    assert "failed to set up VLANs" in error["msg"]
    assert "no bridge VLAN filtering" in error["msg"]
    assert links(node.host) == ["lo", "br-vlan"] and links(pod) == ["lo"]
    assert node.allocations() == {}
