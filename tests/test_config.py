"""pycni.config: CNI_ARGS parsing, the NetConf base model and the override order."""

from __future__ import annotations

from typing import Any

import pytest

from pycni.config import K8S_ARGS, NetConf, Override, load, parse_cni_args
from pycni.errors import InvalidConfig, InvalidEnvironment, UnsupportedField
from pycni.skel import CmdArgs

# parse_cni_args


def test_cni_args_pairs() -> None:
    assert parse_cni_args("") == {}
    assert parse_cni_args("K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0") == {
        "K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "web-0"}
    assert parse_cni_args("MAC=aa:bb:cc:dd:ee:ff", {"MAC"}) == {"MAC": "aa:bb:cc:dd:ee:ff"}
    assert parse_cni_args("IP=", {"IP"}) == {"IP": ""}  # an empty value is a value
    assert parse_cni_args("IP=1;IP=2", {"IP"}) == {"IP": "2"}  # the last one wins


def test_cni_args_empty_segments_are_skipped() -> None:
    assert parse_cni_args(";;IP=10.0.0.2;;MAC=x;", frozenset({"IP", "MAC"})) == {
        "IP": "10.0.0.2", "MAC": "x"}
    assert parse_cni_args(";") == {}


@pytest.mark.parametrize("raw", ["IP", "K8S_POD_NAME=web;garbage", "=value", "IP;MAC=x"])
def test_cni_args_invalid_pair(raw: str) -> None:
    with pytest.raises(InvalidEnvironment) as info:
        parse_cni_args(raw, {"IP", "MAC"})
    assert info.value.code == 4
    assert "CNI_ARGS" in info.value.msg
    assert "invalid pair" in info.value.msg


def test_cni_args_unknown_key_is_named() -> None:
    with pytest.raises(UnsupportedField) as info:
        parse_cni_args("K8S_POD_NAME=web;FOO=1", {"IP"})
    assert info.value.code == 2
    assert "'FOO'" in info.value.msg
    assert "IgnoreUnknown" in info.value.details


@pytest.mark.parametrize("flag", ["1", "true", "True", "TRUE"])
def test_cni_args_ignore_unknown_tolerates(flag: str) -> None:
    assert parse_cni_args(f"IgnoreUnknown={flag};FOO=1;BAR=2") == {
        "IgnoreUnknown": flag, "FOO": "1", "BAR": "2"}
    # Its position does not matter.
    assert parse_cni_args(f"FOO=1;IgnoreUnknown={flag}")["FOO"] == "1"


@pytest.mark.parametrize("flag", ["0", "false", "", "yes"])
def test_cni_args_ignore_unknown_false_still_refuses(flag: str) -> None:
    with pytest.raises(UnsupportedField):
        parse_cni_args(f"IgnoreUnknown={flag};FOO=1")


def test_cni_args_kubelet_keys_always_accepted() -> None:
    raw = ("IgnoreUnknown=0;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=pod;"
           "K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=0a1b")
    assert set(parse_cni_args(raw)) == K8S_ARGS
    assert set(parse_cni_args(raw, {"IP"})) == K8S_ARGS


# load


class MacConf(NetConf):
    mac: str = ""
    mtu: int = 0
    hairpin_mode: bool = False


MAC_OVERRIDES = {"mac": Override(cni_args="MAC", args_cni="mac", runtime="mac")}
CONFIG_MAC = "02:00:00:00:00:01"
CNI_ARGS_MAC = "02:00:00:00:00:02"
ARGS_CNI_MAC = "02:00:00:00:00:03"
RUNTIME_MAC = "02:00:00:00:00:04"


def make_args(conf: dict[str, Any], cni_args: str = "", version: str = "1.0.0") -> CmdArgs:
    return CmdArgs(command="ADD", container_id="ctr-1", netns="/var/run/netns/pod",
                   ifname="eth0", args=cni_args, path=["/opt/cni/bin"], stdin_data=b"{}",
                   conf=conf, cni_version=version, environ={})


def mac_conf(*, config: bool = False, cni_args: bool = False, args_cni: bool = False,
             runtime: bool = False) -> str:
    """The mac `load` picks when the chosen layers set one."""
    conf: dict[str, Any] = {"cniVersion": "1.0.0", "name": "net", "type": "test"}
    if config:
        conf["mac"] = CONFIG_MAC
    if args_cni:
        conf["args"] = {"cni": {"mac": ARGS_CNI_MAC}}
    if runtime:
        conf["runtimeConfig"] = {"mac": RUNTIME_MAC}
    raw = f"K8S_POD_NAME=web;MAC={CNI_ARGS_MAC}" if cni_args else "K8S_POD_NAME=web"
    return load(MacConf, make_args(conf, raw), MAC_OVERRIDES).mac


def test_load_precedence_each_layer_wins_over_the_ones_before() -> None:
    assert mac_conf() == ""
    assert mac_conf(config=True) == CONFIG_MAC
    assert mac_conf(config=True, cni_args=True) == CNI_ARGS_MAC
    assert mac_conf(config=True, cni_args=True, args_cni=True) == ARGS_CNI_MAC
    assert mac_conf(config=True, cni_args=True, args_cni=True, runtime=True) == RUNTIME_MAC


def test_load_precedence_each_layer_alone() -> None:
    assert mac_conf(cni_args=True) == CNI_ARGS_MAC
    assert mac_conf(args_cni=True) == ARGS_CNI_MAC
    assert mac_conf(runtime=True) == RUNTIME_MAC


def test_load_precedence_later_layers_beat_earlier_ones_in_any_combination() -> None:
    assert mac_conf(config=True, runtime=True) == RUNTIME_MAC
    assert mac_conf(cni_args=True, runtime=True) == RUNTIME_MAC
    assert mac_conf(config=True, args_cni=True) == ARGS_CNI_MAC
    assert mac_conf(cni_args=True, args_cni=True) == ARGS_CNI_MAC


def test_load_layers_without_the_key_change_nothing() -> None:
    conf = {"cniVersion": "1.0.0", "name": "net", "mac": CONFIG_MAC,
            "args": {"cni": {"other": 1}}, "runtimeConfig": {"portMappings": []}}
    assert load(MacConf, make_args(conf), MAC_OVERRIDES).mac == CONFIG_MAC


def test_load_cni_args_value_is_validated_into_the_field_type() -> None:
    overrides = {"mtu": Override(cni_args="MTU")}
    conf = load(MacConf, make_args({"mtu": 1500}, "MTU=1400"), overrides)
    assert conf.mtu == 1400


def test_load_override_reaches_a_camel_case_field() -> None:
    """The override writes the field's alias, so it beats the camelCase key of the config."""
    overrides = {"hairpin_mode": Override(args_cni="hairpinMode")}
    conf = {"hairpinMode": False, "args": {"cni": {"hairpinMode": True}}}
    assert load(MacConf, make_args(conf), overrides).hairpin_mode is True


def test_load_override_of_a_key_the_model_lacks_lands_in_extra() -> None:
    overrides = {"bandwidth": Override(runtime="bandwidth")}
    conf = load(MacConf, make_args({"runtimeConfig": {"bandwidth": {"ingressRate": 8}}}),
                overrides)
    assert conf.model_extra == {"bandwidth": {"ingressRate": 8}}


def test_load_cni_args_keys_of_overrides_are_known_others_refused() -> None:
    with pytest.raises(UnsupportedField) as info:
        load(MacConf, make_args({}, "MAC=x;IP=10.0.0.2"), MAC_OVERRIDES)
    assert "'IP'" in info.value.msg
    assert load(MacConf, make_args({}, "IgnoreUnknown=1;MAC=x;IP=10.0.0.2"),
                MAC_OVERRIDES).mac == "x"
    with pytest.raises(UnsupportedField):
        load(MacConf, make_args({}, "MAC=x"))  # no overrides: MAC is unknown


def test_load_invalid_cni_args_pair() -> None:
    with pytest.raises(InvalidEnvironment) as info:
        load(MacConf, make_args({}, "MAC"), MAC_OVERRIDES)
    assert info.value.code == 4


def test_load_camel_case_aliases_and_extra_keys() -> None:
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]}
    raw = {
        "cniVersion": "1.0.0", "name": "net", "type": "test",
        "runtimeConfig": {"mac": RUNTIME_MAC}, "prevResult": prev,
        "capabilities": {"mac": True}, "ipam": {"type": "host-local"},
        "dns": {"nameservers": ["10.0.0.1"]}, "args": {"cni": {}},
        "someUnknownKey": {"x": 1}, "another": [1, 2],
    }
    conf = load(MacConf, make_args(raw))
    assert isinstance(conf, MacConf)
    assert conf.cni_version == "1.0.0"
    assert conf.name == "net" and conf.type == "test"
    assert conf.runtime_config == {"mac": RUNTIME_MAC}
    assert conf.prev_result == prev
    assert conf.capabilities == {"mac": True}
    assert conf.ipam == {"type": "host-local"}
    assert conf.dns == {"nameservers": ["10.0.0.1"]}
    assert conf.model_extra == {"someUnknownKey": {"x": 1}, "another": [1, 2]}
    # Serialising by alias gives the config's own spelling back.
    dumped = conf.model_dump(by_alias=True)
    assert dumped["runtimeConfig"] == {"mac": RUNTIME_MAC}
    assert dumped["prevResult"] == prev
    assert dumped["someUnknownKey"] == {"x": 1}


