"""Sysctls, in the calling thread's network namespace (use inside `netns.entered`)."""

from __future__ import annotations

from pycni import faults
from pycni.errors import CNIError


def path(key: str) -> str:
    """`net.ipv4.ip_forward` or `net/ipv4/ip_forward` -> /proc/sys/net/ipv4/ip_forward.

    Interface names may hold dots, so a key with slashes is taken as it is.
    """
    key = key.strip("/")
    relative = key if "/" in key else key.replace(".", "/")
    if ".." in relative.split("/"):
        raise CNIError(f"invalid sysctl {key!r}")
    return f"/proc/sys/{relative}"


def read(key: str) -> str:
    with open(path(key)) as f:
        return f.read().strip()


def write(key: str, value: str) -> None:
    with open(path(key), "w") as f:
        f.write(value)
    faults.point(f"sysctl {key}")


def write_quietly(key: str, value: str) -> bool:
    """Best effort (the reference ignores these failures too): False when it did not take."""
    try:
        write(key, value)
        return True
    except OSError:
        return False
