"""The IPAM delegate of a main plugin, run as the spec says (and in-process when it is ours)."""

from __future__ import annotations

from pycni import invoke
from pycni.result import Result
from pycni.skel import CmdArgs


def _run(command: str, ipam_type: str, args: CmdArgs) -> Result | None:
    output = invoke.delegate(command, ipam_type, args.stdin_data, args.environ, args.path)
    return Result.from_dict(output) if output is not None else None


def add(ipam_type: str, args: CmdArgs) -> Result:
    result = _run("ADD", ipam_type, args)
    assert result is not None
    return result


def delete(ipam_type: str, args: CmdArgs) -> None:
    _run("DEL", ipam_type, args)


def forward(command: str, ipam_type: str, args: CmdArgs) -> None:
    """CHECK, STATUS and GC go to the IPAM plugin as they came."""
    _run(command, ipam_type, args)
