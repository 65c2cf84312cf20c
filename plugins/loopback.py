"""loopback: bring the pod's `lo` up. Kubelet runs it for every pod.

Config: no keys of its own. Chained after another plugin it passes `prevResult` through.
Like the reference plugin it always works on `lo`, whatever CNI_IFNAME says.
"""

from __future__ import annotations

from pycni import ifflags, netns
from pycni.errors import CNIError
from pycni.result import Interface, IPConfig, Result
from pycni.skel import CmdArgs, Plugin

LO = "lo"


def _failed(args: CmdArgs, what: str, exc: OSError) -> CNIError:
    return CNIError(f"failed to {what} {LO!r} in {args.netns!r}: {exc.strerror}")


def _is_loopback_address(address: str) -> bool:
    return address.startswith("127.") or address.split("/")[0] == "::1"


def cmd_add(args: CmdArgs) -> Result:
    with netns.entered(args.netns):
        try:
            ifflags.set_up(LO)
            addresses = ifflags.addresses(LO)
            every_address = ifflags.ipv4_addresses(LO) + [a for a in addresses if ":" in a]
        except OSError as exc:
            raise _failed(args, "bring up", exc) from None
    strangers = [a for a in every_address if not _is_loopback_address(a)]
    if strangers:
        raise CNIError(f"loopback interface found with non-loopback address {strangers[0]!r}")
    prev = args.prev_result
    if prev is not None:
        return prev
    first_v4 = [a for a in addresses if ":" not in a][:1]
    first_v6 = [a for a in addresses if ":" in a][:1]
    return Result(
        interfaces=[Interface(LO, mac="00:00:00:00:00:00", sandbox=args.netns)],
        ips=[IPConfig(address, interface=0) for address in first_v4 + first_v6],
    )


def cmd_del(args: CmdArgs) -> None:
    if not args.netns or not netns.exists(args.netns):
        return  # the pod's namespace is gone, and its lo with it
    with netns.entered(args.netns):
        try:
            ifflags.set_up(LO, up=False)
        except OSError as exc:
            raise _failed(args, "bring down", exc) from None


def cmd_check(args: CmdArgs) -> None:
    with netns.entered(args.netns):
        try:
            up = ifflags.is_up(LO)
        except OSError as exc:
            raise _failed(args, "find", exc) from None
    if not up:
        raise CNIError(f"loopback interface {LO!r} is down in {args.netns!r}")


def cmd_status(args: CmdArgs) -> None:
    """Loopback needs nothing from the node: always ready."""


def cmd_gc(args: CmdArgs) -> None:
    """Loopback keeps no state outside the pod's namespace: nothing to collect."""


PLUGIN = Plugin("pycni loopback plugin", add=cmd_add, delete=cmd_del, check=cmd_check,
                status=cmd_status, gc=cmd_gc)
