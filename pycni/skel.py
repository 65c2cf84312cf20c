"""The dispatcher: environment and stdin in, one result or one error JSON out.

`run` takes the environment and the streams as parameters, so tests drive plugins without
processes; `main` binds them to the real process.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping

from pycni import spec
from pycni.errors import (
    CNIError,
    DecodeFailure,
    IncompatibleVersion,
    InvalidConfig,
    InvalidEnvironment,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from typing import IO

    from pycni.result import Json, Result

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
_CONTAINER_ONLY = ("ADD", "DEL", "CHECK")
# Which variables each command requires (CNI_NETNS is optional on DEL).
REQUIRED: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "STATUS": ("CNI_PATH",),
    "GC": ("CNI_PATH",),
    "VERSION": (),
}
# Verbs that need a minimum config version.
MIN_VERSION = {"CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0"}


def _valid_name(value: str) -> bool:
    """Container IDs and network names: a letter or digit, then letters, digits, _ . -"""
    return bool(value) and value[0].isascii() and value[0].isalnum() and all(
        c.isascii() and (c.isalnum() or c in "_.-") for c in value)


def ifname_problem(name: str) -> str | None:
    if not name:
        return "interface name is empty"
    if len(name) > 15:
        return f"interface name {name!r} is too long (at most 15 characters)"
    if name in (".", ".."):
        return "interface name is . or .."
    if any(c in "/:" or c.isspace() for c in name):
        return f"interface name {name!r} contains / or : or whitespace"
    return None


class CmdArgs:
    """What the runtime handed us: the CNI_* variables and the decoded config."""

    __slots__ = ("command", "container_id", "netns", "ifname", "args", "path", "stdin_data",
                 "conf", "cni_version", "environ")

    def __init__(self, command: str, container_id: str, netns: str, ifname: str, args: str,
                 path: list[str], stdin_data: bytes, conf: Json, cni_version: str,
                 environ: Mapping[str, str]) -> None:
        self.command, self.container_id, self.netns, self.ifname = (
            command, container_id, netns, ifname)
        self.args, self.path, self.stdin_data = args, path, stdin_data
        self.conf, self.cni_version, self.environ = conf, cni_version, environ

    @property
    def prev_result(self) -> Result | None:
        """The previous plugin's result, in the newest form, when chained."""
        raw = self.conf.get("prevResult")
        if raw is None:
            return None
        from pycni.result import Result

        return Result.from_dict(raw)

    def require_prev_result(self) -> Result:
        """The previous plugin's result, which a chained plugin cannot work without."""
        prev = self.prev_result
        if prev is None:
            raise InvalidConfig(f"{self.conf.get('type') or 'this plugin'} must be called as a "
                                "chained plugin: prevResult missing")
        return prev


Handler = Callable[[CmdArgs], "Result | None"]


class Plugin:
    """A plugin: its handlers, the versions it speaks, and a line about it."""

    __slots__ = ("about", "add", "delete", "check", "status", "gc", "versions", "check_netns")

    def __init__(self, about: str, *, add: Handler, delete: Handler, check: Handler,
                 status: Handler | None = None, gc: Handler | None = None,
                 versions: tuple[str, ...] = spec.ALL, check_netns: bool = True) -> None:
        self.about, self.add, self.delete, self.check = about, add, delete, check
        self.status, self.gc, self.versions = status, gc, versions
        # Main plugins refuse a CNI_NETNS that is not a network namespace before doing
        # anything; IPAM plugins never enter the namespace and switch this off.
        self.check_netns = check_netns

    def handler(self, command: str) -> Handler | None:
        return {"ADD": self.add, "DEL": self.delete, "CHECK": self.check,
                "STATUS": self.status, "GC": self.gc}.get(command)


