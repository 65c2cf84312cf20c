"""static IPAM: configured addresses, routes and DNS; CNI_ARGS, args and runtimeConfig overrides.

Nothing is allocated and nothing touches the kernel, so the cases run in-process; one runs the
real program for the exit status and stdout.
"""

from __future__ import annotations

from typing import Any

import pytest
from pycni.ipam.static import PLUGIN

from pycni import spec
from tests.conftest import PYCNI, Outcome, cni_env, run_exec, run_in_process

NETNS = "/var/run/netns/ipam-test"  # IPAM never opens it

V4 = {"address": "10.10.0.5/24", "gateway": "10.10.0.1"}
V6 = {"address": "fd00:10::5/64", "gateway": "fd00:10::1"}
ROUTES = [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.10.0.254"},
          {"dst": "::/0", "gw": "fd00:10::1"}]
DNS = {"nameservers": ["10.96.0.10", "fd00::10"], "domain": "cluster.local",
       "search": ["svc.cluster.local"], "options": ["ndots:5"]}


def net(version: str = "1.0.0", top: dict[str, Any] | None = None,
        **ipam: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": "net1", "type": "macvlan", **(top or {}),
            "ipam": {"type": "static", **ipam}}


def run(command: str, conf: Any, **env: str) -> Outcome:
    netns = NETNS if command in ("ADD", "CHECK") else ""
    return run_in_process(PLUGIN, cni_env(command, netns, **env), conf)


def add(conf: Any, **env: str) -> Any:
    return run("ADD", conf, **env).ok()


def ips(result: Any) -> list[dict[str, str]]:
    return [{k: v for k, v in ip.items() if k != "version"} for ip in result["ips"]]


@pytest.mark.parametrize("version", spec.ALL)
def test_addresses_routes_dns_every_version(version: str) -> None:
    result = add(net(version, addresses=[V4, V6], routes=ROUTES, dns=DNS))
    assert result["cniVersion"] == version
    assert "interfaces" not in result
    assert result["dns"] == DNS
    if spec.at_least(version, "0.3.0"):
        with_version = not spec.at_least(version, "1.0.0")
        assert result["ips"] == [
            {**V4, **({"version": "4"} if with_version else {})},
            {**V6, **({"version": "6"} if with_version else {})}]
        assert result["routes"] == ROUTES
    else:
        assert result["ip4"] == {"ip": V4["address"], "gateway": V4["gateway"],
                                 "routes": ROUTES[:2]}
        assert result["ip6"] == {"ip": V6["address"], "gateway": V6["gateway"],
                                 "routes": ROUTES[2:]}
    assert run("DEL", net(version, addresses=[V4])).ok() is None


@pytest.mark.parametrize("version", spec.ALL)
def test_two_addresses_of_one_family_need_0_3_0(version: str) -> None:
    conf = net(version, addresses=[V4, {"address": "10.20.0.5/24"}])
    if spec.at_least(version, "0.3.0"):
        assert ips(add(conf)) == [V4, {"address": "10.20.0.5/24"}]
    else:
        error = run("ADD", conf).error(1)
        assert "does not support more than 1 address per family" in error["msg"]


def test_address_without_gateway_and_no_routes_or_dns() -> None:
    result = add(net(addresses=[{"address": "fd00:10::7/64"}]))
    assert result == {"cniVersion": "1.0.0", "ips": [{"address": "fd00:10::7/64"}]}


def test_route_fields_of_1_1_0() -> None:
    routes = [{"dst": "10.0.0.0/8", "gw": "10.10.0.1", "mtu": 1400, "table": 7}]
    assert add(net("1.1.0", addresses=[V4], routes=routes))["routes"] == routes
    assert add(net("1.0.0", addresses=[V4], routes=routes))["routes"] == [
        {"dst": "10.0.0.0/8", "gw": "10.10.0.1"}]


def test_cni_args_ip_adds_and_gateway_sets() -> None:
    result = add(net(addresses=[V4]),
                 CNI_ARGS="IP=10.10.0.6/24, fd00:10::6/64;GATEWAY=10.10.0.254")
    assert ips(result) == [{"address": "10.10.0.5/24", "gateway": "10.10.0.254"},
                           {"address": "10.10.0.6/24", "gateway": "10.10.0.254"},
                           {"address": "fd00:10::6/64"}]


def test_cni_args_alone_are_enough() -> None:
    result = add(net(), CNI_ARGS="IgnoreUnknown=1;FOO=bar;IP=10.30.0.2/16;GATEWAY=10.30.0.1")
    assert ips(result) == [{"address": "10.30.0.2/16", "gateway": "10.30.0.1"}]


def test_cni_args_at_0_2_0_cannot_add_a_second_address_of_a_family() -> None:
    run("ADD", net("0.2.0", addresses=[V4]), CNI_ARGS="IP=10.10.0.6/24").error(1)
    result = add(net("0.2.0", addresses=[V4]), CNI_ARGS="IP=fd00:10::6/64")
    assert result["ip6"] == {"ip": "fd00:10::6/64"}


def test_args_cni_ips_replace_the_configured_addresses() -> None:
    conf = net(top={"args": {"cni": {"ips": ["10.40.0.2/24", "fd00:40::2/64"]}}},
               addresses=[V4, V6])
    assert ips(add(conf)) == [{"address": "10.40.0.2/24"}, {"address": "fd00:40::2/64"}]
    # and the CNI_ARGS ones, which come before them in the override order
    assert ips(add(conf, CNI_ARGS="IP=10.50.0.2/24")) == [
        {"address": "10.40.0.2/24"}, {"address": "fd00:40::2/64"}]


