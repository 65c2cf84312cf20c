"""portmap in sandbox namespaces, chained after our bridge as a runtime chains it.

Each test attaches pods with bridge (host-local as a real delegate), then runs portmap with
the bridge's ADD result as prevResult, inside the sandbox "host" namespace. A "client"
namespace wired to the host namespace by a veth pair (made inside those namespaces) stands
for a machine beyond the node; servers in the pod answer with the peer address they saw, so
the tests see both that a mapping forwards and whether it was masqueraded. The machine's own
namespace is never touched.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from pycni import spec
from tests.conftest import PYCNI, Netns, Outcome, cni_env, run_exec
from tests.test_bridge import GATEWAY4, GATEWAY6, SUBNET4, SUBNET6, Node, node

__all__ = ["node"]  # the fixture, shared

NODE4, CLIENT4 = "192.0.2.1", "192.0.2.2"  # the client link (TEST-NET-1)
NODE6, CLIENT6 = "fd99::1", "fd99::2"
BACKENDS = ["iptables", "nftables"]

SERVER = """
import socket, sys
protocol, family, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET6 if family == "6" else socket.AF_INET, kind)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::" if family == "6" else "0.0.0.0", port))
if protocol == "tcp":
    s.listen(8)
print("ready", flush=True)
while True:
    if protocol == "tcp":
        c, peer = s.accept()
        c.recv(100)
        c.sendall(peer[0].encode())
        c.close()
    else:
        data, peer = s.recvfrom(100)
        s.sendto(peer[0].encode(), peer)
"""

CLIENT = """
import socket, sys
protocol, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if protocol == "tcp":
    c = socket.create_connection((host, port), timeout=3)
    c.sendall(b"hi")
    print(c.recv(100).decode())
else:
    c = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    c.settimeout(1)
    for _ in range(3):
        c.sendto(b"hi", (host, port))
        try:
            print(c.recv(100).decode())
            break
        except socket.timeout:
            pass
"""


# --- helpers ---------------------------------------------------------------------------------

def portmap_conf(version: str = "1.0.0", mappings: list[dict[str, Any]] | None = None,
                 prev: Any = None, **keys: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {"cniVersion": version, "name": "net1", "type": "portmap",
                            "capabilities": {"portMappings": True}, **keys}
    if mappings is not None:
        conf["runtimeConfig"] = {"portMappings": mappings}
    if prev is not None:
        conf["prevResult"] = prev
    return conf


def mapping(host_port: int, container_port: int, protocol: str = "tcp",
            **keys: Any) -> dict[str, Any]:
    return {"hostPort": host_port, "containerPort": container_port, "protocol": protocol,
            **keys}


def portmap(node: Node, command: str, conf: dict[str, Any], pod: Netns | None,
            cid: str = "ctr-1") -> Outcome:
    env = cni_env(command, pod.path if pod else "", container_id=cid, path=str(node.cni_bin))
    return run_exec([*PYCNI, "portmap"], env, conf, in_ns=node.host)


def bridge_conf(node: Node, version: str = "1.0.0",
                subnets: tuple[str, ...] = (SUBNET4, SUBNET6), **keys: Any) -> dict[str, Any]:
    """The pod's default route goes through the node; hairpin mode lets a forwarded
    connection return through the port it came in by (where br_netfilter is loaded, as on
    Kubernetes nodes, DNAT of bridged frames happens at the bridge)."""
    return node.conf(version, subnets, bridge="br-pm", isDefaultGateway=True,
                     hairpinMode=True, **keys)


def attach(node: Node, pod: Netns, cid: str = "ctr-1", version: str = "1.0.0",
           subnets: tuple[str, ...] = (SUBNET4, SUBNET6)) -> Any:
    return node.add(bridge_conf(node, version, subnets), pod, cid)


def nat_state(node: Node) -> list[str]:
    """The host namespace's nat rules (both iptables families, counters dropped) and our
    nftables table."""
    lines = []
    for tool in ("iptables-save", "ip6tables-save"):
        out = node.host.run(tool, "-t", "nat", check=False).stdout
        lines += [f"{tool}: " + re.sub(r" \[\d+:\d+\]$", "", line)
                  for line in out.splitlines() if not line.startswith("#")]
    lines += node.host.run("nft", "list", "table", "inet", "pycni_portmap",
                           check=False).stdout.splitlines()
    return lines


@dataclass
class Client:
    netns: Netns

    def ask(self, protocol: str, address: str, port: int, netns: Netns | None = None) -> str:
        """Send one request from `netns` (this client by default); the peer address the
        server saw, or "" when nothing answered."""
        where = netns or self.netns
        done = where.run(sys.executable, "-c", CLIENT, protocol, address, str(port),
                         check=False, timeout=20)
        return done.stdout.strip()


@pytest.fixture
def client(node: Node) -> Client:
    netns = node.namespaces("client")
    node.host.run("ip", "link", "add", "c0", "type", "veth", "peer", "name", "c1",
                  "netns", netns.name)
    node.host.run("ip", "addr", "add", f"{NODE4}/24", "dev", "c0")
    node.host.run("ip", "addr", "add", f"{NODE6}/64", "dev", "c0", "nodad")
    node.host.run("ip", "link", "set", "c0", "up")
    node.host.run("ip", "link", "set", "lo", "up")
    netns.run("ip", "addr", "add", f"{CLIENT4}/24", "dev", "c1")
    netns.run("ip", "addr", "add", f"{CLIENT6}/64", "dev", "c1", "nodad")
    netns.run("ip", "link", "set", "c1", "up")
    return Client(netns)


@contextmanager
def servers(pod: Netns, family: str, port: int) -> Iterator[None]:
    """A TCP and a UDP server on `port` in `pod`, answering with the peer's address."""
    started = []
    try:
        for protocol in ("tcp", "udp"):
            server = subprocess.Popen(["ip", "netns", "exec", pod.name, sys.executable, "-c",
                                       SERVER, protocol, family, str(port)],
                                      stdout=subprocess.PIPE, text=True)
            started.append(server)
            assert server.stdout is not None
            assert server.stdout.readline().strip() == "ready"
        yield
    finally:
        for server in started:
            server.kill()
            server.wait()


