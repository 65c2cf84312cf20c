"""pycni.main: the admin command and the busybox-style dispatch on the program's name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pycni
from pycni import main, registry, spec

VENV_BIN = Path(sys.executable).parent
HEAVY = ("pydantic", "pyroute2")


def exit_status(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main.main(argv)
    code = info.value.code
    assert isinstance(code, int), code
    return code


def clean_env(**extra: str) -> dict[str, str]:
    """A process environment with no CNI_* variables inherited from the test run."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    env.update(extra)
    return env


def test_types_lists_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status(["pycni", "types"]) == 0
    out = capsys.readouterr().out
    assert "loopback" in out.split()
    assert out.split() == sorted(registry.PLUGINS)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status(["/usr/local/bin/pycni", "version"]) == 0
    out = capsys.readouterr().out
    assert out == f"pycni {pycni.__version__} (CNI {', '.join(spec.ALL)})\n"


def test_no_arguments_is_usage_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status(["pycni"]) == 2
    captured = capsys.readouterr()
    assert "usage: pycni" in captured.out + captured.err


@pytest.mark.parametrize("flag", ["help", "-h", "--help"])
def test_help_is_usage_and_success(capsys: pytest.CaptureFixture[str], flag: str) -> None:
    assert exit_status(["pycni", flag]) == 0
    assert "usage: pycni" in capsys.readouterr().out


def test_unknown_command_is_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status(["pycni", "frobnicate"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "'frobnicate'" in captured.err


def test_called_by_a_type_name_runs_that_plugin(capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNI_COMMAND", "VERSION")
    assert exit_status(["/opt/cni/bin/loopback", "ignored", "arguments"]) == 0
    assert json.loads(capsys.readouterr().out) == {"cniVersion": spec.LATEST,
                                                   "supportedVersions": list(spec.ALL)}


def test_pycni_type_runs_that_plugin(capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNI_COMMAND", "VERSION")
    assert exit_status(["pycni", "loopback"]) == 0
    assert json.loads(capsys.readouterr().out)["supportedVersions"] == list(spec.ALL)


def test_version_command_answers_from_the_registry(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """VERSION must not load the plugin: the registry's list is the answer."""
    monkeypatch.setenv("CNI_COMMAND", "VERSION")
    monkeypatch.setitem(registry.VERSIONS, "loopback", ("0.4.0", "1.0.0"))

    def no_load(plugin_type: str) -> None:
        raise AssertionError(f"loaded {plugin_type} for VERSION")

    monkeypatch.setattr(registry, "load", no_load)
    with pytest.raises(SystemExit) as info:
        main.run_plugin("loopback")
    assert info.value.code == 0
    assert json.loads(capsys.readouterr().out)["supportedVersions"] == ["0.4.0", "1.0.0"]


def test_subprocess_version_imports_nothing_heavy() -> None:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "pycni", "loopback"],
                          env=clean_env(CNI_COMMAND="VERSION"), capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"cniVersion": "1.1.0",
                                       "supportedVersions": list(spec.ALL)}
    imported = [line.split("|")[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")]
    assert "pycni.main" in imported  # the report is really there
    for module in imported:
        assert module.split(".")[0] not in HEAVY, f"VERSION imported {module}"
    assert "pycni.plugins.loopback" not in imported  # answered without loading the plugin


def test_busybox_link_to_the_entry_point(tmp_path: Path) -> None:
    """`/opt/cni/bin/loopback -> pycni`: the name it is called by picks the plugin."""
    entry = VENV_BIN / "pycni"
    if not entry.exists():
        pytest.skip("the pycni console script is not installed")
    (tmp_path / "loopback").symlink_to(entry)
    done = subprocess.run([str(tmp_path / "loopback")], env=clean_env(CNI_COMMAND="VERSION"),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["supportedVersions"] == list(spec.ALL)


def test_subprocess_without_cni_command_prints_about_to_stderr() -> None:
    done = subprocess.run([sys.executable, "-m", "pycni", "loopback"], env=clean_env(),
                          input="", capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr == ("pycni loopback plugin\n"
                           f"CNI protocol versions supported: {', '.join(spec.ALL)}\n")


def test_subprocess_unknown_command() -> None:
    done = subprocess.run([sys.executable, "-m", "pycni", "frobnicate"], env=clean_env(),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "unknown command 'frobnicate'" in done.stderr


def test_restore_environment_drops_what_the_bootloader_added(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bundled = tmp_path / "_internal"
    bundled.mkdir()
    monkeypatch.setattr(sys, "_MEIPASS", str(bundled), raising=False)
    environ = {"LD_LIBRARY_PATH": f"{bundled}:{bundled}:/caller/lib",
               "LD_LIBRARY_PATH_ORIG": f"{bundled}:/caller/lib",
               "_PYI_ARCHIVE_FILE": "/opt/cni/bin/x", "_PYI_PARENT_PROCESS_LEVEL": "1",
               "CNI_COMMAND": "ADD"}

    main.restore_environment(environ)

    assert environ == {"LD_LIBRARY_PATH": "/caller/lib", "CNI_COMMAND": "ADD"}
    only_ours = {"LD_LIBRARY_PATH": str(bundled)}
    main.restore_environment(only_ours)
    assert only_ours == {}