def test_load_defaults() -> None:
    conf = load(MacConf, make_args({}))
    assert (conf.name, conf.type, conf.mac, conf.mtu) == ("", "", "", 0)
    assert conf.runtime_config == {} and conf.capabilities == {}
    assert conf.prev_result is None and conf.ipam is None
    assert conf.model_extra == {}


def test_load_uses_the_negotiated_version() -> None:
    """With `cniVersions`, the version the dispatcher picked is what the plugin sees."""
    conf = load(MacConf, make_args({"cniVersions": ["1.0.0", "1.1.0"]}, version="1.1.0"))
    assert conf.cni_version == "1.1.0"
    assert conf.model_extra == {"cniVersions": ["1.0.0", "1.1.0"]}


def test_load_does_not_modify_the_decoded_config() -> None:
    raw: dict[str, Any] = {"mac": CONFIG_MAC, "runtimeConfig": {"mac": RUNTIME_MAC}}
    load(MacConf, make_args(raw), MAC_OVERRIDES)
    assert raw == {"mac": CONFIG_MAC, "runtimeConfig": {"mac": RUNTIME_MAC}}


@pytest.mark.parametrize(("conf", "cni_args", "field"), [
    ({"mtu": "big"}, "", "mtu"),
    ({"mtu": 1500}, "MTU=big", "mtu"),
    ({"mac": 5}, "", "mac"),
    ({"runtimeConfig": {"mac": ["x"]}}, "", "mac"),
    ({"hairpinMode": "perhaps"}, "", "hairpinMode"),
    ({"capabilities": {"mac": "maybe"}}, "", "capabilities"),
    ({"name": 5}, "", "name"),
])
def test_load_validation_failure_names_the_field(conf: dict[str, Any], cni_args: str,
                                                 field: str) -> None:
    overrides = {**MAC_OVERRIDES, "mtu": Override(cni_args="MTU")}
    with pytest.raises(InvalidConfig) as info:
        load(MacConf, make_args(conf, cni_args), overrides)
    assert info.value.code == 7
    assert field in info.value.msg
    assert info.value.__cause__ is None  # no pydantic traceback chained into logs


@pytest.mark.parametrize("conf", [
    {"args": {"cni": "mac"}},
    {"args": {"cni": ["mac"]}},
    {"runtimeConfig": "mac"},
    {"runtimeConfig": [1]},
    {"args": "cni"},
    {"args": ["cni"]},
])
def test_load_override_sources_must_be_objects(conf: dict[str, Any]) -> None:
    with pytest.raises(InvalidConfig) as info:
        load(MacConf, make_args(conf), MAC_OVERRIDES)
    assert info.value.code == 7
