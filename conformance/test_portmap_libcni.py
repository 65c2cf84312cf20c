"""The users' default network as a runtime drives it: bridge + host-local, then the seed
conflist's portmap entry unchanged, through libcni with the portMappings capability."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conformance.bridgelib import bridge_conflist, pod_addresses
from conformance.conftest import CniTool
from tests.conftest import REPO, Netns, NetnsFactory

pytestmark = [pytest.mark.conformance, pytest.mark.kernel]

SEED = json.loads((REPO / "tests" / "seeds" / "10-flannel.conflist").read_text())
PORTMAP_ENTRY = next(p for p in SEED["plugins"] if p["type"] == "portmap")
NODE_ADDRESS, CLIENT_ADDRESS = "192.0.2.1", "192.0.2.2"  # documentation range, sandbox only
SERVER = ("import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, "
          "socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 8080)); s.listen(1); "
          "c,a=s.accept(); c.sendall(b'hello from the pod'); c.close()")


def conflist(version: str, data_dir: Path) -> dict[str, Any]:
    conf = bridge_conflist(version, data_dir, isDefaultGateway=True, hairpinMode=True)
    conf["plugins"].append(PORTMAP_ENTRY)  # exactly as the users wrote it
    return conf


def connect_client(factory: NetnsFactory, host: Netns) -> Netns:
    """A client namespace on a link to the node, as another machine would be."""
    client = factory("client")
    host.run("ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1",
             "netns", client.name)
    host.run("ip", "addr", "add", f"{NODE_ADDRESS}/24", "dev", "uplink0")
    host.run("ip", "link", "set", "uplink0", "up")
    client.run("ip", "addr", "add", f"{CLIENT_ADDRESS}/24", "dev", "uplink1")
    client.run("ip", "link", "set", "uplink1", "up")
    client.run("ip", "link", "set", "lo", "up")
    return client


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_seed_portmap_entry_chained_after_bridge(version: str, cnitool: CniTool,
                                                 netns_factory: NetnsFactory, host_ns: Netns,
                                                 pod_ns: Netns, scratch_dir: Path) -> None:
    assert PORTMAP_ENTRY == {"type": "portmap", "capabilities": {"portMappings": True}}
    cnitool.write_conf(conflist(version, scratch_dir / "ipam"))
    mappings = json.dumps({"portMappings": [
        {"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]})
    result = cnitool("add", "podnet", pod_ns.path, ifname="eth0", CAP_ARGS=mappings).ok()
    pod_ip = pod_addresses(result)[0]
    client = connect_client(netns_factory, host_ns)

    server = subprocess.Popen(["ip", "netns", "exec", pod_ns.name, "python3", "-c", SERVER])
    try:
        for _ in range(100):  # until the server listens
            if pod_ns.run("ss", "-Hltn", "sport = :8080").stdout.strip():
                break
            time.sleep(0.05)
        connect = (f"import socket; s=socket.create_connection(('{NODE_ADDRESS}', 18080), 5); "
                   "print(s.recv(100).decode())")
        done = client.run("python3", "-c", connect, check=False)
        assert "hello from the pod" in done.stdout, done.stderr
    finally:
        server.kill()
        server.wait()
    nat = host_ns.run("iptables-save", "-t", "nat").stdout
    assert f"--to-destination {pod_ip}:8080" in nat

    if version != "0.3.1":
        cnitool("check", "podnet", pod_ns.path, ifname="eth0", CAP_ARGS=mappings).ok()
    cnitool("del", "podnet", pod_ns.path, ifname="eth0", CAP_ARGS=mappings).ok()
    nat = host_ns.run("iptables-save", "-t", "nat").stdout
    assert pod_ip not in nat and "CNI-DN-" not in nat
    cnitool("del", "podnet", pod_ns.path, ifname="eth0", CAP_ARGS=mappings).ok()
