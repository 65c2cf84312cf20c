"""State on the node: one directory per network, a lock per network, atomic writes.

Keys become file names, so they are validated: nothing a caller passes can escape the
directory (`..`, `/`, NUL) or hide (leading dot).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from pycni import faults
from pycni.errors import CNIError, InvalidConfig, IOFailure

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from typing import Any

DEFAULT_ROOT = "/var/lib/cni"
LOCK_NAME = "lock"


def check_key(key: str, what: str = "key") -> str:
    ok = (0 < len(key) <= 255 and key[0].isascii() and key[0].isalnum()
          and all(c.isascii() and (c.isalnum() or c in "_.-:") for c in key))
    if not ok:
        raise InvalidConfig(f"invalid {what} {key!r}: letters, digits, '_', '.', '-', ':' only,"
                            " starting with a letter or digit")
    return key


def make_dirs(directory: str, mode: int = 0o700, parents: int | None = None) -> list[str]:
    """Create `directory` (`mode`) and its missing parents (`parents`, default `mode`), exactly
    so whatever the umask: os.makedirs gives the parents 0777 less the umask (world-writable
    under umask 0) and only the leaf the mode asked. OSError as os.mkdir raises it.

    Returns the directories this call created, outermost first (for `remove_dirs`)."""
    if not directory or os.path.isdir(directory):
        return []
    created = make_dirs(os.path.dirname(directory.rstrip(os.sep)),
                        mode if parents is None else parents)
    try:
        os.mkdir(directory, mode)
    except FileExistsError:
        return created
    os.chmod(directory, mode)  # the umask may have taken bits `mode` asks for
    created.append(directory)
    return created


def remove_dirs(created: list[str]) -> None:
    """Undo `make_dirs` after a failure: remove the directories it created, innermost first,
    as long as they are empty (another process may have put something there since)."""
    for directory in reversed(created):
        try:
            os.rmdir(directory)
        except OSError:
            return


@contextmanager
def flock(path: str, recreate: Callable[[], object] | None = None) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created 0600 if absent), released if the process
    dies; IOFailure when it cannot be opened. `recreate` makes the lock's directory again
    when it is gone (another process removed it empty after a failure, `remove_dirs`).

    The holder may remove the lock file when it is done with what it guards (e.g. the last
    state of a container): a process that waited on the removed file sees that the file it
    locked is no longer the one at `path` and locks again.
    """
    import fcntl

    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            if recreate is None:
                raise IOFailure(f"failed to open lock {path}: its directory is gone") from None
            recreate()
            recreate = None  # once: a directory that keeps vanishing is an error
            continue
        except OSError as exc:
            raise IOFailure(f"failed to open lock {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            if current is not None and (current.st_dev, current.st_ino) == (
                    held.st_dev, held.st_ino):
                yield
                return
        finally:
            os.close(fd)  # closing releases the flock


