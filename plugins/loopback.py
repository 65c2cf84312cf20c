"""loopback: bring the pod's `lo` up. Kubelet runs it for every pod.

Config: no keys of its own. Chained after another plugin it passes `prevResult` through.
"""

from __future__ import annotations

from pycni import ifflags, netns
from pycni.errors import CNIError
from pycni.result import Interface, IPConfig, Result
from pycni.skel import CmdArgs, Plugin


def _failed(args: CmdArgs, what: str, exc: OSError) -> CNIError:
    return CNIError(f"failed to {what} {args.ifname!r} in {args.netns!r}: {exc.strerror}")


def cmd_add(args: CmdArgs) -> Result:
    with netns.entered(args.netns):
        try:
            ifflags.set_up(args.ifname)
            addresses = ifflags.addresses(args.ifname)
        except OSError as exc:
            raise _failed(args, "bring up", exc) from None
    prev = args.prev_result
    if prev is not None:
        return prev
    return Result(
        interfaces=[Interface(args.ifname, mac="00:00:00:00:00:00", sandbox=args.netns)],
        ips=[IPConfig(address, interface=0) for address in addresses],
    )


def cmd_del(args: CmdArgs) -> None:
    if not args.netns or not netns.exists(args.netns):
        return  # the pod's namespace is gone, and its lo with it
    with netns.entered(args.netns):
        try:
            ifflags.set_up(args.ifname, up=False)
        except OSError as exc:
            raise _failed(args, "bring down", exc) from None


def cmd_check(args: CmdArgs) -> None:
    with netns.entered(args.netns):
        try:
            up = ifflags.is_up(args.ifname)
        except OSError as exc:
            raise _failed(args, "find", exc) from None
    if not up:
        raise CNIError(f"loopback interface {args.ifname!r} is down in {args.netns!r}")


def cmd_status(args: CmdArgs) -> None:
    """Loopback needs nothing from the node: always ready."""


def cmd_gc(args: CmdArgs) -> None:
    """Loopback keeps no state outside the pod's namespace: nothing to collect."""


PLUGIN = Plugin("pycni loopback plugin", add=cmd_add, delete=cmd_del, check=cmd_check,
                status=cmd_status, gc=cmd_gc)