def test_runtime_config_ips_replace_everything_before() -> None:
    conf = net(top={"args": {"cni": {"ips": ["10.40.0.2/24"]}},
                    "runtimeConfig": {"ips": ["10.60.0.2/24"]}}, addresses=[V4])
    assert ips(add(conf, CNI_ARGS="IP=10.50.0.2/24")) == [{"address": "10.60.0.2/24"}]


def test_empty_override_lists_keep_the_configured_addresses() -> None:
    conf = net(top={"args": {"cni": {"ips": []}}, "runtimeConfig": {"ips": []}},
               addresses=[V4])
    assert ips(add(conf)) == [V4]


BAD: list[tuple[str, dict[str, Any], dict[str, str], int, str]] = [
    ("no-addresses", net(), {}, 7, "no addresses"),
    ("missing-ipam", {"cniVersion": "1.0.0", "name": "n", "type": "macvlan"}, {}, 7,
     "missing 'ipam'"),
    ("address-not-cidr", net(addresses=[{"address": "10.10.0.5"}]), {}, 7,
     "'10.10.0.5' is not an address in CIDR notation"),
    ("address-missing", net(addresses=[{"gateway": "10.10.0.1"}]), {}, 7, "ipam.addresses"),
    ("address-garbage", net(addresses=[{"address": "ten/24"}]), {}, 7, "'ten/24'"),
    ("bad-gateway", net(addresses=[{"address": "10.10.0.5/24", "gateway": "x"}]), {}, 7,
     "invalid gateway address 'x'"),
    ("cni-args-ip-no-prefix", net(addresses=[V4]), {"CNI_ARGS": "IP=10.10.0.6"}, 7,
     "CNI_ARGS IP"),
    ("cni-args-bad-gateway", net(addresses=[V4]), {"CNI_ARGS": "GATEWAY=nope"}, 7,
     "invalid gateway address 'nope'"),
    ("args-ips-not-cidr", net(top={"args": {"cni": {"ips": ["10.10.0.6"]}}}), {}, 7,
     "args.cni.ips"),
    ("runtime-ips-not-a-list", net(top={"runtimeConfig": {"ips": "10.10.0.6/24"}}), {}, 7,
     "runtimeConfig.ips must be a list"),
    ("bad-route", net(addresses=[V4], routes=[{"dst": "nowhere"}]), {}, 7, "invalid route"),
    ("dns-not-typed", net(addresses=[V4], dns={"nameservers": "10.96.0.10"}), {}, 7,
     "ipam.dns.nameservers"),
    ("unknown-cni-arg", net(addresses=[V4]), {"CNI_ARGS": "MAC=aa"}, 2, "'MAC'"),
]


@pytest.mark.parametrize(("conf", "env", "code", "words"), [c[1:] for c in BAD],
                         ids=[c[0] for c in BAD])
def test_bad_input(conf: dict[str, Any], env: dict[str, str], code: int, words: str) -> None:
    error = run("ADD", conf, **env).error(code)
    assert words in error["msg"], error


@pytest.mark.parametrize("version", spec.ALL)
def test_check_against_prev_result(version: str) -> None:
    conf = net(version, addresses=[V4, V6])
    good = {"cniVersion": "1.0.0", "ips": [{**V4, "interface": 0}, V6]}
    check = run("CHECK", {**conf, "prevResult": good})
    if not spec.at_least(version, "0.4.0"):
        assert "CHECK" in check.error(1)["msg"]
        return
    assert check.ok() is None
    missing = {"cniVersion": "1.0.0", "ips": [V4]}
    assert "fd00:10::5/64 missing" in run("CHECK", {**conf, "prevResult": missing}).error(
        999)["msg"]
    other_gateway = {"cniVersion": "1.0.0", "ips": [{**V4, "gateway": "10.10.0.9"}, V6]}
    error = run("CHECK", {**conf, "prevResult": other_gateway}).error(999)
    assert "gateway 10.10.0.9, expected 10.10.0.1" in error["msg"]
    assert "prevResult" in run("CHECK", conf).error(7)["msg"]


def test_del_status_gc_have_nothing_to_do() -> None:
    conf = net("1.1.0", addresses=[V4], **{"cni.dev/valid-attachments": []})
    assert run("DEL", net(addresses=[V4])).ok() is None
    assert run("DEL", net(addresses=[V4])).ok() is None  # twice is fine
    assert run("STATUS", conf).ok() is None
    assert run("GC", conf).ok() is None
    run("STATUS", net("1.0.0", addresses=[V4])).error(1)


def test_process_add_and_error() -> None:
    env = cni_env("ADD", NETNS)
    outcome = run_exec([*PYCNI, "static"], env, net("0.3.1", addresses=[V4]))
    assert outcome.ok() == {"cniVersion": "0.3.1", "ips": [{**V4, "version": "4"}]}
    assert outcome.stderr == ""
    bad = run_exec([*PYCNI, "static"], env, net("0.3.1"))
    assert "no addresses" in bad.error(7)["msg"]
    assert bad.stdout.count("{") == 1
