"""Network namespaces: check a path, enter one briefly, open netlink sockets bound to one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from pycni.errors import InvalidEnvironment, OwnNamespace, UnknownContainer

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from pyroute2 import IPRoute

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # ioctl on a namespace file: which kind of namespace it is


def own_path() -> str:
    return "/proc/thread-self/ns/net"


def exists(path: str) -> bool:
    return os.path.exists(path)


def validate(path: str, missing_ok: bool = False) -> bool:
    """Check that `path` is a network namespace other than ours. False if missing and allowed."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        if missing_ok:
            return False
        raise UnknownContainer(f"network namespace {path!r} does not exist") from None
    except OSError as exc:
        raise InvalidEnvironment(f"cannot open CNI_NETNS {path!r}: {exc.strerror}") from None
    try:
        try:
            kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
        except OSError:
            kind = None
        if kind != CLONE_NEWNET:
            raise InvalidEnvironment(f"CNI_NETNS {path!r} is not a network namespace")
        given, own = os.fstat(fd), os.stat(own_path())
        if (given.st_dev, given.st_ino) == (own.st_dev, own.st_ino):
            raise OwnNamespace(f"CNI_NETNS {path!r} is the plugin's own network namespace",
                               "refusing to configure the node's namespace as a pod's")
    finally:
        os.close(fd)
    return True


def _setns(fd: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


@contextmanager
def entered(path: str) -> Iterator[None]:
    """Run a small block with this thread inside the namespace at `path`, then come back.

    For the few things netlink sockets cannot do from outside (sysctls, ioctls).
    """
    home = os.open(own_path(), os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise UnknownContainer(f"network namespace {path!r} does not exist") from None
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def ipr(path: str | None = None) -> IPRoute:
    """A netlink socket bound to the namespace at `path` (ours when None).

    `flags=0`: a vanished namespace is an error, never a new empty one created in its place.
    """
    from pyroute2 import IPRoute

    if path is None:
        return IPRoute()
    return IPRoute(netns=path, flags=0)
