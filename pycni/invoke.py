"""Delegation: run another plugin (IPAM, a chained or delegated plugin) as the spec says.

The type is looked up in CNI_PATH; the delegate gets our environment with only CNI_COMMAND
changed (unless the caller overrides more) and the config bytes on stdin. When the file found
is this very program, the delegate runs in-process instead of starting a second interpreter.
"""

from __future__ import annotations

import errno
import io
import json
import os
import sys
import time
from collections.abc import Mapping

from pycni import faults
from pycni.errors import CNIError, DecodeFailure, InvalidConfig
from pycni.errors import from_dict as error_from_dict

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from pycni.result import Json

EXEC_RETRIES = 5  # "text file busy" while an installer swaps the binary


class Executor:
    """Runs a plugin binary. Swappable so tests can stand in for the real thing."""

    def find(self, plugin_type: str, paths: list[str]) -> str:
        if not plugin_type or "/" in plugin_type or plugin_type in (".", ".."):
            raise InvalidConfig(f"invalid plugin type {plugin_type!r}")
        for directory in paths:
            candidate = os.path.join(directory, plugin_type)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
        raise InvalidConfig(f"failed to find plugin {plugin_type!r} in path {paths}")

    def run(self, path: str, stdin_data: bytes, environ: Mapping[str, str]) -> tuple[int, bytes]:
        """Exit status and stdout of the plugin at `path`."""
        if is_own(path):
            return _run_in_process(os.path.basename(path), stdin_data, environ)
        return _exec(path, stdin_data, environ)


def is_own(path: str) -> bool:
    """Whether `path` is (a link to) this very program, which can run the type in-process."""
    return os.path.realpath(path) in _own_programs()


def _own_programs() -> tuple[str, ...]:
    """The bundle's executables when frozen (where in-process delegation is possible): this
    program and the launcher beside it, which the `<type>` links point to."""
    if not getattr(sys, "frozen", False):
        return ()
    from pycni import launch

    program = os.path.realpath(sys.executable)
    return program, os.path.join(os.path.dirname(program), launch.LAUNCHER)


def _run_in_process(name: str, stdin_data: bytes, environ: Mapping[str, str]) -> tuple[int, bytes]:
    from pycni import registry, skel

    if name not in registry.PLUGINS:
        raise InvalidConfig(f"plugin {name!r} links to pycni but pycni has no such type")
    out = io.StringIO()
    status = skel.run(registry.load(name), environ, io.BytesIO(stdin_data), out, sys.stderr)
    return status, out.getvalue().encode()


def _exec(path: str, stdin_data: bytes, environ: Mapping[str, str]) -> tuple[int, bytes]:
    import subprocess

    for attempt in range(EXEC_RETRIES):
        try:
            done = subprocess.run([path], input=stdin_data, env=dict(environ),
                                  stdout=subprocess.PIPE, check=False)
            return done.returncode, done.stdout
        except OSError as exc:
            if exc.errno != errno.ETXTBSY or attempt == EXEC_RETRIES - 1:
                raise CNIError(f"failed to run plugin {path}: {exc.strerror}") from None
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


EXECUTOR = Executor()


def delegate(command: str, plugin_type: str, stdin_data: bytes, environ: Mapping[str, str],
             path: list[str], executor: Executor | None = None,
             **overrides: str) -> Json | None:
    """Run `plugin_type` with CNI_COMMAND=`command`; its result JSON for ADD, else None.

    A delegate's error is raised again here with its code, so it reaches the runtime intact.
    """
    executor = executor or EXECUTOR
    binary = executor.find(plugin_type, path)
    env = dict(environ)
    env["CNI_COMMAND"] = command
    env.update(overrides)
    status, stdout = executor.run(binary, stdin_data, env)
    faults.point(f"delegate {command} {plugin_type}")
    output: object = None
    if stdout.strip():
        try:
            output = json.loads(stdout)
        except ValueError:
            raise DecodeFailure(f"plugin {plugin_type!r} printed invalid JSON",
                                stdout[:200].decode(errors="replace")) from None
    if status != 0:
        if isinstance(output, dict) and "code" in output:
            raise error_from_dict(output)
        raise CNIError(f"plugin {plugin_type!r} failed with status {status}")
    if command == "ADD":
        if not isinstance(output, dict):
            raise DecodeFailure(f"plugin {plugin_type!r} returned no result for ADD")
        return output
    return None