def write_atomic(path: str, data: bytes, mode: int = 0o600, exclusive: bool = False,
                 durable: bool = True) -> bool:
    """Write `data` to `path` so that readers see the old file or the whole new one.

    `exclusive`: only if `path` does not exist yet (published with link(), which refuses to
    replace); False when it already existed. Otherwise the file is replaced; always True.
    The data is on disk before its name appears (so no crash leaves a name on a partial
    file); `durable` also syncs the directory, so the name itself survives a power loss.
    """
    directory = os.path.dirname(path) or "."
    # Bounded length (a 255-character key must still leave room for the temp name) and
    # unique per call (two threads writing one key must not share a temp file).
    tmp = os.path.join(directory, f".{os.path.basename(path)[:64]}.{os.getpid()}."
                                  f"{os.urandom(4).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        else:
            os.replace(tmp, path)
        if durable:
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except OSError as exc:
        with suppress(OSError):
            os.unlink(tmp)
        raise IOFailure(f"failed to write {path}: {exc.strerror}") from None
    return True


def _only_lock(directory: str) -> bool:
    try:
        return os.listdir(directory) == [LOCK_NAME]
    except OSError:
        return False


class Store:
    """Files under `<root>/<network>/`, guarded by `<root>/<network>/lock`; directories the
    store creates are 0700 and its files 0600 unless the caller asks otherwise.

    What plugins keep here describes attachments of the current boot (a power loss ends
    them all; host-local reclaims an earlier boot's addresses), so a write that a power loss
    undoes costs nothing: files are written atomically but the directory is not synced
    (`write_atomic(durable=False)`), which saves a disk flush per write on every pod start.
    """

    def __init__(self, root: str, network: str, mode: int = 0o600) -> None:
        self.directory = os.path.join(root, check_key(network, "network name"))
        self.mode = mode
        self.created: list[str] = []  # directories this instance made, for `discard`

    def subdir(self, name: str) -> Store:
        """A store in a subdirectory chosen by the code (e.g. hidden metadata), under the
        parent's lock."""
        child = Store.__new__(Store)
        child.directory, child.mode = os.path.join(self.directory, name), self.mode
        child.created = []
        return child

    def _ensure(self) -> None:
        try:
            self.created += make_dirs(self.directory)
        except OSError as exc:
            raise IOFailure(f"failed to create {self.directory}: {exc.strerror}") from None
        if not os.path.isdir(self.directory):
            raise IOFailure(f"{self.directory} is not a directory")

    @contextmanager
    def locked(self) -> Iterator[Store]:
        """Hold the network's lock (an flock, released if the process dies). When what ran
        under it failed and this call made the directory, holding nothing but the lock, the
        lock and the directory go: a failed first use of a network leaves the node as it was."""
        mark = len(self.created)
        self._ensure()
        lock = os.path.join(self.directory, LOCK_NAME)
        with flock(lock, recreate=self._ensure):
            try:
                yield self
            except BaseException:
                made = self.created[mark:]  # by this call, not by an earlier one
                if made and _only_lock(self.directory):
                    with suppress(OSError):
                        os.unlink(lock)
                    remove_dirs(made)
                raise

    def path(self, key: str) -> str:
        return os.path.join(self.directory, check_key(key))

    def write(self, key: str, data: bytes) -> None:
        self._ensure()
        write_atomic(self.path(key), data, self.mode, durable=False)
        faults.point(f"store write {key}")

    def create(self, key: str, data: bytes) -> bool:
        """Write `key` only if it does not exist; False if it did."""
        self._ensure()
        created = write_atomic(self.path(key), data, self.mode, exclusive=True, durable=False)
        if created:
            faults.point(f"store create {key}")
        return created

    def read(self, key: str) -> bytes | None:
        try:
            with open(self.path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise IOFailure(f"failed to read {self.path(key)}: {exc.strerror}") from None

    def read_object(self, key: str, remedy: str) -> dict[str, Any] | None:
        """The JSON object saved under `key`, None when there is none. A corrupt file is an
        error naming it and saying what to do (`remedy`), never silently ignored state."""
        import json

        raw = self.read(key)
        if raw is None:
            return None
        try:
            found = json.loads(raw)
        except ValueError:
            found = None
        if not isinstance(found, dict):
            raise CNIError(f"saved state {self.path(key)} is corrupt: {remedy}")
        return found

    def delete(self, key: str) -> bool:
        try:
            os.unlink(self.path(key))
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise IOFailure(f"failed to remove {self.path(key)}: {exc.strerror}") from None
        faults.point(f"store delete {key}")
        return True

    def discard(self, key: str) -> None:
        """Undo a failed operation's `write(key)`: the file, and the directories the write
        created if they are empty again."""
        self.delete(key)
        remove_dirs(self.created)

    def names(self) -> list[str]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise IOFailure(f"failed to list {self.directory}: {exc.strerror}") from None
        return sorted(n for n in names if n != LOCK_NAME and not n.startswith("."))
