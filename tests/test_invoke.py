"""pycni.invoke: finding delegates on CNI_PATH and running them as the spec says."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pycni import invoke, registry
from pycni.errors import (
    CNIError,
    DecodeFailure,
    InvalidConfig,
    TryAgainLater,
    UnsupportedField,
)
from pycni.result import IPConfig, Result
from pycni.skel import CmdArgs, Plugin

CONF = (b'{ "cniVersion": "1.0.0",\n  "name": "net1", "type": "fake",\n'
        b'  "ipam": {"type": "fake"}, "note": "caf\xc3\xa9 \\u00e9" }  \n')
ADD_RESULT = {"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1"}]}

# The fake plugin records the environment exactly as exec'd (/proc/self/environ is the block
# execve received, before the interpreter adjusts anything) and its stdin, then answers.
FAKE_PLUGIN = """#!{python}
import os, sys
dump = {dump!r}
stdin = sys.stdin.buffer.read()
if dump:
    with open(os.path.join(dump, "stdin"), "wb") as f:
        f.write(stdin)
    with open("/proc/self/environ", "rb") as src, open(os.path.join(dump, "env"), "wb") as f:
        f.write(src.read())
sys.stdout.buffer.write({stdout!r})
sys.exit({status})
"""


def write_plugin(directory: Path, name: str, stdout: bytes = b"", status: int = 0,
                 dump: Path | None = None, executable: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(FAKE_PLUGIN.format(python=sys.executable, dump=str(dump or ""),
                                       stdout=stdout, status=status))
    path.chmod(0o755 if executable else 0o644)
    return path


def read_env(dump: Path) -> dict[str, str]:
    raw = (dump / "env").read_bytes()
    return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if item)


@pytest.fixture
def caller_env(tmp_path: Path) -> dict[str, str]:
    return {
        "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ctr-1", "CNI_NETNS": "/var/run/netns/pod-1",
        "CNI_IFNAME": "eth0", "CNI_PATH": str(tmp_path / "bin"),
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web-0",
        "PATH": "/usr/bin:/bin", "ODD_VALUE": "spaces and\nnewline=and equals",
    }


# Executor.find

def test_find_first_match_in_path_order(tmp_path: Path) -> None:
    first = write_plugin(tmp_path / "a", "fake")
    second = write_plugin(tmp_path / "b", "fake")
    finder = invoke.Executor()
    assert finder.find("fake", [str(tmp_path / "a"), str(tmp_path / "b")]) == str(first)
    assert finder.find("fake", [str(tmp_path / "b"), str(tmp_path / "a")]) == str(second)
    assert finder.find("fake", [str(tmp_path / "missing"), str(tmp_path / "b")]) == str(second)


def test_find_skips_what_cannot_be_run(tmp_path: Path) -> None:
    write_plugin(tmp_path / "a", "fake", executable=False)
    (tmp_path / "b" / "fake").mkdir(parents=True)  # a directory by that name
    wanted = write_plugin(tmp_path / "c", "fake")
    dirs = [str(tmp_path / d) for d in "abc"]
    assert invoke.Executor().find("fake", dirs) == str(wanted)


def test_find_follows_symlinks(tmp_path: Path) -> None:
    target = write_plugin(tmp_path / "real", "impl")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "fake").symlink_to(target)
    (tmp_path / "bin" / "dangling").symlink_to(tmp_path / "nowhere")
    assert invoke.Executor().find("fake", [str(tmp_path / "bin")]) == str(tmp_path / "bin/fake")
    with pytest.raises(InvalidConfig):
        invoke.Executor().find("dangling", [str(tmp_path / "bin")])


@pytest.mark.parametrize("plugin_type", ["a/b", "/bin/sh", "../bin/sh", "", ".", ".."])
def test_find_refuses_invalid_type_names(tmp_path: Path, plugin_type: str) -> None:
    # Even when such a path would lead to an executable.
    write_plugin(tmp_path / "a", "b")
    with pytest.raises(InvalidConfig) as info:
        invoke.Executor().find(plugin_type, [str(tmp_path), str(tmp_path / "a")])
    assert info.value.code == 7
    assert "invalid plugin type" in info.value.msg


def test_find_missing_names_the_type(tmp_path: Path) -> None:
    write_plugin(tmp_path / "a", "other")
    with pytest.raises(InvalidConfig) as info:
        invoke.Executor().find("host-local", [str(tmp_path / "a")])
    assert info.value.code == 7
    assert "'host-local'" in info.value.msg
    assert str(tmp_path / "a") in info.value.msg
    with pytest.raises(InvalidConfig):
        invoke.Executor().find("host-local", [])


# delegate, exec'ing a fake plugin

def test_delegate_passes_stdin_and_environment_unchanged(tmp_path: Path,
                                                         caller_env: dict[str, str]) -> None:
    dump = tmp_path / "dump"
    dump.mkdir()
    write_plugin(tmp_path / "bin", "fake", json.dumps(ADD_RESULT).encode(), dump=dump)
    before = dict(caller_env)
    for command in ("ADD", "DEL", "CHECK"):
        caller_env["CNI_COMMAND"] = "VERSION"  # whatever the caller had, only this changes
        invoke.delegate(command, "fake", CONF, caller_env, [str(tmp_path / "bin")])
        assert (dump / "stdin").read_bytes() == CONF
        assert read_env(dump) == {**before, "CNI_COMMAND": command}
    assert caller_env == {**before, "CNI_COMMAND": "VERSION"}  # the caller's mapping untouched


def test_delegate_overrides_more_variables_when_asked(tmp_path: Path,
                                                      caller_env: dict[str, str]) -> None:
    dump = tmp_path / "dump"
    dump.mkdir()
    write_plugin(tmp_path / "bin", "fake", json.dumps(ADD_RESULT).encode(), dump=dump)
    invoke.delegate("ADD", "fake", CONF, caller_env, [str(tmp_path / "bin")], CNI_IFNAME="net1")
    assert read_env(dump) == {**caller_env, "CNI_IFNAME": "net1"}


def test_delegate_add_returns_the_parsed_result(tmp_path: Path,
                                                caller_env: dict[str, str]) -> None:
    write_plugin(tmp_path / "bin", "fake", json.dumps(ADD_RESULT, indent=4).encode() + b"\n")
    out = invoke.delegate("ADD", "fake", CONF, caller_env, [str(tmp_path / "bin")])
    assert out == ADD_RESULT


@pytest.mark.parametrize("stdout", [b"", b"\n", json.dumps(ADD_RESULT).encode()])
def test_delegate_other_commands_return_none(tmp_path: Path, caller_env: dict[str, str],
                                             stdout: bytes) -> None:
    write_plugin(tmp_path / "bin", "fake", stdout)
    for command in ("DEL", "CHECK", "STATUS", "GC"):
        assert invoke.delegate(command, "fake", CONF, caller_env, [str(tmp_path / "bin")]) is None


@pytest.mark.parametrize("stdout", [b"", b"   \n", b"[1, 2]", b'"text"', b"null"])
def test_delegate_add_without_a_result_object(tmp_path: Path, caller_env: dict[str, str],
                                              stdout: bytes) -> None:
    write_plugin(tmp_path / "bin", "fake", stdout)
    with pytest.raises(DecodeFailure) as info:
        invoke.delegate("ADD", "fake", CONF, caller_env, [str(tmp_path / "bin")])
    assert info.value.code == 6
    assert "'fake'" in info.value.msg


@pytest.mark.parametrize(("code", "cls"), [
    (11, TryAgainLater), (7, InvalidConfig), (2, UnsupportedField), (999, CNIError)])
def test_delegate_error_is_raised_again_with_its_code(tmp_path: Path, caller_env: dict[str, str],
                                                      code: int, cls: type[CNIError]) -> None:
    error = {"cniVersion": "1.0.0", "code": code, "msg": "node agent not ready",
             "details": "subnet file missing"}
    write_plugin(tmp_path / "bin", "fake", json.dumps(error).encode(), status=1)
    for command in ("ADD", "DEL"):
        with pytest.raises(cls) as info:
            invoke.delegate(command, "fake", CONF, caller_env, [str(tmp_path / "bin")])
        assert type(info.value) is cls
        assert info.value.code == code
        assert info.value.msg == "node agent not ready"
        assert info.value.details == "subnet file missing"


def test_delegate_plugin_specific_error_code_is_kept(tmp_path: Path,
                                                     caller_env: dict[str, str]) -> None:
    error = {"cniVersion": "1.0.0", "code": 120, "msg": "vf busy"}
    write_plugin(tmp_path / "bin", "fake", json.dumps(error).encode(), status=1)
    with pytest.raises(CNIError) as info:
        invoke.delegate("ADD", "fake", CONF, caller_env, [str(tmp_path / "bin")])
    assert (info.value.code, info.value.msg) == (120, "vf busy")


@pytest.mark.parametrize("stdout", [b"", b"{}", b'{"msg": "no code"}'])
def test_delegate_failure_without_error_json(tmp_path: Path, caller_env: dict[str, str],
                                             stdout: bytes) -> None:
    write_plugin(tmp_path / "bin", "fake", stdout, status=3)
    with pytest.raises(CNIError) as info:
        invoke.delegate("DEL", "fake", CONF, caller_env, [str(tmp_path / "bin")])
    assert info.value.code == 999
    assert "'fake'" in info.value.msg and "3" in info.value.msg


@pytest.mark.parametrize("status", [0, 1])
def test_delegate_non_json_output_is_a_decode_failure(tmp_path: Path, caller_env: dict[str, str],
                                                      status: int) -> None:
    write_plugin(tmp_path / "bin", "fake", b"Traceback (most recent call last):\n boom", status)
    with pytest.raises(DecodeFailure) as info:
        invoke.delegate("ADD", "fake", CONF, caller_env, [str(tmp_path / "bin")])
    assert info.value.code == 6
    assert "'fake'" in info.value.msg
    assert "Traceback" in info.value.details


def test_delegate_missing_plugin(tmp_path: Path, caller_env: dict[str, str]) -> None:
    with pytest.raises(InvalidConfig) as info:
        invoke.delegate("ADD", "host-local", CONF, caller_env, [str(tmp_path / "bin")])
    assert "'host-local'" in info.value.msg


def test_delegate_uses_the_given_executor(caller_env: dict[str, str]) -> None:
    calls: list[tuple[str, bytes, dict[str, str]]] = []

    class FakeExecutor(invoke.Executor):
        def find(self, plugin_type: str, paths: list[str]) -> str:
            return f"/fake/{plugin_type}"

        def run(self, path: str, stdin_data: bytes, environ: Any) -> tuple[int, bytes]:
            calls.append((path, stdin_data, dict(environ)))
            return 0, json.dumps(ADD_RESULT).encode()

    out = invoke.delegate("ADD", "x", CONF, caller_env, [], executor=FakeExecutor())
    assert out == ADD_RESULT
    assert calls == [("/fake/x", CONF, caller_env)]


def _kernel_refuses_busy_exec(tmp_path: Path) -> bool:
    probe = write_plugin(tmp_path / "probe", "busy")
    fd = os.open(probe, os.O_WRONLY)
    try:
        subprocess.run([str(probe)], check=False, capture_output=True)
        return False
    except OSError as exc:
        return exc.errno == errno.ETXTBSY
    finally:
        os.close(fd)


def test_delegate_retries_text_file_busy(tmp_path: Path, caller_env: dict[str, str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An installer still holding the new binary open for writing: retry, then succeed."""
    busy_seen = _kernel_refuses_busy_exec(tmp_path)
    plugin = write_plugin(tmp_path / "bin", "fake", json.dumps(ADD_RESULT).encode())
    sleeps: list[float] = []

    def recording_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    monkeypatch.setattr(invoke, "time", SimpleNamespace(sleep=recording_sleep))
    writer = os.open(plugin, os.O_WRONLY)
    closer = threading.Timer(0.1, os.close, args=(writer,))
    closer.start()
    try:
        out = invoke.delegate("ADD", "fake", CONF, caller_env, [str(tmp_path / "bin")])
    finally:
        closer.join()
    assert out == ADD_RESULT
    if busy_seen:
        assert sleeps, "the first exec should have met ETXTBSY and retried"
        assert sum(sleeps) >= 0.05


