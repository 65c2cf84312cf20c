"""The flannel CNI plugin: the delegate it builds from subnet.env, and pods over their life.

Pods run in sandbox namespaces: the plugin runs as a real process in a sandbox "host"
namespace with CNI_PATH holding every pycni type, so bridge and host-local run as real
delegates. subnet.env, the saved delegates and host-local's allocations live in tmp_path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pycni.plugins.flannel import plugin, subnet_env

from pycni import spec
from pycni.errors import InvalidConfig
from pycni.skel import CmdArgs
from tests.conftest import (
    PYCNI,
    REPO,
    Netns,
    NetnsFactory,
    Outcome,
    cni_env,
    run_exec,
    run_in_process,
)

NETWORK, SUBNET = "10.244.0.0/16", "10.244.3.0/24"   # the cluster network, this node's lease
GATEWAY, POD_ADDRESS = "10.244.3.1", "10.244.3.2"
MTU = 1400


def lease(ipmasq: bool = True, mtu: int = MTU, ipv6: bool = False) -> subnet_env.SubnetEnv:
    return subnet_env.parse(
        f"FLANNEL_NETWORK={NETWORK}\nFLANNEL_SUBNET={GATEWAY}/24\nFLANNEL_MTU={mtu}\n"
        f"FLANNEL_IPMASQ={'true' if ipmasq else 'false'}\n"
        + ("FLANNEL_IPV6_NETWORK=fd44::/56\nFLANNEL_IPV6_SUBNET=fd44:0:0:3::1/64\n" if ipv6
           else ""))


# --- the sandbox node ------------------------------------------------------------------------

@dataclass
class Node:
    """The sandbox node: its namespace, CNI_PATH, subnet.env and the two data directories."""

    host: Netns
    namespaces: NetnsFactory
    cni_bin: Path
    tmp: Path

    @property
    def subnet_file(self) -> Path:
        return self.tmp / "subnet.env"

    @property
    def data_dir(self) -> Path:
        return self.tmp / "flannel"

    @property
    def ipam_dir(self) -> Path:
        return self.tmp / "ipam"

    def write_lease(self, env: subnet_env.SubnetEnv | None = None) -> None:
        subnet_env.write(str(self.subnet_file), env or lease())

    def pod(self) -> Netns:
        return self.namespaces("pod")

    def conf(self, version: str = "1.0.0", **keys: Any) -> dict[str, Any]:
        """A flannel config whose paths all lead into tmp_path."""
        return {"cniVersion": version, "name": "cbr0", "type": "flannel",
                "subnetFile": str(self.subnet_file), "dataDir": str(self.data_dir),
                "ipam": {"dataDir": str(self.ipam_dir)}, **keys}

    def run(self, command: str, conf: Any, pod: Netns | None = None, cid: str = "ctr-1",
            ifname: str = "eth0") -> Outcome:
        return run_exec([*PYCNI, "flannel"],
                        cni_env(command, pod.path if pod else "", ifname=ifname,
                                container_id=cid, path=str(self.cni_bin)),
                        conf, in_ns=self.host)

    def add(self, conf: Any, pod: Netns, cid: str = "ctr-1") -> Any:
        return self.run("ADD", conf, pod, cid).ok()

    def check(self, conf: dict[str, Any], result: Any, pod: Netns,
              cid: str = "ctr-1") -> Outcome:
        return self.run("CHECK", {**conf, "prevResult": result}, pod, cid)

    def saved_path(self, cid: str = "ctr-1", ifname: str = "eth0") -> Path:
        return self.data_dir / "cbr0" / f"{cid}:{ifname}"

    def saved(self, cid: str = "ctr-1", ifname: str = "eth0") -> Any:
        return json.loads(self.saved_path(cid, ifname).read_text())

    def saved_names(self) -> list[str]:
        directory = self.data_dir / "cbr0"
        return sorted(p.name for p in directory.iterdir()) if directory.exists() else []

    def allocations(self) -> dict[str, str]:
        """host-local's files: address -> the container holding it."""
        directory = self.ipam_dir / "cbr0"
        return {p.name: p.read_text().splitlines()[0] for p in directory.glob("10.*")
                } if directory.exists() else {}

    def rules(self) -> str:
        return "\n".join(self.host.run(*cmd, check=False).stdout for cmd in (
            ("iptables-save",), ("nft", "list", "ruleset")))


@pytest.fixture
def node(host_ns: Netns, netns_factory: NetnsFactory, cni_bin: Path, tmp_path: Path) -> Node:
    found = Node(host_ns, netns_factory, cni_bin, tmp_path)
    found.write_lease()
    return found


def veths(netns: Netns) -> list[str]:
    return [link["ifname"] for link in netns.ip_json("-d", "link")
            if link.get("linkinfo", {}).get("info_kind") == "veth"]


