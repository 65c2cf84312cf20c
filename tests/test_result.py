"""pycni.result: the newest result form printed at every spec version, and parsed back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pycni import spec
from pycni.errors import DecodeFailure, IncompatibleVersion
from pycni.result import CONVERTERS, Interface, IPConfig, Result, Route

SANDBOX = "/var/run/netns/pod-1"
DNS = {"nameservers": ["10.1.0.2", "fd00::2"], "domain": "cluster.local",
       "search": ["svc.cluster.local", "cluster.local"], "options": ["ndots:5"]}


def full_result() -> Result:
    """Every field the newest form has, on two interfaces and two address families."""
    return Result(
        interfaces=[
            Interface("cni0", mac="aa:bb:cc:dd:ee:01"),
            Interface("eth0", mac="aa:bb:cc:dd:ee:02", sandbox=SANDBOX, mtu=1450,
                      socket_path="/run/vhost/eth0.sock", pci_id="0000:3b:00.2"),
        ],
        ips=[
            IPConfig("10.1.0.5/24", gateway="10.1.0.1", interface=1),
            IPConfig("fd00::5/64", gateway="fd00::1", interface=1),
            IPConfig("10.1.0.6/24", interface=1),  # a second IPv4: not in legacy output
        ],
        routes=[
            Route("0.0.0.0/0", gw="10.1.0.1", mtu=1400, advmss=1360, priority=100, table=10,
                  scope=0),
            Route("10.2.0.0/16"),
            Route("::/0", gw="fd00::1", priority=200),
        ],
        dns=dict(DNS),
    )


IFACE_HOST = {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"}
IFACE_POD_OLD = {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": SANDBOX}
IFACE_POD_V11 = {**IFACE_POD_OLD, "mtu": 1450, "socketPath": "/run/vhost/eth0.sock",
                 "pciID": "0000:3b:00.2"}
IPS = [
    {"interface": 1, "address": "10.1.0.5/24", "gateway": "10.1.0.1"},
    {"interface": 1, "address": "fd00::5/64", "gateway": "fd00::1"},
    {"interface": 1, "address": "10.1.0.6/24"},
]
IPS_WITH_VERSION = [{"version": v, **ip} for v, ip in zip(("4", "6", "4"), IPS, strict=True)]
ROUTES_OLD = [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "10.2.0.0/16"},
              {"dst": "::/0", "gw": "fd00::1"}]
ROUTES_V11 = [
    {"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1400, "advmss": 1360, "priority": 100,
     "table": 10, "scope": 0},
    {"dst": "10.2.0.0/16"},
    {"dst": "::/0", "gw": "fd00::1", "priority": 200},
]


def expected(version: str) -> dict[str, Any]:
    """What `full_result()` must look like at `version`, written out by hand."""
    if version == "1.1.0":
        return {"cniVersion": version, "interfaces": [IFACE_HOST, IFACE_POD_V11], "ips": IPS,
                "routes": ROUTES_V11, "dns": DNS}
    if version == "1.0.0":
        return {"cniVersion": version, "interfaces": [IFACE_HOST, IFACE_POD_OLD], "ips": IPS,
                "routes": ROUTES_OLD, "dns": DNS}
    if version in ("0.3.0", "0.3.1", "0.4.0"):
        return {"cniVersion": version, "interfaces": [IFACE_HOST, IFACE_POD_OLD],
                "ips": IPS_WITH_VERSION, "routes": ROUTES_OLD, "dns": DNS}
    assert version in ("0.1.0", "0.2.0")
    return {
        "cniVersion": version,
        "ip4": {"ip": "10.1.0.5/24", "gateway": "10.1.0.1",
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "10.2.0.0/16"}]},
        "ip6": {"ip": "fd00::5/64", "gateway": "fd00::1",
                "routes": [{"dst": "::/0", "gw": "fd00::1"}]},
        "dns": DNS,
    }


def test_every_version_has_a_converter() -> None:
    assert set(CONVERTERS) == set(spec.ALL)


@pytest.mark.parametrize("version", spec.ALL)
def test_print_at_every_version(version: str) -> None:
    out = full_result().to_version(version)
    assert out == expected(version)
    # What a plugin prints must survive JSON unchanged.
    assert json.loads(json.dumps(out)) == out


@pytest.mark.parametrize("version", spec.ALL)
def test_printing_does_not_change_the_result(version: str) -> None:
    result = full_result()
    result.to_version(version)
    assert result.to_version("1.1.0") == expected("1.1.0")


def test_unknown_version_cannot_be_printed() -> None:
    with pytest.raises(IncompatibleVersion) as info:
        full_result().to_version("2.0.0")
    assert info.value.code == 1
    assert "2.0.0" in info.value.msg


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0"])
def test_no_ips_cannot_convert_to_legacy(version: str) -> None:
    result = Result(interfaces=[Interface("eth0", mac="aa:bb:cc:dd:ee:02", sandbox=SANDBOX)])
    with pytest.raises(IncompatibleVersion) as info:
        result.to_version(version)
    assert info.value.code == 1
    assert version in info.value.msg


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_no_ips_is_fine_at_current_versions(version: str) -> None:
    result = Result(interfaces=[Interface("lo", mac="00:00:00:00:00:00", sandbox=SANDBOX)])
    assert result.to_version(version) == {
        "cniVersion": version,
        "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": SANDBOX}],
    }
    assert Result().to_version(version) == {"cniVersion": version}


def test_ipv6_only_legacy_has_only_ip6() -> None:
    result = Result(ips=[IPConfig("fd00::5/64")], routes=[Route("10.0.0.0/8", gw="10.0.0.1")])
    assert result.to_version("0.2.0") == {"cniVersion": "0.2.0", "ip6": {"ip": "fd00::5/64"}}


def test_ipam_result_has_no_interfaces() -> None:
    """An IPAM plugin's result: no interfaces, no ips[].interface."""
    result = Result(ips=[IPConfig("10.1.0.5/24", "10.1.0.1")], routes=[Route("0.0.0.0/0")])
    assert result.to_version("1.0.0") == {
        "cniVersion": "1.0.0",
        "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1"}],
        "routes": [{"dst": "0.0.0.0/0"}],
    }
    assert result.to_version("0.3.1")["ips"] == [
        {"version": "4", "address": "10.1.0.5/24", "gateway": "10.1.0.1"}]