def chained_add(node: Node, pod: Netns, mappings: list[dict[str, Any]], cid: str = "ctr-1",
                subnets: tuple[str, ...] = (SUBNET4, SUBNET6), version: str = "1.0.0",
                **keys: Any) -> tuple[dict[str, Any], Any]:
    """bridge then portmap for one pod; the portmap config (with prevResult) and result."""
    prev = attach(node, pod, cid, version, subnets)
    conf = portmap_conf(version, mappings, prev, **keys)
    result = portmap(node, "ADD", conf, pod, cid).ok()
    assert result == prev  # a chained plugin passes prevResult on
    return conf, result


# --- every version ---------------------------------------------------------------------------

@pytest.mark.parametrize("version", spec.ALL)
def test_add_check_del_every_version(version: str, node: Node, client: Client) -> None:
    pod = node.pod()
    conf, _ = chained_add(node, pod, [mapping(8080, 80), mapping(8053, 53, "udp")],
                          version=version)
    state = "\n".join(nat_state(node))
    assert 'dnat name: \\"net1\\" id: \\"ctr-1\\"' in state
    assert "--to-destination 10.22.0.2:80" in state and "[fd22::2]:80" in state
    with servers(pod, "4", 80), servers(pod, "4", 53):
        assert client.ask("tcp", NODE4, 8080) == CLIENT4
        assert client.ask("udp", NODE4, 8053) == CLIENT4

    check = portmap(node, "CHECK", conf, pod)
    if spec.at_least(version, "0.4.0"):
        assert check.ok() is None
    else:
        check.error(1)

    for _ in range(2):  # DEL, then DEL again
        portmap(node, "DEL", conf, pod).ok()
        state = "\n".join(nat_state(node))
        assert "CNI-DN-" not in state and "ctr-1" not in state


# --- forwarding: from outside, from the node, hairpin ----------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", ["4", "6"])
def test_forwarding(family: str, backend: str, node: Node, client: Client) -> None:
    subnet, gateway, node_address, client_address = (
        (SUBNET4, GATEWAY4, NODE4, CLIENT4) if family == "4"
        else (SUBNET6, GATEWAY6, NODE6, CLIENT6))
    pod = node.pod()
    chained_add(node, pod, [mapping(8080, 80), mapping(8080, 80, "udp")], subnets=(subnet,),
                backend=backend)
    state = "\n".join(nat_state(node))
    assert ("CNI-HOSTPORT-DNAT" in state) == (backend == "iptables")
    assert ("pycni-portmap net1 ctr-1 eth0" in state) == (backend == "nftables")
    with servers(pod, family, 80):
        for protocol in ("tcp", "udp"):
            # from beyond the node: forwarded, the client's address kept
            assert client.ask(protocol, node_address, 8080) == client_address, protocol
            # from the node itself
            assert client.ask(protocol, node_address, 8080, node.host) == node_address
            # hairpin: the pod through the node's port, masqueraded to the gateway
            assert client.ask(protocol, node_address, 8080, pod) == gateway, protocol
        if family == "4":  # localhost on the node, masqueraded (route_localnet)
            assert client.ask("tcp", "127.0.0.1", 8080, node.host) == gateway
        assert client.ask("tcp", node_address, 8081) == ""  # unmapped port