def addresses(netns: Netns, dev: str) -> list[str]:
    found = netns.ip_json("addr", "show", "dev", dev)
    return [f"{a['local']}/{a['prefixlen']}" for a in found[0]["addr_info"]
            if a.get("scope") == "global"]


def routes(netns: Netns) -> list[tuple[str, str | None]]:
    return [(r["dst"], r.get("gateway")) for r in netns.ip_json("-4", "route")]


# --- the delegate built from subnet.env (no kernel) -----------------------------------------

def conf_args(conf: dict[str, Any], version: str = "1.0.0") -> CmdArgs:
    return CmdArgs("ADD", "ctr-1", "", "eth0", "", [], b"", conf, version, {})


def build(env: subnet_env.SubnetEnv, **keys: Any) -> dict[str, Any]:
    args = conf_args({"name": "cbr0", "type": "flannel", **keys})
    return plugin.build_delegate(plugin.load_conf(args), env, args.cni_version)


def test_default_delegate_is_a_gateway_bridge_over_the_lease() -> None:
    assert build(lease(ipmasq=True)) == {
        "name": "cbr0", "type": "bridge", "ipMasq": False, "mtu": MTU, "isGateway": True,
        "cniVersion": "1.0.0",
        "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET}]],
                 "routes": [{"dst": NETWORK}]}}
    assert build(lease(ipmasq=False))["ipMasq"] is True  # the agent does not: bridge must


def test_delegate_keys_win_and_only_bridge_gets_is_gateway() -> None:
    delegate = build(lease(ipmasq=False), delegate={"ipMasq": False, "mtu": 9000,
                                                    "isGateway": False, "hairpinMode": True})
    assert (delegate["ipMasq"], delegate["mtu"], delegate["isGateway"],
            delegate["hairpinMode"]) == (False, 9000, False, True)
    other = build(lease(), delegate={"type": "ipvlan", "master": "eth0"})
    assert other["type"] == "ipvlan" and "isGateway" not in other
    assert other["mtu"] == MTU  # as the reference: mtu and ipMasq go to any delegate
    assert "mtu" not in build(lease(mtu=0))  # no MTU leased: the delegate's default


def test_dual_stack_lease_gives_a_range_set_and_a_route_per_family() -> None:
    ipam = build(lease(ipv6=True))["ipam"]
    assert ipam["ranges"] == [[{"subnet": SUBNET}], [{"subnet": "fd44:0:0:3::/64"}]]
    assert ipam["routes"] == [{"dst": NETWORK}, {"dst": "fd44::/56"}]


def test_user_ipam_keys_stay_ranges_are_replaced_routes_come_first() -> None:
    ipam = build(lease(), ipam={"type": "host-local", "dataDir": "/x",
                                "ranges": [[{"subnet": "192.168.0.0/24"}]],
                                "routes": [{"dst": "0.0.0.0/0"}]})["ipam"]
    assert ipam == {"type": "host-local", "dataDir": "/x", "ranges": [[{"subnet": SUBNET}]],
                    "routes": [{"dst": "0.0.0.0/0"}, {"dst": NETWORK}]}
    assert build(lease(), ipam={"type": "static"})["ipam"]["type"] == "static"


def test_runtime_config_and_capabilities_reach_the_delegate() -> None:
    runtime = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}
    delegate = build(lease(), capabilities={"portMappings": True}, runtimeConfig=runtime)
    assert delegate["runtimeConfig"] == runtime
    assert delegate["capabilities"] == {"portMappings": True}


@pytest.mark.parametrize(("keys", "message"), [
    ({"delegate": {"name": "other"}}, "must not have 'name' field"),
    ({"delegate": {"ipam": {"type": "host-local"}}}, "must not have 'ipam' field"),
    ({"delegate": {"type": 5}}, "must have (string) 'type' field"),
    ({"delegate": "bridge"}, "delegate must be a JSON object"),
    ({"ipam": ["host-local"]}, "ipam must be a JSON object"),
    ({"ipam": {"routes": {"dst": NETWORK}}}, "failed to parse ipam.routes"),
    ({"ipam": {"routes": [{"dst": "10.0.0.0/33"}]}}, "failed to parse ipam.routes"),
    ({"ipam": {"routes": [{"gw": "10.0.0.1"}]}}, "failed to parse ipam.routes"),
    ({"subnetFile": 7}, "subnetFile must be a string"),
])
def test_refused_keys(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidConfig, match=message.replace("(", r"\(").replace(")", r"\)")):
        build(lease(), **keys)