def read_environment(environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """The command and every problem with the CNI_* variables, so all are reported at once."""
    command = environ.get("CNI_COMMAND", "")
    problems: list[str] = []
    if command not in COMMANDS:
        return command, [f"unknown CNI_COMMAND: {command!r}"]
    missing = [name for name in REQUIRED[command] if not environ.get(name)]
    if missing:
        problems.append(f"required env variables [{','.join(missing)}] missing")
    if command in _CONTAINER_ONLY:
        container_id = environ.get("CNI_CONTAINERID", "")
        if container_id and not _valid_name(container_id):
            problems.append(f"invalid characters in CNI_CONTAINERID {container_id!r}")
        ifname = environ.get("CNI_IFNAME", "")
        problem = ifname_problem(ifname) if ifname else None
        if problem:
            problems.append(f"CNI_IFNAME: {problem}")
    return command, problems


def decode_config(stdin_data: bytes) -> Json:
    try:
        conf = json.loads(stdin_data)
    except ValueError as exc:
        raise DecodeFailure(f"error decoding network config: {exc}") from exc
    if not isinstance(conf, dict):
        raise DecodeFailure("error decoding network config: expected a JSON object")
    return conf


def _check_config(command: str, conf: Json, plugin: Plugin, version: str) -> None:
    if version not in plugin.versions:
        spec.parse(version)  # a malformed version gets its own message
        raise IncompatibleVersion(
            "incompatible CNI versions",
            f"config is {version!r}, plugin supports {list(plugin.versions)}",
        )
    minimum = MIN_VERSION.get(command)
    if minimum and not spec.at_least(version, minimum):
        raise IncompatibleVersion(f"config version {version} does not allow {command}",
                                  f"{command} needs cniVersion {minimum} or later")
    name = conf.get("name")
    if command in _CONTAINER_ONLY or command in ("STATUS", "GC"):
        if not name:
            raise InvalidConfig("missing network name")
        if not isinstance(name, str) or not _valid_name(name):
            raise InvalidConfig("invalid characters found in network name", str(name))


def run(plugin: Plugin, environ: Mapping[str, str], stdin: IO[bytes], stdout: IO[str],
        stderr: IO[str]) -> int:
    """Execute one CNI command. Returns the exit status; writes only JSON to stdout."""
    command = environ.get("CNI_COMMAND", "")
    if not command:
        print(plugin.about, file=stderr)
        print(f"CNI protocol versions supported: {', '.join(plugin.versions)}", file=stderr)
        return 0
    cni_version = spec.LATEST
    try:
        command, problems = read_environment(environ)
        if problems:
            raise InvalidEnvironment("; ".join(problems))
        if command == "VERSION":
            stdout.write(spec.version_json(plugin.versions))
            return 0
        stdin_data = stdin.read()
        conf = decode_config(stdin_data)
        version = spec.config_version(conf, plugin.versions)
        if version in plugin.versions:
            cni_version = version  # errors from here on speak the config's version
        _check_config(command, conf, plugin, version)
        args = CmdArgs(
            command=command,
            container_id=environ.get("CNI_CONTAINERID", ""),
            netns=environ.get("CNI_NETNS", ""),
            ifname=environ.get("CNI_IFNAME", ""),
            args=environ.get("CNI_ARGS", ""),
            path=[p for p in environ.get("CNI_PATH", "").split(os.pathsep) if p],
            stdin_data=stdin_data, conf=conf, cni_version=cni_version, environ=environ,
        )
        if plugin.check_netns and args.netns and command in _CONTAINER_ONLY:
            from pycni import netns

            netns.validate(args.netns, missing_ok=(command == "DEL"))
        handler = plugin.handler(command)
        if handler is None:
            raise IncompatibleVersion(f"plugin does not implement {command}")
        result = handler(args)
        if command == "ADD":
            if result is None:
                raise CNIError("plugin returned no result for ADD")
            _print(stdout, result.to_version(cni_version))
        return 0
    except CNIError as err:
        _print(stdout, err.to_dict(cni_version))
        return 1
    except Exception as exc:  # noqa: BLE001 - the spec wants every failure as JSON
        from pycni import log

        log.get(stderr).error("unexpected error in %s", command, exc_info=True)
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        _print(stdout, CNIError(message).to_dict(cni_version))
        return 1


def _print(stdout: IO[str], data: Json) -> None:
    stdout.write(json.dumps(data, indent=4))
    stdout.write("\n")
    stdout.flush()


def main(plugin: Plugin) -> None:
    """The process entry: real environment and streams, exit with the status."""
    sys.exit(run(plugin, os.environ, sys.stdin.buffer, sys.stdout, sys.stderr))
