"""What tests/test_plugins_libcni.py needs beyond conformance.conftest: the sandbox wiring
(NICs that are veth ends in the sandbox host namespace), kernel state read with `ip -j`/`tc -j`,
host-local's files, and one libcni lifecycle step per verb with the result cache checked.

Every kernel change here happens inside sandbox namespaces the tests created.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

from conformance.conftest import CniTool
from tests.conftest import Netns, NetnsFactory

VERSIONS = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]
# Link kinds whose kernel module may be missing: the `ip link add` arguments that make one on
# a veth master, and the module that provides it.
PROBES = {"ipvlan": (("type", "ipvlan", "mode", "l2"), "ipvlan"),
          "vlan": (("type", "vlan", "id", "5"), "8021q")}


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def at_least(version: str, minimum: str) -> bool:
    return version_tuple(version) >= version_tuple(minimum)


# --- the sandbox: NICs, kernel state ---------------------------------------------------------

def wire_nic(host: Netns, peer_ns: Netns, nic: str, peer: str, mtu: int = 1500,
             peer_addresses: tuple[str, ...] = (), up: bool = True) -> str:
    """A veth end `nic` on the node standing for a NIC, its peer `peer` up in `peer_ns`
    holding `peer_addresses` (the other machines on the NIC's segment). Returns the NIC's
    MAC."""
    host.run("ip", "link", "add", nic, "mtu", str(mtu), "type", "veth", "peer", "name", peer,
             "netns", peer_ns.name)
    if up:
        host.run("ip", "link", "set", nic, "up")
    for cidr in peer_addresses:
        peer_ns.run("ip", "addr", "add", cidr, "dev", peer)
    peer_ns.run("ip", "link", "set", peer, "up")
    return str(host.link(nic)["address"])


def missing_link_kinds(factory: NetnsFactory) -> dict[str, str]:
    """Link kinds of PROBES this kernel cannot create, with the reason naming the module:
    tried on a veth in a scratch sandbox namespace."""
    probe = factory("probe")
    try:
        probe.run("ip", "link", "add", "probe0", "type", "veth", "peer", "name", "probe1")
        missing = {}
        for kind, (arguments, module) in PROBES.items():
            done = probe.run("ip", "link", "add", f"probe-{kind}", "link", "probe0",
                             *arguments, check=False)
            if done.returncode:
                missing[kind] = (f"this kernel has no {module} module "
                                 f"(`ip link add ... type {kind}`: {done.stderr.strip()})")
        return missing
    finally:
        factory.remove(probe)


def links(netns: Netns) -> list[str]:
    return sorted(item["ifname"] for item in netns.ip_json("link"))


def details(netns: Netns, name: str) -> dict[str, Any]:
    """`ip -d link show dev <name>`: with `linkinfo` (kind and its data)."""
    found = netns.ip_json("-d", "link", "show", "dev", name)
    assert found, f"no link {name} in {netns.name}"
    return found[0]  # type: ignore[no-any-return]


def kind(netns: Netns, name: str) -> str:
    return str(details(netns, name).get("linkinfo", {}).get("info_kind", ""))


def addresses(netns: Netns, dev: str) -> list[str]:
    """The global addresses of `dev` as CIDRs."""
    found = netns.ip_json("addr", "show", "dev", dev)
    return [f"{a['local']}/{a['prefixlen']}" for a in found[0]["addr_info"]
            if a.get("scope") == "global"]


def default_gateway(netns: Netns) -> str | None:
    routes = netns.ip_json("-4", "route", "show", "default")
    return str(routes[0]["gateway"]) if routes else None


def ping(source: Netns, address: str) -> bool:
    return source.run("ping", "-c1", "-w5", address, check=False).returncode == 0


def sysctl(netns: Netns, key: str) -> str:
    return netns.run("sysctl", "-n", key).stdout.strip()


def qdiscs(netns: Netns, dev: str) -> dict[str, dict[str, Any]]:
    """The qdiscs of `dev`: kind -> options (a tbf's `rate` in bytes per second)."""
    found = json.loads(netns.run("tc", "-j", "qdisc", "show", "dev", dev).stdout or "[]")
    return {q["kind"]: q.get("options", {}) for q in found}


def ifbs(netns: Netns) -> list[dict[str, Any]]:
    return [item for item in netns.ip_json("-d", "link")
            if item.get("linkinfo", {}).get("info_kind") == "ifb"]


def host_local_allocations(data_dir: Path, network: str) -> dict[str, str]:
    """host-local's files of `network`: address -> the container holding it."""
    held = {}
    directory = data_dir / network
    for path in directory.iterdir() if directory.exists() else []:
        try:
            ipaddress.ip_address(path.name.replace("_", ":"))
        except ValueError:
            continue  # lock, last_reserved_ip.*, .meta
        held[path.name] = path.read_text().splitlines()[0].strip()
    return held


def files(directory: Path) -> list[str]:
    """Every file under `directory` but lock files, relative to it (state a plugin keeps)."""
    if not directory.exists():
        return []
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*")
                  if path.is_file() and path.name != "lock" and not path.name.endswith(".lock"))


# --- results ---------------------------------------------------------------------------------

def assert_ips(result: dict[str, Any], version: str, expected: list[tuple[str, str | None]],
               interface: int = 0) -> None:
    """The result's `ips` are `expected` (address, gateway), pointing at `interface`, with
    the `version` field exactly below 1.0.0."""
    assert [(ip["address"], ip.get("gateway")) for ip in result["ips"]] == expected, result
    for ip in result["ips"]:
        assert ip["interface"] == interface, result
        if at_least(version, "1.0.0"):
            assert "version" not in ip, result
        else:
            assert ip["version"] == ("6" if ":" in ip["address"] else "4"), result


def pod_interface(result: dict[str, Any], pod: Netns, ifname: str) -> dict[str, Any]:
    """The result's entry for the pod interface (the one in the pod's sandbox)."""
    found = [i for i in result["interfaces"] if i.get("sandbox") == pod.path]
    assert [i["name"] for i in found] == [ifname], result
    return found[0]


# --- the libcni lifecycle, one verb at a time --------------------------------------------------

def add(tool: CniTool, network: str, pod: Netns, ifname: str, version: str,
        **env: str) -> dict[str, Any]:
    """cnitool add: the result at the config's version, cached by libcni."""
    result: dict[str, Any] = tool("add", network, pod.path, ifname=ifname, **env).ok()
    assert result["cniVersion"] == version, result
    cache = tool.result_cache(network, ifname)
    assert cache.is_file(), f"libcni cached no result at {cache}"
    cached = json.loads(cache.read_text())
    assert cached["containerId"] == tool.container_id and cached["ifName"] == ifname
    assert cached["networkName"] == network
    return result


def check(tool: CniTool, network: str, pod: Netns, ifname: str, version: str,
          **env: str) -> None:
    """cnitool check: passes from 0.4.0; before that libcni refuses without running a
    plugin."""
    done = tool("check", network, pod.path, ifname=ifname, **env)
    if at_least(version, "0.4.0"):
        done.ok()
    else:
        message = done.failed()
        assert f'configuration version "{version}" does not support the CHECK command' \
            in message, message


def delete(tool: CniTool, network: str, pod: Netns, ifname: str, **env: str) -> None:
    """cnitool del: succeeds and libcni drops the cached result."""
    tool("del", network, pod.path, ifname=ifname, **env).ok()
    cache = tool.result_cache(network, ifname)
    assert not cache.exists(), f"libcni kept the cached result {cache} after DEL"