@pytest.mark.parametrize("backend", BACKENDS)
def test_masq_all_masquerades_outside_clients(backend: str, node: Node,
                                              client: Client) -> None:
    pod = node.pod()
    chained_add(node, pod, [mapping(8080, 80)], subnets=(SUBNET4,), backend=backend,
                masqAll=True)
    with servers(pod, "4", 80):
        assert client.ask("tcp", NODE4, 8080) == GATEWAY4


def test_snat_false_makes_no_mark_rules(node: Node, client: Client) -> None:
    pod = node.pod()
    chained_add(node, pod, [mapping(8080, 80)], subnets=(SUBNET4,), backend="iptables",
                snat=False)
    state = "\n".join(nat_state(node))
    assert "CNI-HOSTPORT-SETMARK" not in state and "CNI-HOSTPORT-MASQ" not in state
    with servers(pod, "4", 80):
        assert client.ask("tcp", NODE4, 8080) == CLIENT4


def test_host_ip_limits_the_mapping(node: Node, client: Client) -> None:
    pod = node.pod()
    node.host.run("ip", "addr", "add", "192.0.2.3/24", "dev", "c0")
    chained_add(node, pod, [mapping(8080, 80, hostIP="192.0.2.3")], backend="iptables")
    assert "[fd22::2]" not in "\n".join(nat_state(node))  # an IPv4 hostIP: no IPv6 rules
    with servers(pod, "4", 80):
        assert client.ask("tcp", "192.0.2.3", 8080) == CLIENT4
        assert client.ask("tcp", NODE4, 8080) == ""


def test_conditions_exclude_a_source(node: Node, client: Client) -> None:
    pod = node.pod()
    conf, _ = chained_add(node, pod, [mapping(8080, 80)], subnets=(SUBNET4,),
                          backend="iptables", conditionsV4=["!", "-s", CLIENT4])
    assert f"! -s {CLIENT4}/32" in "\n".join(nat_state(node))
    with servers(pod, "4", 80):
        assert client.ask("tcp", NODE4, 8080) == ""
        assert client.ask("tcp", NODE4, 8080, node.host) == NODE4
    portmap(node, "CHECK", conf, pod).ok()


def test_external_set_mark_chain(node: Node) -> None:
    node.host.run("iptables", "-t", "nat", "-N", "KUBE-MARK-MASQ")
    pod = node.pod()
    conf, _ = chained_add(node, pod, [mapping(8080, 80)], subnets=(SUBNET4,),
                          backend="iptables", externalSetMarkChain="KUBE-MARK-MASQ")
    state = "\n".join(nat_state(node))
    assert "-j KUBE-MARK-MASQ" in state and "CNI-HOSTPORT-SETMARK" not in state
    portmap(node, "CHECK", conf, pod).ok()


# --- DEL removes exactly its own ------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_del_removes_exactly_its_own_rules(backend: str, node: Node) -> None:
    pod_a, pod_b = node.pod("a"), node.pod("b")
    conf_a, _ = chained_add(node, pod_a, [mapping(8080, 80)], "ctr-a", backend=backend)
    prev_b = attach(node, pod_b, "ctr-b")
    before = nat_state(node)
    conf_b = portmap_conf("1.0.0", [mapping(9090, 90), mapping(9053, 53, "udp")], prev_b,
                          backend=backend)
    portmap(node, "ADD", conf_b, pod_b, "ctr-b").ok()
    assert nat_state(node) != before
    portmap(node, "DEL", conf_b, pod_b, "ctr-b").ok()
    assert nat_state(node) == before  # pod a's rules and the shared chains untouched
    portmap(node, "CHECK", conf_a, pod_a, "ctr-a").ok()

    portmap(node, "DEL", conf_a, None, "ctr-a").ok()  # without netns and prevResult too
    state = "\n".join(nat_state(node))
    assert "ctr-a" not in state and "CNI-DN-" not in state
    assert "--to-destination" not in state and "dnat ip" not in state


# --- CHECK -----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("subnets", [(SUBNET4,), (SUBNET6,), (SUBNET4, SUBNET6)],
                         ids=["ipv4", "ipv6", "dual"])
def test_check_verifies_the_pods_families(subnets: tuple[str, ...], backend: str,
                                          node: Node) -> None:
    pod = node.pod()
    conf, _ = chained_add(node, pod, [mapping(8080, 80), mapping(8053, 53, "udp")],
                          subnets=subnets, backend=backend)
    portmap(node, "CHECK", conf, pod).ok()
    # damage: the rules of the pod's last family gone
    if backend == "iptables":
        save = node.host.run("ip6tables-save" if subnets[-1] == SUBNET6 else "iptables-save",
                             "-t", "nat").stdout
        chain = next(word for word in save.split() if word.startswith("CNI-DN-"))
        tool = "ip6tables" if subnets[-1] == SUBNET6 else "iptables"
        node.host.run(tool, "-t", "nat", "-F", chain)
    else:
        node.host.run("nft", "flush", "chain", "inet", "pycni_portmap", "prerouting")
    assert "port forwarding rule" in portmap(node, "CHECK", conf, pod).error(999)["msg"]


