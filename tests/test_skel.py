"""The dispatcher: one bad input per error code, in-process and through a real process."""

from __future__ import annotations

import os
from typing import Any

import pytest

from pycni import config, spec
from pycni.errors import NotReady, NotReadyDegraded, TryAgainLater
from pycni.result import Interface, IPConfig, Result
from pycni.skel import CmdArgs, Plugin
from pycni.store import Store
from tests.conftest import PYCNI, Netns, cni_env, run_exec, run_in_process


class ProbeConf(config.NetConf):
    mtu: int = 0
    data_dir: str = ""


def probe_add(args: CmdArgs) -> Result:
    conf = config.load(ProbeConf, args, {"mtu": config.Override(cni_args="MTU")})
    if conf.data_dir:
        Store(conf.data_dir, conf.name).write("state", b"x")
    behaviour = (conf.model_extra or {}).get("behaviour")
    if behaviour == "crash":
        raise RuntimeError("boom: the plugin broke\nsecond line")
    if behaviour == "try-again":
        raise TryAgainLater("node agent not ready", "no /run/flannel/subnet.env")
    prev = args.prev_result
    if prev is not None:
        return prev
    return Result([Interface(args.ifname, sandbox=args.netns)],
                  [IPConfig("10.0.0.2/24", "10.0.0.1", 0)])


def probe_status(args: CmdArgs) -> None:
    state = args.conf.get("behaviour")
    if state == "not-ready":
        raise NotReady("range exhausted")
    if state == "degraded":
        raise NotReadyDegraded("agent down")


PROBE = Plugin("probe", add=probe_add, delete=lambda a: None, check=lambda a: None,
               status=probe_status, gc=lambda a: None, check_netns=False)
NETNS = "/var/run/netns/none"


