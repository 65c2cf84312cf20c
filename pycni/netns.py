"""Network namespaces: check a path, enter one briefly, open netlink sockets bound to one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from pycni import faults
from pycni.errors import InvalidEnvironment, OwnNamespace, UnknownContainer

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from pyroute2 import IPRoute

CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000  # mount namespace
NS_GET_NSTYPE = 0xB703  # ioctl on a namespace file: which kind of namespace it is


INIT_PATH = "/proc/1/ns/net"  # the namespace of the machine's (or PID namespace's) init


def own_path() -> str:
    return "/proc/thread-self/ns/net"


def _same_file(found: os.stat_result, path: str) -> bool:
    try:
        other = os.stat(path)
    except OSError:  # e.g. /proc/1 not visible in this PID namespace
        return False
    return (found.st_dev, found.st_ino) == (other.st_dev, other.st_ino)


def exists(path: str) -> bool:
    return os.path.exists(path)


def validate(path: str, missing_ok: bool = False) -> bool:
    """Check that `path` is a network namespace, neither ours nor the initial one (the node's
    own, wherever the plugin runs). False if missing and allowed."""
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
        given = os.fstat(fd)
        if _same_file(given, own_path()):
            raise OwnNamespace(f"CNI_NETNS {path!r} is the plugin's own network namespace",
                               "refusing to configure the node's namespace as a pod's")
        if _same_file(given, INIT_PATH):  # the plugin may run elsewhere (a test's node)
            raise OwnNamespace(f"CNI_NETNS {path!r} is the machine's initial network "
                               "namespace", "refusing to configure the node's namespace as a "
                               "pod's")
    finally:
        os.close(fd)
    return True


def _setns(fd: int) -> None:
    setns(fd, CLONE_NEWNET)


def setns(fd: int, nstype: int) -> None:
    """setns(2): this thread into the namespace open at `fd`, of kind `nstype`."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, nstype) != 0:
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


@contextmanager
def temporary() -> Iterator[str]:
    """A new, empty network namespace for the block; yields a path to it.

    Only an open descriptor holds it (no name on disk), so it is gone when the block ends or
    the process dies, whatever happens. Move links out before the block ends: virtual links
    die with it, physical ones fall back to the machine's initial namespace.
    """
    import ctypes

    home = os.open(own_path(), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"failed to create a network namespace: {os.strerror(errno)}")
        try:
            fd = os.open(own_path(), os.O_RDONLY | os.O_CLOEXEC)
        finally:
            _setns(home)
    finally:
        os.close(home)
    try:
        yield f"/proc/{os.getpid()}/fd/{fd}"  # valid in helper processes too
    finally:
        os.close(fd)


def ipr(path: str | None = None) -> IPRoute:
    """A netlink socket bound to the namespace at `path` (ours when None).

    The thread enters the namespace only while the socket is made: a socket keeps the
    namespace it was created in. pyroute2's own `IPRoute(netns=...)` forks a helper process
    for that (about 12 ms per socket). A vanished namespace is an error, never a new empty
    one created in its place.
    """
    from pyroute2 import IPRoute

    if faults.active():
        IPRoute = faults.netlink_class(IPRoute)  # noqa: N806 - the class, swapped
    if path is None:
        return IPRoute()
    try:
        with entered(path):
            return IPRoute()
    except UnknownContainer as exc:
        raise FileNotFoundError(2, str(exc), path) from None  # ENOENT