def test_refused_keys_are_code_7_and_leave_nothing(node: Node) -> None:
    pod = node.pod()
    outcome = node.run("ADD", node.conf(delegate={"name": "mine"}), pod)
    assert "'delegate' dictionary must not have 'name' field" in outcome.error(7)["msg"]
    outcome = node.run("ADD", node.conf(delegate={"ipam": {}}), pod)
    assert "'delegate' dictionary must not have 'ipam' field" in outcome.error(7)["msg"]
    outcome = node.run("ADD", node.conf(), pod, ifname="eth+0")  # no file can be named so
    assert "invalid key 'ctr-1:eth+0'" in outcome.error(7)["msg"]
    assert node.run("DEL", node.conf(), pod, ifname="eth+0").ok() is None
    assert node.saved_names() == [] and veths(node.host) == []


def test_saved_keys_split_back_into_attachments() -> None:
    assert plugin.attachment_of("ctr-1:eth0") == ("ctr-1", "eth0")
    assert plugin.attachment_of("ctr-1") is None


# --- pods over their life ---------------------------------------------------------------------

@pytest.mark.parametrize("version", spec.ALL)
def test_add_check_del_every_version(version: str, node: Node) -> None:
    pod = node.pod()
    conf = node.conf(version)
    result = node.add(conf, pod)

    assert result["cniVersion"] == version
    assert addresses(pod, "eth0") == [f"{POD_ADDRESS}/24"]
    assert (NETWORK, GATEWAY) in routes(pod)
    assert not any(dst == "default" for dst, _ in routes(pod))  # no isDefaultGateway
    [veth] = veths(node.host)
    assert pod.link("eth0")["mtu"] == MTU and node.host.link(veth)["mtu"] == MTU
    assert node.host.link(veth)["master"] == "cni0"
    assert addresses(node.host, "cni0") == [f"{GATEWAY}/24"]
    assert node.allocations() == {POD_ADDRESS: "ctr-1"}
    assert node.saved() == {
        "name": "cbr0", "type": "bridge", "ipMasq": False, "mtu": MTU, "isGateway": True,
        "cniVersion": version,
        "ipam": {"dataDir": str(node.ipam_dir), "type": "host-local",
                 "ranges": [[{"subnet": SUBNET}]], "routes": [{"dst": NETWORK}]}}
    if spec.at_least(version, "0.3.0"):
        assert [ip["address"] for ip in result["ips"]] == [f"{POD_ADDRESS}/24"]
        assert {"dst": NETWORK} in result["routes"]
    else:
        assert result["ip4"]["ip"] == f"{POD_ADDRESS}/24"

    check = node.check(conf, result, pod)
    if spec.at_least(version, "0.4.0"):
        assert check.ok() is None
    else:
        check.error(1)

    node.subnet_file.unlink()  # DEL never needs the lease
    for _ in range(2):  # DEL, then DEL again
        assert node.run("DEL", conf, pod).ok() is None
        assert veths(node.host) == [] and [link["ifname"] for link in pod.ip_json("link")] == [
            "lo"]
        assert node.saved_names() == [] and node.allocations() == {}


def test_seed_conflist_entry_gives_the_expected_delegate(node: Node) -> None:
    """The users' flannel entry as libcni hands it over (the list's name and version added),
    with only its paths moved into the sandbox."""
    seed = json.loads((REPO / "tests" / "seeds" / "10-flannel.conflist").read_text())
    entry = {"name": seed["name"], "cniVersion": seed["cniVersion"], **seed["plugins"][0]}
    conf = {**entry, "subnetFile": str(node.subnet_file), "dataDir": str(node.data_dir),
            "ipam": {"dataDir": str(node.ipam_dir)}}
    pod = node.pod()
    result = node.add(conf, pod)

    assert node.saved() == {
        "hairpinMode": True, "isDefaultGateway": True,
        "name": "cbr0", "type": "bridge", "ipMasq": False, "mtu": MTU, "isGateway": True,
        "cniVersion": "0.3.1",
        "ipam": {"dataDir": str(node.ipam_dir), "type": "host-local",
                 "ranges": [[{"subnet": SUBNET}]], "routes": [{"dst": NETWORK}]}}
    assert result["cniVersion"] == "0.3.1"
    assert {("default", GATEWAY), (NETWORK, GATEWAY)} <= set(routes(pod))
    [veth] = veths(node.host)
    port = node.host.ip_json("-d", "link", "show", "dev", veth)[0]["linkinfo"]
    assert port["info_slave_data"]["hairpin"] is True
    assert node.run("DEL", conf, pod).ok() is None
    assert veths(node.host) == [] and node.saved_names() == []


@pytest.mark.parametrize("agent_masquerades", [True, False])
def test_ip_masq_follows_flannel_ipmasq(agent_masquerades: bool, node: Node) -> None:
    node.write_lease(lease(ipmasq=agent_masquerades))
    conf = node.conf(delegate={"ipMasqBackend": "nftables"})
    pod = node.pod()
    node.add(conf, pod)
    assert node.saved()["ipMasq"] is not agent_masquerades
    assert (POD_ADDRESS in node.rules()) is not agent_masquerades
    node.run("DEL", conf, pod).ok()
    assert POD_ADDRESS not in node.rules()


