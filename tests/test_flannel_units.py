"""The flannel agent's parts on their own: net-conf, subnet.env, leases, the underlay choice,
batched netlink changes, firewall scripts."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from pycni.plugins.flannel import lease, masquerade, netconf, subnet_env, underlay

from tests.conftest import Netns

SEEDS = Path(__file__).parent / "seeds"


# --- net-conf.json --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["vxlan", "host-gw", "vxlan-directrouting"])
def test_seed_net_confs_parse_with_flanneld_defaults(name: str) -> None:
    config = netconf.load(str(SEEDS / f"net-conf.{name}.json"))
    assert config.network == ipaddress.IPv4Network("10.244.0.0/16")
    assert (config.subnet_len, str(config.subnet_min), str(config.subnet_max)) == (
        24, "10.244.1.0", "10.244.255.0")
    assert config.backend.type == name.split("-directrouting")[0]
    assert config.backend.vni == 1 and config.backend.udp_port == 8472
    assert config.backend.direct_routing == (name == "vxlan-directrouting")
    subnets = list(config.candidate_subnets())
    assert len(subnets) == 255 and str(subnets[0]) == "10.244.1.0/24"


def test_subnet_bounds_and_options() -> None:
    config = netconf.parse({"Network": "10.10.0.0/16", "SubnetLen": 26,
                            "SubnetMin": "10.10.4.0", "SubnetMax": "10.10.4.192",
                            "Backend": {"Type": "vxlan", "VNI": 42, "Port": 4789, "GBP": True,
                                        "MTU": 1400}})
    assert [str(s) for s in config.candidate_subnets()] == [
        "10.10.4.0/26", "10.10.4.64/26", "10.10.4.128/26", "10.10.4.192/26"]
    assert (config.backend.vni, config.backend.udp_port, config.backend.gbp,
            config.backend.mtu) == (42, 4789, True, 1400)
    dual = netconf.parse({"Network": "10.244.0.0/16", "EnableIPv6": True,
                          "IPv6Network": "fd00:10:244::/56"})
    assert dual.ipv6_subnet_len == 64
    assert str(dual.ipv6_subnet_for(ipaddress.IPv4Network("10.244.3.0/24"))) == \
        "fd00:10:244:3::/64"


@pytest.mark.parametrize(("raw", "message"), [
    ("{", "not JSON"),
    ({"Backend": {"Type": "vxlan"}}, "Network is required"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}, "not supported"),
    ({"Network": "10.244.0.0/16", "SubnetLen": 16}, "SubnetLen 16"),
    ({"Network": "10.244.0.0/16", "SubnetMin": "10.1.0.0"}, "not in Network"),
    ({"Network": "10.244.0.0/16", "SubnetMin": "10.244.9.0", "SubnetMax": "10.244.2.0"},
     "after"),
    ({"Network": "10.244.0.0/16", "EnableIPv4": False}, "both false"),
    ({"Network": "10.244.0.0/16", "Backend": {"VNI": -1}}, "VNI"),
])
def test_bad_net_conf_is_refused_with_a_reason(raw: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        netconf.parse(raw if isinstance(raw, str) else json.dumps(raw))


# --- subnet.env ------------------------------------------------------------------------------

def test_subnet_env_round_trip_and_atomic_write(tmp_path: Path) -> None:
    env = subnet_env.SubnetEnv(
        network=ipaddress.IPv4Network("10.244.0.0/16"),
        subnet=ipaddress.IPv4Interface("10.244.3.1/24"),
        ipv6_network=ipaddress.IPv6Network("fd00::/56"),
        ipv6_subnet=ipaddress.IPv6Interface("fd00:0:0:3::1/64"), mtu=1450, ipmasq=True)
    path = tmp_path / "run" / "subnet.env"
    subnet_env.write(str(path), env)
    text = path.read_text()
    assert text.splitlines() == [
        "FLANNEL_NETWORK=10.244.0.0/16", "FLANNEL_SUBNET=10.244.3.1/24",
        "FLANNEL_IPV6_NETWORK=fd00::/56", "FLANNEL_IPV6_SUBNET=fd00:0:0:3::1/64",
        "FLANNEL_MTU=1450", "FLANNEL_IPMASQ=true"]
    assert subnet_env.read(str(path)) == env
    assert [p.name for p in path.parent.iterdir()] == ["subnet.env"]   # no temp file left


@pytest.mark.parametrize(("text", "message"), [
    ("FLANNEL_NETWORK=10.244.0.0/16\n", "neither"),
    ("FLANNEL_SUBNET=10.244.1.1/24\n", "together"),
    ("garbage\n", "not KEY=value"),
    ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=nonsense\n", "bad value"),
])
def test_bad_subnet_env_names_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        subnet_env.parse(text)


# --- leases ----------------------------------------------------------------------------------

def test_lease_keys_and_attributes_use_flanneld_formats() -> None:
    v4 = ipaddress.IPv4Network("10.244.3.0/24")
    v6 = ipaddress.IPv6Network("fd00:0:0:3::/64")
    assert lease.subnet_key(v4) == "10.244.3.0-24"
    assert lease.subnet_key(v4, v6) == "10.244.3.0-24&fd00:0:0:3::-64"
    assert lease.parse_subnet_key("10.244.3.0-24&fd00:0:0:3::-64") == (v4, v6)
    for bad in ("10.244.3.0", "10.244.3.0-x", "10.244.3.0-24&10.244.4.0-24"):
        with pytest.raises(ValueError):
            lease.parse_subnet_key(bad)
    raw = {"PublicIP": "192.168.0.10", "BackendType": "vxlan",
           "BackendData": {"VNI": 1, "VtepMAC": "0a:58:00:00:00:01"}}
    assert lease.LeaseAttrs.from_json(raw).to_json() == raw
    with pytest.raises(ValueError):
        lease.LeaseAttrs.from_json({"PublicIP": "not an address", "BackendType": "vxlan"})
    with pytest.raises(ValueError):
        lease.LeaseAttrs.from_json({"BackendType": "vxlan"})


# --- firewall scripts ------------------------------------------------------------------------

def test_masquerade_rules_keep_pod_to_pod_traffic_unmasqueraded() -> None:
    network = ipaddress.IPv4Network("10.244.0.0/16")
    subnet = ipaddress.IPv4Network("10.244.3.0/24")
    script = masquerade.iptables_script(network, subnet, True)
    assert "-A FLANNEL-POSTRTG -s 10.244.3.0/24 -d 10.244.0.0/16" in script
    assert "! -d 224.0.0.0/4" in script and script.count("MASQUERADE") == 2
    assert "MASQUERADE" not in masquerade.iptables_script(network, subnet, False)
    nft = masquerade.nftables_script(network, subnet, True)
    assert "table ip flannel-ipv4" in nft and nft.count("masquerade fully-random") == 2


# --- the underlay ----------------------------------------------------------------------------

@pytest.fixture
def multi_homed(host_ns: Netns) -> Netns:
    """eth0 192.168.0.10/24 with the default route, eth1 10.0.0.10/24, ens5 172.16.5.10/24."""
    for name, address in (("eth0", "192.168.0.10/24"), ("eth1", "10.0.0.10/24"),
                          ("ens5", "172.16.5.10/24")):
        host_ns.run("ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}-p")
        host_ns.run("ip", "addr", "add", address, "dev", name)
        host_ns.run("ip", "link", "set", name, "up")
        host_ns.run("ip", "link", "set", f"{name}-p", "up")
    host_ns.run("ip", "route", "add", "default", "via", "192.168.0.1")
    return host_ns


@pytest.mark.kernel
@pytest.mark.parametrize(("ifaces", "regexes", "public_ip", "expected"), [
    ([], [], None, ("eth0", "192.168.0.10")),
    (["eth1"], [], None, ("eth1", "10.0.0.10")),
    (["172.16.5.10"], [], None, ("ens5", "172.16.5.10")),
    (["missing", "eth1"], [], None, ("eth1", "10.0.0.10")),
    ([], [r"ens\d+"], None, ("ens5", "172.16.5.10")),
    ([], [r"10\.0\.0\.\d+"], None, ("eth1", "10.0.0.10")),
    ([], [], "10.0.0.10", ("eth1", "10.0.0.10")),
    (["eth0"], [], "203.0.113.7", ("eth0", "203.0.113.7")),
])
def test_underlay_choice_follows_flanneld_rules(multi_homed: Netns, ifaces: list[str],
                                                 regexes: list[str], public_ip: str | None,
                                                 expected: tuple[str, str]) -> None:
    from pycni import netns

    with netns.ipr(multi_homed.path) as ipr:
        found = underlay.find(ipr, ifaces, regexes, public_ip)
    assert (found.name, str(found.public_ip)) == expected


@pytest.mark.kernel
@pytest.mark.parametrize(("ifaces", "regexes", "public_ip", "message"), [
    (["nope"], [], None, "none of the interfaces"),
    ([], ["wlan.*"], None, "no interface matches"),
    ([], ["("], None, "bad --iface-regex"),
    ([], [], "10.9.9.9", "no interface holds"),
])
def test_underlay_errors_say_what_was_asked(multi_homed: Netns, ifaces: list[str],
                                            regexes: list[str], public_ip: str | None,
                                            message: str) -> None:
    from pycni import netns

    with netns.ipr(multi_homed.path) as ipr, pytest.raises(underlay.UnderlayError,
                                                            match=message):
        underlay.find(ipr, ifaces, regexes, public_ip)


@pytest.mark.kernel
def test_netlink_batch_applies_many_changes_and_reports_refusals(host_ns: Netns) -> None:
    from pycni.plugins.flannel.netlink_batch import Batch

    from pycni import netns

    host_ns.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-p")
    host_ns.run("ip", "link", "set", "eth0", "up")
    host_ns.run("ip", "link", "set", "eth0-p", "up")
    host_ns.run("ip", "link", "set", "lo", "up")
    index = int(host_ns.link("eth0")["ifindex"])
    batch = Batch()
    for third in range(300):
        batch.route_replace(f"10.{third // 250}.{third % 250}.0", 24, "10.255.0.1", index,
                            onlink=True)
    batch.route_replace("10.9.0.0", 24, "10.255.0.1", 999999, onlink=True)   # no such link
    batch.route_delete("10.8.0.0", 24, "10.255.0.1", index)                  # gone: fine
    with netns.entered(host_ns.path):
        failures = batch.commit()
    assert len(batch) == 0
    assert [f.what for f in failures] == ["route 10.9.0.0/24 via 10.255.0.1"]
    assert "No such device" in str(failures[0])
    routes = host_ns.run("ip", "route", "show", "dev", "eth0").stdout.splitlines()
    assert len(routes) == 300 and all("onlink" in r for r in routes)