def test_empty_dns_values_are_dropped() -> None:
    result = Result(ips=[IPConfig("10.1.0.5/24")],
                    dns={"nameservers": ["10.1.0.2"], "domain": "", "search": [], "options": []})
    assert result.to_version("1.1.0")["dns"] == {"nameservers": ["10.1.0.2"]}
    assert result.to_version("0.2.0")["dns"] == {"nameservers": ["10.1.0.2"]}
    assert "dns" not in Result(ips=[IPConfig("10.1.0.5/24")],
                               dns={"nameservers": []}).to_version("1.0.0")


def test_interface_index_zero_is_kept() -> None:
    out = Result(ips=[IPConfig("127.0.0.1/8", interface=0)]).to_version("1.0.0")
    assert out["ips"] == [{"interface": 0, "address": "127.0.0.1/8"}]


def test_ip_version_property() -> None:
    assert IPConfig("10.0.0.1/32").version == "4"
    assert IPConfig("::1/128").version == "6"
    assert IPConfig("::ffff:10.0.0.1/128").version == "6"


# Parsing: every version's output back into the newest form.

def test_round_trip_at_1_1_0_is_lossless() -> None:
    out = full_result().to_version("1.1.0")
    parsed = Result.from_dict(json.loads(json.dumps(out)))
    assert parsed.to_version("1.1.0") == out
    pod = parsed.interfaces[1]
    assert (pod.mtu, pod.socket_path, pod.pci_id) == (1450, "/run/vhost/eth0.sock",
                                                       "0000:3b:00.2")
    first = parsed.routes[0]
    assert (first.mtu, first.advmss, first.priority, first.table, first.scope) == (
        1400, 1360, 100, 10, 0)


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0"])
def test_parse_current_versions(version: str) -> None:
    out = full_result().to_version(version)
    parsed = Result.from_dict(out)
    # Reprinting at the same version reproduces it; ips[].version is derived, not stored.
    assert parsed.to_version(version) == out
    assert [(ip.address, ip.gateway, ip.interface) for ip in parsed.ips] == [
        ("10.1.0.5/24", "10.1.0.1", 1), ("fd00::5/64", "fd00::1", 1), ("10.1.0.6/24", None, 1)]
    assert [i.name for i in parsed.interfaces] == ["cni0", "eth0"]
    assert parsed.interfaces[1].sandbox == SANDBOX
    assert parsed.dns == DNS
    # Fields the version does not have come back empty; printing at 1.1.0 adds nothing.
    assert parsed.to_version("1.1.0") == {**expected("1.0.0"), "cniVersion": "1.1.0"}


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0"])
def test_parse_legacy_versions(version: str) -> None:
    out = full_result().to_version(version)
    parsed = Result.from_dict(out)
    assert parsed.interfaces == []
    assert [(ip.address, ip.gateway, ip.interface) for ip in parsed.ips] == [
        ("10.1.0.5/24", "10.1.0.1", None), ("fd00::5/64", "fd00::1", None)]
    assert [r.to_dict() for r in parsed.routes] == [
        {"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "10.2.0.0/16"},
        {"dst": "::/0", "gw": "fd00::1"}]
    assert parsed.dns == DNS
    assert parsed.to_version(version) == out
    assert parsed.to_version("1.0.0") == {
        "cniVersion": "1.0.0",
        "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1"},
                {"address": "fd00::5/64", "gateway": "fd00::1"}],
        "routes": ROUTES_OLD,
        "dns": DNS,
    }