# --- GC --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_gc_removes_rules_of_gone_attachments(backend: str, node: Node) -> None:
    pod_a, pod_b = node.pod("a"), node.pod("b")
    conf_a, _ = chained_add(node, pod_a, [mapping(8080, 80)], "ctr-a", backend=backend)
    chained_add(node, pod_b, [mapping(9090, 90)], "ctr-b", backend=backend)
    gc = portmap_conf("1.1.0", backend=backend, **{
        "cni.dev/valid-attachments": [{"containerID": "ctr-a", "ifname": "eth0"}]})
    env = cni_env("GC", container_id="", ifname="", path=str(node.cni_bin))
    run_exec([*PYCNI, "portmap"], env, gc, in_ns=node.host).ok()
    state = "\n".join(nat_state(node))
    assert "ctr-b" not in state and "9090" not in state
    assert "ctr-a" in state
    portmap(node, "CHECK", conf_a, pod_a, "ctr-a").ok()


# --- input -----------------------------------------------------------------------------------

def test_no_mappings_passes_prev_result_through(node: Node) -> None:
    pod = node.pod()
    prev = attach(node, pod)
    before = nat_state(node)
    for conf in (portmap_conf(prev=prev), portmap_conf(mappings=[], prev=prev)):
        assert portmap(node, "ADD", conf, pod).ok() == prev
        portmap(node, "CHECK", conf, pod).ok()
        portmap(node, "DEL", conf, pod).ok()
    assert nat_state(node) == before


INVALID = [
    ({}, "prevResult missing"),
    ({"mappings": [mapping(0, 80)]}, "invalid host port number: 0"),
    ({"mappings": [mapping(65536, 80)]}, "invalid host port number: 65536"),
    ({"mappings": [mapping(8080, 0)]}, "invalid container port number: 0"),
    ({"mappings": [mapping(8080, 80, "icmp")]}, "invalid protocol"),
    ({"mappings": [mapping(8080, 80, hostIP="not-an-ip")]}, "invalid hostIP"),
    ({"markMasqBit": 32}, "invalid markMasqBit 32"),
    ({"markMasqBit": 3, "externalSetMarkChain": "KUBE-MARK-MASQ"},
     "cannot specify externalSetMarkChain and markMasqBit"),
    ({"backend": "ebtables"}, "invalid backend"),
]


@pytest.mark.parametrize(("keys", "message"), INVALID, ids=[m for _, m in INVALID])
def test_invalid_input_is_code_7(keys: dict[str, Any], message: str, node: Node) -> None:
    pod = node.pod()
    prev = attach(node, pod) if keys else None
    keys = dict(keys)
    mappings = keys.pop("mappings", [mapping(8080, 80)])
    before = nat_state(node)
    error = portmap(node, "ADD", portmap_conf("1.0.0", mappings, prev, **keys), pod).error(7)
    assert message in error["msg"]
    assert nat_state(node) == before


@pytest.mark.skipif(not shutil.which("conntrack"), reason="the conntrack command is not installed")
def test_stale_udp_conntrack_entries_are_flushed(node: Node, client: Client) -> None:
    """A UDP flow to the node's port before the mapping existed keeps an unmapped conntrack
    entry; ADD must drop it or the client never reaches the pod."""
    pod = node.pod()
    prev = attach(node, pod, subnets=(SUBNET4,))
    # A node tracks connections once a rule needs it (kube-proxy's do); so must this one.
    node.host.run("iptables", "-t", "filter", "-A", "INPUT", "-m", "conntrack", "--ctstate",
                  "INVALID", "-j", "DROP")
    client.netns.run(sys.executable, "-c", "import socket; s=socket.socket(socket.AF_INET, "
                     f"socket.SOCK_DGRAM); s.bind(('', 40000)); s.sendto(b'x', ('{NODE4}', 8053))")
    listed = node.host.run("conntrack", "-L", "-p", "udp", "--orig-port-dst", "8053",
                           check=False).stdout
    assert NODE4 in listed  # the stale entry exists
    conf = portmap_conf("1.0.0", [mapping(8053, 53, "udp")], prev)
    portmap(node, "ADD", conf, pod, "ctr-1").ok()
    listed = node.host.run("conntrack", "-L", "-p", "udp", "--orig-port-dst", "8053",
                           check=False).stdout
    assert NODE4 not in listed
    with servers(pod, "4", 53):
        assert client.ask("udp", NODE4, 8053) == CLIENT4
