"""What ADD did, per (container ID, interface), so DEL and CHECK never need the API.

One file per pod attachment under `cniDir`, `<containerID>:<ifname>`, written atomically:
the pod's identity and, for every network, the full delegate config, its interface, the
capability arguments given, the versions each plugin ran at and the final result. ADD
writes it before the first delegate runs (a crash mid-ADD still leaves DEL a plan) and after
each delegate succeeds.
"""

from __future__ import annotations

import contextlib
import json
import os

from pycni.meta.multus.delegates import Attachment

from pycni.errors import InvalidConfig
from pycni.store import check_key, flock, make_dirs, remove_dirs, write_atomic

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Iterator

    from pycni.result import Json

FORMAT = 1
LOCK_NAME = ".lock"


class CorruptCache(Exception):
    """The file exists but is not a cache this plugin wrote."""


class PodCache:
    """The attachments of one pod's runtime attachment (container ID, CNI_IFNAME)."""

    __slots__ = ("container_id", "ifname", "netns", "pod_namespace", "pod_name", "pod_uid",
                 "attachments")

    def __init__(self, container_id: str, ifname: str, netns: str, pod_namespace: str,
                 pod_name: str, pod_uid: str = "",
                 attachments: list[Attachment] | None = None) -> None:
        self.container_id, self.ifname, self.netns = container_id, ifname, netns
        self.pod_namespace, self.pod_name, self.pod_uid = pod_namespace, pod_name, pod_uid
        self.attachments = attachments or []

    @property
    def pod(self) -> str:
        return f"{self.pod_namespace}/{self.pod_name}"

    def to_json(self) -> Json:
        return {"format": FORMAT, "containerID": self.container_id, "ifname": self.ifname,
                "netns": self.netns, "podNamespace": self.pod_namespace,
                "podName": self.pod_name, "podUID": self.pod_uid,
                "attachments": [a.to_json() for a in self.attachments]}

    @classmethod
    def from_json(cls, data: object) -> PodCache:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CorruptCache("not a multus cache of this format")
        try:
            raw = data["attachments"]
            if not isinstance(raw, list):
                raise CorruptCache("attachments is not a list")
            return cls(str(data["containerID"]), str(data["ifname"]), str(data["netns"]),
                       str(data["podNamespace"]), str(data["podName"]),
                       str(data.get("podUID") or ""), [Attachment.from_json(a) for a in raw])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptCache(str(exc)) from None


def key(container_id: str, ifname: str) -> str:
    """Container IDs hold no ':', so the key splits back into its parts (for GC)."""
    return check_key(f"{container_id}:{ifname}", "container ID and interface")


def attachment_of(name: str) -> tuple[str, str] | None:
    container_id, sep, ifname = name.partition(":")
    return (container_id, ifname) if sep and container_id and ifname else None


def path(cni_dir: str, container_id: str, ifname: str) -> str:
    return os.path.join(cni_dir, key(container_id, ifname))


@contextlib.contextmanager
def locked(cni_dir: str, container_id: str) -> Iterator[None]:
    """One container at a time (the runtime promises it; the hot-plug command does not).

    The lock file lives as long as the container has a cache: whatever happened under the
    lock, the holder removes the file on its way out when no cache of the container is left
    (DEL of its last attachment, a failed ADD, a DEL with nothing cached), so a node does not
    keep one file per pod it ever ran. A process waiting on the removed file locks the new
    one (`pycni.store.flock`). A cache directory this call created goes too when it is
    left empty (a failed first ADD or DEL on a node changes nothing)."""
    created = _ensure(cni_dir)
    lock = os.path.join(cni_dir, f"{LOCK_NAME}.{check_key(container_id)}")
    with flock(lock, recreate=lambda: _ensure(cni_dir)):
        try:
            yield
        finally:
            if not _has_cache(cni_dir, container_id):
                with contextlib.suppress(OSError):
                    os.unlink(lock)
                remove_dirs(created)


def _has_cache(cni_dir: str, container_id: str) -> bool:
    prefix = f"{container_id}:"
    try:
        with os.scandir(cni_dir) as entries:
            return any(entry.name.startswith(prefix) for entry in entries)
    except OSError:
        return True  # cannot tell: keep the lock file, GC removes it


def _ensure(cni_dir: str) -> list[str]:
    from pycni.errors import IOFailure

    try:
        return make_dirs(cni_dir)
    except OSError as exc:
        raise IOFailure(f"failed to create {cni_dir}: {exc.strerror}") from None


def save(cni_dir: str, cache: PodCache) -> None:
    _ensure(cni_dir)
    write_atomic(path(cni_dir, cache.container_id, cache.ifname),
                 json.dumps(cache.to_json(), indent=1).encode())


def load(cni_dir: str, container_id: str, ifname: str) -> PodCache | None:
    """The cache, None when there is none; CorruptCache when it cannot be read back."""
    try:
        with open(path(cni_dir, container_id, ifname), "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return None
    except InvalidConfig:
        return None  # an interface name no file can be named after: ADD refused it
    except OSError as exc:
        raise CorruptCache(f"cannot read: {exc.strerror}") from None
    try:
        return PodCache.from_json(json.loads(data))
    except ValueError as exc:
        raise CorruptCache(f"invalid JSON: {exc}") from None


def remove(cni_dir: str, container_id: str, ifname: str) -> None:
    """Forget the attachment (under `locked`, which then removes the container's lock file
    if this was its last cache)."""
    with contextlib.suppress(FileNotFoundError, InvalidConfig):
        os.unlink(path(cni_dir, container_id, ifname))


def remove_stale_locks(cni_dir: str, live: set[str]) -> None:
    """Lock files of containers that have no cache any more, e.g. left by a process killed
    under the lock (GC is never concurrent with ADD or DEL)."""
    try:
        entries = os.listdir(cni_dir)
    except FileNotFoundError:
        return
    prefix = f"{LOCK_NAME}."
    for name in entries:
        if name.startswith(prefix) and name[len(prefix):] not in live:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(cni_dir, name))


def names(cni_dir: str) -> Iterator[tuple[str, str]]:
    """(container ID, ifname) of every cache file."""
    try:
        entries = sorted(os.listdir(cni_dir))
    except FileNotFoundError:
        return
    for name in entries:
        if name.startswith("."):
            continue
        attachment = attachment_of(name)
        if attachment is not None:
            yield attachment