def test_delegate_gives_up_when_busy_for_too_long(tmp_path: Path, caller_env: dict[str, str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    if not _kernel_refuses_busy_exec(tmp_path):
        pytest.skip("this kernel lets a file open for writing be exec'd")
    plugin = write_plugin(tmp_path / "bin", "fake", json.dumps(ADD_RESULT).encode())
    monkeypatch.setattr(invoke, "time", SimpleNamespace(sleep=lambda seconds: None))
    writer = os.open(plugin, os.O_WRONLY)
    try:
        with pytest.raises(CNIError) as info:
            invoke.delegate("ADD", "fake", CONF, caller_env, [str(tmp_path / "bin")])
    finally:
        os.close(writer)
    assert "busy" in info.value.msg.lower()
    assert str(plugin) in info.value.msg


# In-process delegation: the type found is a link to our own running program

@pytest.fixture
def own_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for the frozen executable; exec'ing it would fail loudly."""
    own = tmp_path / "bundle" / "pycni"
    own.parent.mkdir()
    launcher = own.parent / "cni"  # what the links point to
    for program in (own, launcher):
        program.write_text("#!/bin/sh\necho '{\"code\": 999, \"msg\": \"exec happened\"}'\n"
                           "exit 1\n")
        program.chmod(0o755)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "loopback").symlink_to(launcher)
    monkeypatch.setattr(invoke, "_own_programs",
                        lambda: (os.path.realpath(own), os.path.realpath(launcher)))
    return own


class Recorder:
    def __init__(self) -> None:
        self.calls: list[CmdArgs] = []
        self.loaded: list[str] = []

    def add(self, args: CmdArgs) -> Result:
        self.calls.append(args)
        return Result(ips=[IPConfig("10.1.0.5/24", "10.1.0.1")])

    def delete(self, args: CmdArgs) -> None:
        self.calls.append(args)

    def fail(self, args: CmdArgs) -> None:
        raise TryAgainLater("not yet", "in-process")

    def plugin(self) -> Plugin:
        # check_netns off: nothing may touch the kernel here.
        return Plugin("test plugin", add=self.add, delete=self.delete, check=self.fail,
                      check_netns=False)

    def load(self, plugin_type: str) -> Plugin:
        self.loaded.append(plugin_type)
        return self.plugin()


def test_delegate_in_process(own_bundle: Path, tmp_path: Path, caller_env: dict[str, str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    monkeypatch.setattr(registry, "load", recorder.load)
    out = invoke.delegate("ADD", "loopback", CONF, caller_env, [str(tmp_path / "bin")])
    assert recorder.loaded == ["loopback"]
    assert out == {"cniVersion": "1.0.0",
                   "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1"}]}
    (args,) = recorder.calls
    assert args.command == "ADD"
    assert args.stdin_data == CONF
    assert dict(args.environ) == caller_env
    assert (args.container_id, args.ifname, args.netns) == ("ctr-1", "eth0", "/var/run/netns/pod-1")

    assert invoke.delegate("DEL", "loopback", CONF, caller_env, [str(tmp_path / "bin")]) is None
    assert recorder.calls[-1].command == "DEL"
    assert dict(recorder.calls[-1].environ) == {**caller_env, "CNI_COMMAND": "DEL"}


def test_delegate_in_process_error_keeps_its_code(own_bundle: Path, tmp_path: Path,
                                                  caller_env: dict[str, str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "load", Recorder().load)
    with pytest.raises(TryAgainLater) as info:
        invoke.delegate("CHECK", "loopback", CONF, caller_env, [str(tmp_path / "bin")])
    assert (info.value.code, info.value.msg, info.value.details) == (11, "not yet", "in-process")


def test_delegate_in_process_unknown_type(own_bundle: Path, tmp_path: Path,
                                          caller_env: dict[str, str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    monkeypatch.setattr(registry, "load", recorder.load)
    (tmp_path / "bin" / "no-such-type").symlink_to(own_bundle)
    with pytest.raises(InvalidConfig) as info:
        invoke.delegate("ADD", "no-such-type", CONF, caller_env, [str(tmp_path / "bin")])
    assert "'no-such-type'" in info.value.msg
    assert recorder.loaded == []


def test_other_programs_are_still_execd_when_frozen(own_bundle: Path, tmp_path: Path,
                                                    caller_env: dict[str, str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    monkeypatch.setattr(registry, "load", recorder.load)
    write_plugin(tmp_path / "other", "loopback", json.dumps(ADD_RESULT).encode())
    out = invoke.delegate("ADD", "loopback", CONF, caller_env,
                          [str(tmp_path / "other"), str(tmp_path / "bin")])
    assert out == ADD_RESULT
    assert recorder.loaded == []


def test_not_frozen_means_no_own_executable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(sys, "frozen", raising=False)
    assert invoke._own_programs() == ()
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    program = os.path.realpath(sys.executable)
    assert invoke._own_programs() == (program, os.path.join(os.path.dirname(program), "cni"))
