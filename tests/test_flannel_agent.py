"""The flannel node agent in a sandbox cluster: node state, peers coming and going, restarts.

Traffic between pods is shown through libcni in conformance/test_flannel_cluster.py; here the
agents' own work is checked: devices, addresses, routes, neighbour and FDB entries, subnet.env,
firewall rules, and what happens when peers or agents come and go.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import NetnsFactory
from tests.etcdlib import EtcdServer, needs_etcd
from tests.flannelcluster import Cluster, Node, wait_for
from tests.kubeapi import KubeApiServer, write_kubeconfig

pytestmark = pytest.mark.kernel
SEEDS = Path(__file__).parent / "seeds"


def seed_net_conf(name: str) -> dict[str, Any]:
    return json.loads((SEEDS / f"net-conf.{name}.json").read_text())  # type: ignore[no-any-return]


@pytest.fixture
def make_cluster(netns_factory: NetnsFactory, tmp_path: Path) -> Iterator[Any]:
    made: list[Cluster] = []

    def make(net_conf: dict[str, Any], nodes: int = 3, start: bool = True,
             **kw: Any) -> Cluster:
        cluster = Cluster(netns_factory, tmp_path / f"cluster{len(made)}", net_conf, nodes,
                          **kw)
        made.append(cluster)
        if start:
            cluster.start()
        return cluster

    yield make
    for cluster in made:
        cluster.close()


def vxlan_view(node: Node) -> dict[str, Any]:
    """What a user checks on a vxlan node: device, address, routes, neighbours, FDB."""
    link = node.netns.link("flannel.1")
    addresses = [f"{a['local']}/{a['prefixlen']}" for a in
                 node.ip_json("-4", "addr", "show", "dev", "flannel.1")[0]["addr_info"]]
    routes = {r["dst"]: r for r in node.routes() if r.get("dev") == "flannel.1"}
    neighbours = {n["dst"]: n["lladdr"] for n in node.neighbours("flannel.1")
                  if "PERMANENT" in n.get("state", [])}
    fdb = {f["mac"]: f["dst"] for f in node.fdb("flannel.1") if f.get("dst")}
    return {"link": link, "addresses": addresses, "routes": routes, "neighbours": neighbours,
            "fdb": fdb}


def expect_vxlan_peers(node: Node, peers: list[Node]) -> bool:
    view = vxlan_view(node)
    for peer in peers:
        subnet = ipaddress.ip_network(peer.subnet())
        gateway = str(subnet.network_address)
        mac = peer.netns.link("flannel.1")["address"]
        route = view["routes"].get(str(subnet))
        if not (route and route.get("gateway") == gateway and "onlink" in route.get("flags", [])
                and view["neighbours"].get(gateway) == mac
                and view["fdb"].get(mac) == peer.address):
            return False
    return len(view["routes"]) == len(peers) and len(view["fdb"]) == len(peers)


def test_vxlan_node_state_matches_the_seed_description(make_cluster: Any) -> None:
    cluster = make_cluster(seed_net_conf("vxlan"))
    subnets = [node.subnet() for node in cluster.nodes]
    assert len(set(subnets)) == 3
    for node, subnet in zip(cluster.nodes, subnets, strict=True):
        network = ipaddress.ip_network(subnet)
        assert network.subnet_of(ipaddress.ip_network("10.244.0.0/16"))
        assert network.prefixlen == 24
        env = node.wait_ready()
        assert env == {"FLANNEL_NETWORK": "10.244.0.0/16",
                       "FLANNEL_SUBNET": f"{network.network_address + 1}/24",
                       "FLANNEL_MTU": "1450", "FLANNEL_IPMASQ": "true"}
        link = node.netns.link("flannel.1")
        assert link["mtu"] == 1450
        details = node.ip_json("-d", "link", "show", "flannel.1")[0]["linkinfo"]
        assert details["info_kind"] == "vxlan"
        data = details["info_data"]
        assert (data["id"], data["port"], data["local"], data["link"]) == (
            1, 8472, node.address, "eth0")
        assert not data.get("learning", False)
        others = [n for n in cluster.nodes if n is not node]
        assert wait_for(lambda n=node, o=others: expect_vxlan_peers(n, o), 5), vxlan_view(node)
        assert vxlan_view(node)["addresses"] == [f"{network.network_address}/32"]


def test_peer_leaving_and_joining_is_followed(make_cluster: Any, tmp_path: Path) -> None:
    cluster = make_cluster(seed_net_conf("vxlan"), nodes=2, lease_ttl=4)
    first, second = cluster.nodes
    assert wait_for(lambda: expect_vxlan_peers(first, [second]), 5)
    third = cluster.add_node(3)
    cluster.nodes.append(third)
    third.start_agent()
    third.wait_ready()
    assert wait_for(lambda: expect_vxlan_peers(first, [second, third]), 3), vxlan_view(first)
    assert wait_for(lambda: expect_vxlan_peers(third, [first, second]), 3), vxlan_view(third)
    # The peer stops for good: its lease expires and every node drops its entries.
    gone_subnet = third.subnet()
    third.stop_agent()
    assert wait_for(lambda: expect_vxlan_peers(first, [second]), 10), vxlan_view(first)
    assert wait_for(lambda: gone_subnet not in vxlan_view(second)["routes"], 5), \
        vxlan_view(second)


def test_restart_keeps_subnet_and_mac_and_drops_departed_peers(make_cluster: Any) -> None:
    cluster = make_cluster(seed_net_conf("vxlan"), nodes=3, lease_ttl=4)
    first, second, third = cluster.nodes
    subnet = first.subnet()
    mac = first.netns.link("flannel.1")["address"]
    assert wait_for(lambda: expect_vxlan_peers(first, [second, third]), 5)
    first.stop_agent()
    # While first is down, third leaves for good.
    third.stop_agent()
    wait_for(lambda: third.subnet() not in vxlan_view(second)["routes"], 10)
    first.subnet_file.unlink()
    first.start_agent()
    first.wait_ready()
    assert first.subnet() == subnet
    assert first.netns.link("flannel.1")["address"] == mac
    assert wait_for(lambda: expect_vxlan_peers(first, [second]), 5), vxlan_view(first)
    # Peers still reach it through the same MAC: their entries never changed.
    assert vxlan_view(second)["neighbours"][str(ipaddress.ip_network(subnet).network_address)] \
        == mac


def test_restart_after_the_device_vanished_reuses_the_advertised_mac(
        make_cluster: Any) -> None:
    cluster = make_cluster(seed_net_conf("vxlan"), nodes=2)
    first, second = cluster.nodes
    mac = first.netns.link("flannel.1")["address"]
    first.stop_agent()
    first.netns.run("ip", "link", "del", "flannel.1")      # as after a reboot
    first.subnet_file.unlink()
    first.start_agent()
    first.wait_ready()
    assert first.netns.link("flannel.1")["address"] == mac
    assert wait_for(lambda: expect_vxlan_peers(first, [second]), 5)


def test_host_gw_routes_via_node_addresses(make_cluster: Any) -> None:
    cluster = make_cluster(seed_net_conf("host-gw"))
    for node in cluster.nodes:
        assert node.wait_ready()["FLANNEL_MTU"] == "1500"
        others = [n for n in cluster.nodes if n is not node]

        def routed(node: Node = node, others: list[Node] = others) -> bool:
            routes = {r["dst"]: r for r in node.routes()}
            return all(routes.get(o.subnet(), {}).get("gateway") == o.address
                       and routes[o.subnet()]["dev"] == "eth0" for o in others)
        assert wait_for(routed, 5), node.routes()
        assert node.netns.run("ip", "link", "show", "flannel.1", check=False).returncode != 0


def test_host_gw_refuses_peers_that_are_not_on_link(make_cluster: Any) -> None:
    cluster = make_cluster(seed_net_conf("host-gw"), nodes=2, start=False)
    first, second = cluster.nodes
    # second advertises an address outside first's underlay subnet
    second.netns.run("ip", "addr", "add", "172.31.0.20/24", "dev", "eth0")
    first.start_agent()
    second.start_agent("--public-ip", "172.31.0.20")
    first.wait_ready(), second.wait_ready()
    assert wait_for(lambda: "not on-link" in first.agent_log.read_text(), 5)
    assert second.subnet() not in {r["dst"] for r in first.routes()}


def test_direct_routing_chooses_per_peer(make_cluster: Any) -> None:
    cluster = make_cluster(seed_net_conf("vxlan-directrouting"), nodes=3, start=False)
    first, second, third = cluster.nodes
    # third sits on another subnet of the underlay: it is reached through VXLAN
    third.netns.run("ip", "addr", "flush", "dev", "eth0")
    third.netns.run("ip", "addr", "add", "172.31.0.30/24", "dev", "eth0")
    first.netns.run("ip", "route", "add", "172.31.0.0/24", "dev", "eth0")
    third.netns.run("ip", "route", "add", "192.168.0.0/24", "dev", "eth0")
    first.start_agent()
    second.start_agent()
    third.start_agent()
    for node in cluster.nodes:
        node.wait_ready()

    def chosen() -> bool:
        routes = {r["dst"]: r for r in first.routes()}
        direct = routes.get(second.subnet(), {})
        tunnel = routes.get(third.subnet(), {})
        return (direct.get("dev") == "eth0" and direct.get("gateway") == second.address
                and tunnel.get("dev") == "flannel.1")
    assert wait_for(chosen, 5), first.routes()
    fdb = {f["mac"]: f["dst"] for f in first.fdb("flannel.1") if f.get("dst")}
    assert list(fdb.values()) == ["172.31.0.30"]


def test_masquerade_rules_and_stale_bridge_address(make_cluster: Any) -> None:
    cluster = make_cluster(seed_net_conf("vxlan"), nodes=1, start=False)
    (node,) = cluster.nodes
    node.netns.run("ip", "link", "add", "cni0", "type", "bridge")
    node.netns.run("ip", "addr", "add", "10.244.200.1/24", "dev", "cni0")
    node.start_agent()
    subnet = ipaddress.ip_network(node.subnet())
    def bridge_addresses() -> list[dict[str, Any]]:
        return [a for entry in node.ip_json("-4", "addr", "show", "dev", "cni0")
                for a in entry["addr_info"]]
    assert wait_for(lambda: not bridge_addresses(), 5), bridge_addresses()
    nat = node.netns.run("iptables", "-w", "-t", "nat", "-S", "FLANNEL-POSTRTG").stdout
    assert "-s 10.244.0.0/16 ! -d 224.0.0.0/4" in nat and "MASQUERADE --random-fully" in nat
    assert f"-s {subnet} -d 10.244.0.0/16" in nat
    postrouting = node.netns.run("iptables", "-w", "-t", "nat", "-S", "POSTROUTING").stdout
    assert "-j FLANNEL-POSTRTG" in postrouting
    forward = node.netns.run("iptables", "-w", "-S", "FLANNEL-FWD").stdout
    assert "-s 10.244.0.0/16" in forward and "-j ACCEPT" in forward
    # a restart rewrites the chain instead of appending to it
    node.stop_agent()
    node.start_agent()
    node.wait_ready()
    again = node.netns.run("iptables", "-w", "-t", "nat", "-S", "FLANNEL-POSTRTG").stdout
    assert again.count("MASQUERADE") == 2
    postrouting = node.netns.run("iptables", "-w", "-t", "nat", "-S", "POSTROUTING").stdout
    assert postrouting.count("FLANNEL-POSTRTG") == 1


def test_agent_exits_cleanly_on_sigterm_and_keeps_the_data_plane(make_cluster: Any) -> None:
    cluster = make_cluster(seed_net_conf("vxlan"), nodes=2)
    first, second = cluster.nodes
    assert wait_for(lambda: expect_vxlan_peers(first, [second]), 5)
    assert first.stop_agent(signal.SIGTERM) == 0
    assert expect_vxlan_peers(first, [second])


@pytest.mark.stress  # tests/test_outages.py stops and restarts etcd under agents in make test
@needs_etcd
def test_etcd_store_two_agents_renew_and_survive_an_etcd_restart(
        make_cluster: Any, tmp_path: Path) -> None:
    cluster = make_cluster(seed_net_conf("vxlan"), nodes=2, start=False, store="etcd",
                           lease_ttl=6)
    etcd = EtcdServer(cluster.underlay, "192.168.0.1", tmp_path / "etcd")
    etcd.start()
    try:
        etcd.etcdctl("put", "/coreos.com/network/config", json.dumps(seed_net_conf("vxlan")))
        cluster.extra_store_args = ["--etcd-endpoints", etcd.url]
        cluster.start()
        first, second = cluster.nodes
        assert first.subnet() != second.subnet()
        assert wait_for(lambda: expect_vxlan_peers(first, [second])
                        and expect_vxlan_peers(second, [first]), 10)
        keys = etcd.etcdctl("get", "--prefix", "--keys-only",
                            "/coreos.com/network/subnets/").stdout.split()
        assert sorted(keys) == sorted(
            f"/coreos.com/network/subnets/{n.subnet().replace('/', '-')}" for n in cluster.nodes)
        value = json.loads(etcd.etcdctl(
            "get", "--print-value-only",
            f"/coreos.com/network/subnets/{first.subnet().replace('/', '-')}").stdout)
        assert value["PublicIP"] == first.address and value["BackendType"] == "vxlan"
        assert value["BackendData"]["VtepMAC"] == first.netns.link("flannel.1")["address"]
        # etcd goes away longer than a renewal period: the data plane stays
        etcd.stop()
        time.sleep(4)
        assert expect_vxlan_peers(first, [second]) and expect_vxlan_peers(second, [first])
        assert first.agent is not None and first.agent.poll() is None
        etcd.start()
        # leases renew past their ttl once etcd is back, and nobody lost a subnet
        time.sleep(8)
        after = etcd.etcdctl("get", "--prefix", "--keys-only",
                             "/coreos.com/network/subnets/").stdout.split()
        assert sorted(after) == sorted(keys)
        assert wait_for(lambda: expect_vxlan_peers(first, [second]), 5)
        assert "renewed lease" in first.agent_log.read_text()
    finally:
        cluster.close()
        etcd.stop()


def test_kubernetes_store_nodes_podcidr_annotations_and_watch(make_cluster: Any,
                                                              tmp_path: Path) -> None:
    cluster = make_cluster(seed_net_conf("vxlan"), nodes=2, start=False, store="kube")
    with KubeApiServer(cluster.underlay.path, host="192.168.0.1", port=6443,
                       token="agent-token") as server:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url, "agent-token")
        for node, cidr in zip(cluster.nodes, ("10.244.7.0/24", "10.244.9.0/24"), strict=True):
            server.add_node(node.name, pod_cidr=cidr, address=node.address)
        cluster.extra_store_args = ["--kube-subnet-mgr", "--kubeconfig-file", str(kubeconfig)]
        cluster.start()
        first, second = cluster.nodes
        assert (first.subnet(), second.subnet()) == ("10.244.7.0/24", "10.244.9.0/24")
        annotations = server.node("node1")["metadata"]["annotations"]
        assert annotations["flannel.alpha.coreos.com/backend-type"] == "vxlan"
        assert annotations["flannel.alpha.coreos.com/public-ip"] == first.address
        assert annotations["flannel.alpha.coreos.com/kube-subnet-manager"] == "true"
        assert json.loads(annotations["flannel.alpha.coreos.com/backend-data"]) == {
            "VNI": 1, "VtepMAC": first.netns.link("flannel.1")["address"]}
        assert wait_for(lambda: expect_vxlan_peers(first, [second]), 5), vxlan_view(first)
        # a third node joins through the API only; then it is deleted
        third = cluster.add_node(3)
        cluster.nodes.append(third)
        server.add_node("node3", pod_cidr="10.244.3.0/24")
        third.start_agent()
        assert third.subnet() == "10.244.3.0/24"
        assert wait_for(lambda: expect_vxlan_peers(first, [second, third]), 5), vxlan_view(first)
        third.stop_agent()
        server.delete_node("node3")
        assert wait_for(lambda: expect_vxlan_peers(first, [second]), 5), vxlan_view(first)
        # the API goes away: routes stay; it returns: the agents follow again
        server.stop()
        time.sleep(2)
        assert expect_vxlan_peers(first, [second])
        server.start()
        server.annotate_node("node2", **{"flannel.alpha.coreos.com/public-ip": second.address})
        assert wait_for(lambda: expect_vxlan_peers(second, [first]), 10)
        cluster.close()


def test_vxlan_options_and_the_nftables_backend(make_cluster: Any) -> None:
    conf = {"Network": "10.244.0.0/16", "EnableNFTables": True,
            "Backend": {"Type": "vxlan", "VNI": 42, "Port": 4789, "MTU": 1400}}
    cluster = make_cluster(conf, nodes=2)
    first, second = cluster.nodes
    assert first.wait_ready()["FLANNEL_MTU"] == "1400"
    details = first.ip_json("-d", "link", "show", "flannel.42")[0]
    assert details["mtu"] == 1400
    assert (details["linkinfo"]["info_data"]["id"], details["linkinfo"]["info_data"]["port"]) \
        == (42, 4789)
    routes = {r["dst"]: r for r in first.routes()}
    assert wait_for(lambda: second.subnet() in {r["dst"] for r in first.routes()}, 5), routes
    ruleset = first.netns.run("nft", "list", "table", "ip", "flannel-ipv4").stdout
    assert "masquerade fully-random" in ruleset and "10.244.0.0/16" in ruleset
    assert first.netns.run("iptables", "-w", "-t", "nat", "-S", "FLANNEL-POSTRTG",
                           check=False).returncode != 0


def test_file_store_renews_leases_and_survives_a_cluster_restart(make_cluster: Any) -> None:
    cluster = make_cluster(seed_net_conf("vxlan"), nodes=2, lease_ttl=4)
    first, second = cluster.nodes
    subnets = [node.subnet() for node in cluster.nodes]
    lease_file = cluster.store_dir / "subnets" / subnets[0].replace("/", "-")
    expiration = json.loads(lease_file.read_text())["Expiration"]
    assert wait_for(lambda: json.loads(lease_file.read_text())["Expiration"] != expiration, 5)
    time.sleep(4)       # longer than the lease time: only renewal keeps the leases
    assert [node.subnet() for node in cluster.nodes] == subnets
    assert expect_vxlan_peers(first, [second])
    for node in cluster.nodes:
        node.stop_agent()
        node.subnet_file.unlink()
    for node in cluster.nodes:
        node.start_agent()
    assert [node.subnet() for node in cluster.nodes] == subnets
    assert wait_for(lambda: expect_vxlan_peers(first, [second])
                    and expect_vxlan_peers(second, [first]), 5)


def test_a_peer_changing_its_mac_and_address_is_followed(make_cluster: Any) -> None:
    cluster = make_cluster(seed_net_conf("vxlan"), nodes=2)
    first, second = cluster.nodes
    assert wait_for(lambda: expect_vxlan_peers(first, [second]), 5)
    old_mac = second.netns.link("flannel.1")["address"]
    # the peer's lease changes under the agent: a new VTEP MAC and a new node address
    lease_file = cluster.store_dir / "subnets" / second.subnet().replace("/", "-")
    second.stop_agent()
    lease = json.loads(lease_file.read_text())
    lease["BackendData"]["VtepMAC"] = "0a:58:0a:f4:63:01"
    lease["PublicIP"] = "192.168.0.99"
    staged = lease_file.with_name("staged")
    staged.write_text(json.dumps(lease))
    staged.rename(lease_file)
    gateway = str(ipaddress.ip_network(second.subnet()).network_address)

    def followed() -> bool:
        view = vxlan_view(first)
        return (view["neighbours"].get(gateway) == "0a:58:0a:f4:63:01"
                and view["fdb"] == {"0a:58:0a:f4:63:01": "192.168.0.99"})
    assert wait_for(followed, 3), vxlan_view(first)
    assert old_mac not in vxlan_view(first)["fdb"]
