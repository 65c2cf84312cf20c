"""loopback: bring the pod's `lo` up. Kubelet runs it for every pod.

Config: no keys of its own. Chained after another plugin it passes `prevResult` through.
"""

from __future__ import annotations

from pycni import ifflags, netns
from pycni.errors import CNIError
from pycni.result import Interface, IPConfig, Result
from pycni.skel import CmdArgs, Plugin


def _in_pod(args: CmdArgs, action: str) -> list[str]:
    """Run `action` ("up", "down", "check") on the interface inside the pod; its addresses."""
    with netns.entered(args.netns):
        try:
            if action == "check":
                if not ifflags.is_up(args.ifname):
                    raise CNIError(f"loopback interface {args.ifname!r} is down")
                return []
            ifflags.set_up(args.ifname, up=(action == "up"))
            return ifflags.addresses(args.ifname) if action == "up" else []
        except OSError as exc:
            raise CNIError(f"failed to set {args.ifname!r} {action} in {args.netns!r}: "
                           f"{exc.strerror}") from None


def cmd_add(args: CmdArgs) -> Result:
    addresses = _in_pod(args, "up")
    prev = args.prev_result
    if prev is not None:
        return prev
    return Result(
        interfaces=[Interface(args.ifname, mac="00:00:00:00:00:00", sandbox=args.netns)],
        ips=[IPConfig(address, interface=0) for address in addresses],
    )


def cmd_del(args: CmdArgs) -> None:
    if args.netns and netns.exists(args.netns):
        _in_pod(args, "down")


def cmd_check(args: CmdArgs) -> None:
    _in_pod(args, "check")


def cmd_status(args: CmdArgs) -> None:
    """Loopback needs nothing from the node: always ready."""


def cmd_gc(args: CmdArgs) -> None:
    """Loopback keeps no state outside the pod's namespace: nothing to collect."""


PLUGIN = Plugin("pycni loopback plugin", add=cmd_add, delete=cmd_del, check=cmd_check,
                status=cmd_status, gc=cmd_gc)