def test_del_with_the_pod_namespace_gone(node: Node) -> None:
    conf = node.conf()
    pod = node.pod()
    node.add(conf, pod)
    node.namespaces.remove(pod)  # the veth pair goes with it
    for _ in range(2):
        assert node.run("DEL", conf, pod).ok() is None
        assert node.saved_names() == [] and node.allocations() == {}
    assert veths(node.host) == []


def test_del_forgets_a_saved_file_that_is_not_a_delegate_config(node: Node) -> None:
    node.saved_path().parent.mkdir(parents=True)
    node.saved_path().write_text("{not json")
    assert node.run("DEL", node.conf(), node.pod()).ok() is None
    assert node.saved_names() == []


def test_del_finds_the_reference_plugins_saved_file(node: Node) -> None:
    """A node upgraded from the reference plugin: its file is dataDir/<containerID>."""
    conf = node.conf()
    pod = node.pod()
    node.add(conf, pod)
    legacy = node.data_dir / "ctr-1"
    node.saved_path().rename(legacy)
    assert node.run("DEL", conf, pod).ok() is None
    assert not legacy.exists() and veths(node.host) == [] and node.allocations() == {}


# --- failures leave nothing -------------------------------------------------------------------

def test_missing_subnet_file_is_try_again_later_and_leaves_nothing(node: Node) -> None:
    node.subnet_file.unlink()
    pod = node.pod()
    error = node.run("ADD", node.conf(), pod).error(11)
    assert "flannel agent" in error["msg"] and str(node.subnet_file) in error["msg"]
    assert node.saved_names() == [] and veths(node.host) == []
    assert [link["ifname"] for link in node.host.ip_json("link")] == ["lo"]

    node.subnet_file.write_text("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=nonsense\n")
    error = node.run("ADD", node.conf(), pod).error(7)
    assert str(node.subnet_file) in error["msg"]
    assert node.saved_names() == []


def test_failed_delegate_add_removes_the_saved_file(node: Node) -> None:
    pod = node.pod()
    error = node.run("ADD", node.conf(delegate={"vlan": 5000}), pod).error(7)
    assert "VLAN" in error["msg"]  # the delegate's own error, code and all
    node.run("ADD", node.conf(delegate={"type": "no-such-plugin"}), pod).error(7)
    assert node.saved_names() == [] and veths(node.host) == [] and node.allocations() == {}


# --- CHECK, STATUS, GC --------------------------------------------------------------------------

def test_check_fails_when_the_address_or_the_saved_file_is_gone(node: Node) -> None:
    conf = node.conf()
    pod = node.pod()
    result = node.add(conf, pod)
    node.check(conf, result, pod).ok()

    pod.run("ip", "addr", "del", f"{POD_ADDRESS}/24", "dev", "eth0")
    assert f"lacks address {POD_ADDRESS}/24" in node.check(conf, result, pod).error(999)["msg"]

    node.saved_path().unlink()
    error = node.check(conf, result, pod).error(999)
    assert "no saved delegate config" in error["msg"] and "ctr-1" in error["msg"]
    assert str(node.saved_path()) in error["details"]


def test_status_needs_the_agents_lease(node: Node) -> None:
    conf = node.conf("1.1.0")
    env = cni_env("STATUS", path=str(node.cni_bin))
    assert run_in_process(plugin.PLUGIN, env, conf).ok() is None  # forwarded to bridge
    node.subnet_file.write_text("FLANNEL_SUBNET=10.244.3.1/33\n")
    error = run_in_process(plugin.PLUGIN, env, conf).error(50)
    assert "flannel agent" in error["msg"] and str(node.subnet_file) in error["details"]
    node.subnet_file.unlink()
    error = run_in_process(plugin.PLUGIN, env, conf).error(50)
    assert "flannel agent" in error["msg"] and str(node.subnet_file) in error["details"]


def test_gc_forgets_attachments_the_runtime_no_longer_lists(node: Node) -> None:
    conf = node.conf("1.1.0")
    for cid in ("ctr-keep", "ctr-gone"):
        node.add(conf, node.pod(), cid)
    assert node.saved_names() == ["ctr-gone:eth0", "ctr-keep:eth0"]

    valid = [{"containerID": "ctr-keep", "ifname": "eth0"}]
    assert node.run("GC", {**conf, "cni.dev/valid-attachments": valid}).ok() is None
    assert node.saved_names() == ["ctr-keep:eth0"]
    assert list(node.allocations().values()) == ["ctr-keep"]  # the delegate's GC ran

    node.subnet_file.unlink()  # no lease: the saved files still go
    assert node.run("GC", {**conf, "cni.dev/valid-attachments": []}).ok() is None
    assert node.saved_names() == []
