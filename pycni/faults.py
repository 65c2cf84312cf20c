"""Fault points: kill the plugin right after its Nth side effect, to prove crash safety.

The mechanisms call `point("what")` right after each change they make to the node (a link,
address, route, qdisc or firewall rule, a sysctl, a state file) and after a delegate
returns. Unset, a point costs one environment lookup. The variables:

- `PYCNI_FAULTS`: a counter file. Set, every point of the whole run adds one to it under
  an flock, so delegates in other processes (host-local exec'd by bridge) continue the
  same numbering and a run numbers its points the same way every time.
- `PYCNI_FAULT_AT`: N. The Nth point kills the plugin's whole process group with SIGKILL,
  as a crash or an OOM kill would (no `finally`, no undo). Unset or 0: count only.
- `PYCNI_FAULT_TRACE`: a file; each point appends `N what` to it (written before the kill).

Only a process that shares its session leader's process group kills: the caller starts the
plugin with a session of its own (`start_new_session=True`), so the kill reaches exactly the
plugin and its delegates, never the program that started it.
"""

from __future__ import annotations

import os

COUNTER = "PYCNI_FAULTS"
AT = "PYCNI_FAULT_AT"
TRACE = "PYCNI_FAULT_TRACE"
# Netlink calls whose command only reads.
READS = frozenset({"get", "dump", "show", "list", "lookup"})
NETLINK_CHANGES = frozenset({"link", "addr", "route", "neigh", "rule", "tc", "brport",
                             "vlan_filter", "fdb"})


def active() -> bool:
    return bool(os.environ.get(COUNTER))


def point(what: str) -> None:
    """A side effect `what` has just happened."""
    counter = os.environ.get(COUNTER)
    if counter:
        _hit(counter, what)


def _hit(counter: str, what: str) -> None:
    import fcntl
    import signal

    fd = os.open(counter, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        number = int(os.read(fd, 32) or b"0") + 1
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, str(number).encode())
        trace = os.environ.get(TRACE)
        if trace:
            with open(trace, "a") as f:
                f.write(f"{number} {what}\n")
        if number == int(os.environ.get(AT) or 0) and os.getpgid(0) == os.getsid(0):
            os.killpg(0, signal.SIGKILL)
    finally:
        os.close(fd)


def netlink_class(base: type) -> type:
    """`base` (pyroute2's IPRoute) whose changing requests pass a point once they succeed."""

    class FaultyIPRoute(base):  # type: ignore[misc]
        def __getattr__(self, name: str) -> object:
            found = super().__getattr__(name)
            if name not in NETLINK_CHANGES:
                return found

            def request(command: str, *args: object, **kwargs: object) -> object:
                answer = found(command, *args, **kwargs)
                if command not in READS:
                    point(f"netlink {name} {command}")
                return answer

            return request

    return FaultyIPRoute