def conf(version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": "net1", "type": "probe", **extra}


# (id, env, stdin, expected code, words the message must contain)
BAD_INPUTS: list[tuple[str, dict[str, str], Any, int, str]] = [
    ("version-unknown", cni_env("ADD", NETNS), conf("9.9.9"), 1, "incompatible CNI versions"),
    ("version-malformed", cni_env("ADD", NETNS), conf("one"), 1, "invalid version"),
    ("check-below-0.4.0", cni_env("CHECK", NETNS), conf("0.3.1"), 1, "does not allow CHECK"),
    ("status-below-1.1.0", cni_env("STATUS"), conf("1.0.0"), 1, "does not allow STATUS"),
    ("gc-below-1.1.0", cni_env("GC"), conf("1.0.0"), 1, "does not allow GC"),
    ("cni-versions-none-supported", cni_env("ADD", NETNS),
     {"cniVersions": ["7.0.0"], "name": "n", "type": "probe"}, 1, "cniVersions"),
    ("unknown-cni-arg", cni_env("ADD", NETNS, CNI_ARGS="FOO=bar"), conf(), 2, "'FOO'"),
    ("missing-env", {"CNI_COMMAND": "ADD"}, conf(), 4,
     "[CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH]"),
    ("bad-ifname", cni_env("ADD", NETNS, ifname="a/b"), conf(), 4, "CNI_IFNAME"),
    ("long-ifname", cni_env("ADD", NETNS, ifname="x" * 16), conf(), 4, "too long"),
    ("dot-ifname", cni_env("DEL", ifname=".."), conf(), 4, ". or .."),
    ("bad-container-id", cni_env("ADD", NETNS, container_id="-x/../y"), conf(), 4,
     "CNI_CONTAINERID"),
    ("unknown-command", {"CNI_COMMAND": "FROB"}, conf(), 4, "unknown CNI_COMMAND"),
    ("bad-cni-args-pair", cni_env("ADD", NETNS, CNI_ARGS="novalue"), conf(), 4, "invalid pair"),
    ("not-json", cni_env("ADD", NETNS), b"{not json", 6, "error decoding network config"),
    ("json-not-object", cni_env("ADD", NETNS), b"[1, 2]", 6, "expected a JSON object"),
    ("missing-name", cni_env("ADD", NETNS), {"cniVersion": "1.0.0", "type": "probe"}, 7,
     "missing network name"),
    ("bad-name", cni_env("ADD", NETNS), conf(name="../etc"), 7, "invalid characters"),
    ("bad-field-type", cni_env("ADD", NETNS), conf(mtu="big"), 7, "mtu"),
    ("try-again", cni_env("ADD", NETNS), conf(behaviour="try-again"), 11, "not ready"),
    ("status-not-ready", cni_env("STATUS"), conf("1.1.0", behaviour="not-ready"), 50,
     "exhausted"),
    ("status-degraded", cni_env("STATUS"), conf("1.1.0", behaviour="degraded"), 51, "agent"),
    ("unexpected-exception", cni_env("ADD", NETNS), conf(behaviour="crash"), 999,
     "boom: the plugin broke"),
]


@pytest.mark.parametrize(("env", "stdin", "code", "words"),
                         [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gives_error_json(env: dict[str, str], stdin: Any, code: int,
                                    words: str) -> None:
    outcome = run_in_process(PROBE, env, stdin)
    error = outcome.error(code)
    assert words in error["msg"] + error.get("details", "")


def test_io_failure_is_code_5(tmp_path: Any) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    outcome = run_in_process(PROBE, cni_env("ADD", NETNS), conf(dataDir=str(blocker)))
    assert "net1" in outcome.error(5)["msg"]
    assert blocker.read_text() == "not a directory"


def test_unexpected_exception_is_one_line_and_logged() -> None:
    outcome = run_in_process(PROBE, cni_env("ADD", NETNS), conf(behaviour="crash"))
    error = outcome.error(999)
    assert error["msg"] == "boom: the plugin broke"
    assert "Traceback" in outcome.stderr  # the log has it, stdout does not


def test_error_carries_config_version() -> None:
    outcome = run_in_process(PROBE, cni_env("ADD", NETNS, CNI_ARGS="FOO=1"), conf("0.4.0"))
    assert outcome.error(2)["cniVersion"] == "0.4.0"


def test_all_problems_with_environment_reported_together() -> None:
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "bad id!", "CNI_IFNAME": "a:b"}
    msg = run_in_process(PROBE, env, conf()).error(4)["msg"]
    assert "CNI_NETNS" in msg and "CNI_PATH" in msg
    assert "CNI_CONTAINERID" in msg and "CNI_IFNAME" in msg


@pytest.mark.parametrize("version", spec.ALL)
def test_add_prints_result_at_config_version(version: str) -> None:
    result = run_in_process(PROBE, cni_env("ADD", NETNS), conf(version)).ok()
    assert result["cniVersion"] == version
    if spec.at_least(version, "0.3.0"):
        assert result["ips"][0]["address"] == "10.0.0.2/24"
    else:
        assert result["ip4"] == {"ip": "10.0.0.2/24", "gateway": "10.0.0.1"}


def test_cni_versions_list_picks_highest_supported() -> None:
    stdin = {"cniVersions": ["0.4.0", "1.0.0", "8.0.0"], "name": "n", "type": "probe"}
    assert run_in_process(PROBE, cni_env("ADD", NETNS), stdin).ok()["cniVersion"] == "1.0.0"


def test_missing_cni_version_means_0_1_0() -> None:
    result = run_in_process(PROBE, cni_env("ADD", NETNS), {"name": "n", "type": "probe"}).ok()
    assert result["cniVersion"] == "0.1.0" and "ip4" in result


def test_prev_result_of_older_version_passes_through() -> None:
    prev = {"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.5/16", "gateway": "10.1.0.1"}}
    result = run_in_process(PROBE, cni_env("ADD", NETNS), conf("1.0.0", prevResult=prev)).ok()
    assert result["ips"] == [{"address": "10.1.0.5/16", "gateway": "10.1.0.1"}]


def test_del_needs_no_netns_and_prints_nothing() -> None:
    outcome = run_in_process(PROBE, cni_env("DEL"), conf())
    assert outcome.ok() is None and outcome.stdout == ""


def test_status_and_gc_succeed_at_1_1_0() -> None:
    assert run_in_process(PROBE, cni_env("STATUS"), conf("1.1.0")).ok() is None
    gc_conf = conf("1.1.0", **{"cni.dev/valid-attachments": []})
    assert run_in_process(PROBE, cni_env("GC"), gc_conf).ok() is None


def test_version_ignores_stdin() -> None:
    outcome = run_in_process(PROBE, {"CNI_COMMAND": "VERSION"}, b"garbage")
    assert outcome.ok() == {"cniVersion": "1.1.0", "supportedVersions": list(spec.ALL)}


def test_no_command_prints_about_to_stderr() -> None:
    outcome = run_in_process(PROBE, {}, b"")
    assert outcome.status == 0 and outcome.stdout == ""
    assert "probe" in outcome.stderr and "CNI protocol versions supported" in outcome.stderr


# The same contract through a real process (inside a sandbox namespace standing for the node):
# exit status 1 and only the error JSON on stdout.
PROCESS_CASES = [
    ("version", cni_env("ADD", NETNS, ifname="lo"), conf("0.0.9"), 1),
    ("env", {"CNI_COMMAND": "ADD"}, conf(), 4),
    ("decode", cni_env("ADD", NETNS, ifname="lo"), b"{", 6),
    ("config", cni_env("ADD", NETNS, ifname="lo"), conf(name=""), 7),
    ("lo-down", cni_env("CHECK", "@pod", ifname="lo"), conf(), 999),
]


@pytest.mark.parametrize(("env", "stdin", "code"), [c[1:] for c in PROCESS_CASES],
                         ids=[c[0] for c in PROCESS_CASES])
def test_process_exit_status_and_stdout(host_ns: Netns, pod_ns: Netns, env: dict[str, str],
                                        stdin: Any, code: int) -> None:
    if env.get("CNI_NETNS") == "@pod":
        env = {**env, "CNI_NETNS": pod_ns.path}
    outcome = run_exec([*PYCNI, "loopback"], env, stdin, in_ns=host_ns)
    outcome.error(code)
    assert outcome.stdout.count("{") == 1  # one JSON object, nothing else


def test_process_netns_checks(netns_factory: Any, tmp_path: Any) -> None:
    """Missing netns (3), not a netns (4), the plugin's own netns (8): refused before work."""
    host: Netns = netns_factory("host")
    base = cni_env("ADD", ifname="lo")
    missing = run_exec([*PYCNI, "loopback"], {**base, "CNI_NETNS": "/var/run/netns/gone"},
                       conf(), in_ns=host)
    assert "does not exist" in missing.error(3)["msg"]
    regular = tmp_path / "netns"
    regular.write_text("")
    not_ns = run_exec([*PYCNI, "loopback"], {**base, "CNI_NETNS": str(regular)}, conf(),
                      in_ns=host)
    assert "not a network namespace" in not_ns.error(4)["msg"]
    own = run_exec([*PYCNI, "loopback"], {**base, "CNI_NETNS": host.path}, conf(), in_ns=host)
    assert "own network namespace" in own.error(8)["msg"]
    assert host.link("lo")["operstate"] == "DOWN" or "UP" not in host.link("lo")["flags"]
    assert os.path.exists(host.path)