def test_parse_legacy_without_cni_version() -> None:
    parsed = Result.from_dict({"ip4": {"ip": "10.1.0.5/24"}})
    assert [ip.address for ip in parsed.ips] == ["10.1.0.5/24"]
    assert parsed.routes == []


def test_parse_without_cni_version_keeps_current_form() -> None:
    """A result lacking cniVersion but shaped like 0.3+ must not lose its addresses."""
    parsed = Result.from_dict({"ips": [{"address": "10.1.0.5/24"}],
                               "interfaces": [{"name": "eth0"}]})
    assert [ip.address for ip in parsed.ips] == ["10.1.0.5/24"]
    assert [i.name for i in parsed.interfaces] == ["eth0"]


def test_parse_empty_result() -> None:
    parsed = Result.from_dict({"cniVersion": "1.0.0"})
    assert (parsed.interfaces, parsed.ips, parsed.routes, parsed.dns) == ([], [], [], {})
    parsed = Result.from_dict({"cniVersion": "1.0.0", "ips": None, "dns": None})
    assert (parsed.ips, parsed.dns) == ([], {})


@pytest.mark.parametrize("data", [
    None,
    [],
    "a result",
    42,
    {"cniVersion": "1.0.0", "ips": [{"gateway": "10.1.0.1"}]},
    {"cniVersion": "1.0.0", "ips": "10.1.0.5/24"},
    {"cniVersion": "1.0.0", "ips": 5},
    {"cniVersion": "1.0.0", "ips": [5]},
    {"cniVersion": "1.0.0", "ips": [{"address": 5}]},
    {"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.5/24", "gateway": 7}]},
    {"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.5/24", "interface": "eth0"}]},
    {"cniVersion": "1.0.0", "interfaces": [{"mac": "aa:bb:cc:dd:ee:02"}]},
    {"cniVersion": "1.0.0", "interfaces": [{"name": None}]},
    {"cniVersion": "1.0.0", "interfaces": {"name": "eth0"}},
    {"cniVersion": "1.0.0", "routes": [{"gw": "10.1.0.1"}]},
    {"cniVersion": "1.0.0", "routes": [{"dst": ["0.0.0.0/0"]}]},
    {"cniVersion": "1.0.0", "dns": "10.1.0.2"},
    {"cniVersion": "1.0.0", "dns": ["10.1.0.2"]},
    {"cniVersion": "0.2.0", "ip4": {"gateway": "10.1.0.1"}},
    {"cniVersion": "0.2.0", "ip4": "10.1.0.5/24"},
    {"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.5/24", "routes": [{"gw": "10.1.0.1"}]}},
    {"cniVersion": "0.2.0", "ip6": {"ip": 6}},
    {"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.5/24"}, "dns": "10.1.0.2"},
])
def test_malformed_results_are_decode_failures(data: object) -> None:
    with pytest.raises(DecodeFailure) as info:
        Result.from_dict(data)
    assert info.value.code == 6
    assert info.value.msg


@pytest.mark.parametrize("version", ["one", 1, "1.0"])
def test_result_with_malformed_version(version: object) -> None:
    with pytest.raises(IncompatibleVersion) as info:
        Result.from_dict({"cniVersion": version, "ips": [{"address": "10.1.0.5/24"}]})
    assert info.value.code == 1


def test_result_with_empty_version_is_read_by_shape() -> None:
    assert [ip.address for ip in Result.from_dict(
        {"cniVersion": "", "ips": [{"address": "10.1.0.5/24"}]}).ips] == ["10.1.0.5/24"]
    assert [ip.address for ip in Result.from_dict(
        {"cniVersion": "", "ip4": {"ip": "10.1.0.5/24"}}).ips] == ["10.1.0.5/24"]
