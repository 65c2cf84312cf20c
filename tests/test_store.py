"""pycni.store: validated keys, atomic writes, and a lock that holds across processes."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pycni.errors import InvalidConfig, IOFailure
from pycni.store import LOCK_NAME, Store, check_key, write_atomic

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(str(tmp_path), "net1")


def test_write_read_delete_keys(store: Store, tmp_path: Path) -> None:
    assert store.names() == []  # nothing created yet
    assert store.read("10.0.0.2") is None
    assert store.delete("10.0.0.2") is False
    store.write("10.0.0.3", b"ctr-2\r\neth0")
    store.write("10.0.0.2", b"ctr-1\r\neth0")
    store.write("fd00::2", b"")
    assert store.directory == str(tmp_path / "net1")
    assert store.read("10.0.0.2") == b"ctr-1\r\neth0"
    assert store.read("fd00::2") == b""
    assert store.names() == ["10.0.0.2", "10.0.0.3", "fd00::2"]  # sorted
    store.write("10.0.0.2", b"ctr-9\r\neth1")  # overwrite
    assert store.read("10.0.0.2") == b"ctr-9\r\neth1"
    assert store.delete("10.0.0.2") is True
    assert store.delete("10.0.0.2") is False  # twice is fine
    assert store.read("10.0.0.2") is None
    assert store.names() == ["10.0.0.3", "fd00::2"]


def test_files_are_private_and_nothing_else_is_left(store: Store) -> None:
    for i in range(20):
        store.write("last_reserved_ip.0", f"10.0.0.{i}".encode())
    store.write("a" * 255, b"longest key")  # the temp name must still fit
    assert store.read("a" * 255) == b"longest key"
    assert sorted(os.listdir(store.directory)) == sorted(["last_reserved_ip.0", "a" * 255])
    assert os.stat(store.path("last_reserved_ip.0")).st_mode & 0o777 == 0o600
    assert store.read("last_reserved_ip.0") == b"10.0.0.19"


def test_stores_of_different_networks_are_separate(tmp_path: Path) -> None:
    Store(str(tmp_path), "a").write("k", b"1")
    Store(str(tmp_path), "b").write("k", b"2")
    assert Store(str(tmp_path), "a").read("k") == b"1"
    assert Store(str(tmp_path), "b").read("k") == b"2"


def test_failed_write_leaves_no_temp_file_and_old_data(store: Store) -> None:
    store.write("keep", b"old")
    os.makedirs(store.path("blocked"))  # a directory where the file would go
    with pytest.raises(IOFailure) as info:
        store.write("blocked", b"new")
    assert info.value.code == 5
    assert "blocked" in info.value.msg
    assert sorted(os.listdir(store.directory)) == ["blocked", "keep"]
    assert store.read("keep") == b"old"


def test_write_is_atomic_for_readers(store: Store) -> None:
    """A reader racing a writer sees the old or the new content, never a part."""
    old, new = b"o" * 300_000, b"n" * 500_000
    store.write("state", old)
    stop = threading.Event()
    seen: set[bytes] = set()
    torn: list[int] = []

    def read_loop() -> None:
        while not stop.is_set():
            data = store.read("state")
            if data not in (old, new):
                torn.append(len(data or b""))
            else:
                seen.add(data)

    reader = threading.Thread(target=read_loop)
    reader.start()
    try:
        for i in range(60):
            store.write("state", new if i % 2 == 0 else old)
    finally:
        stop.set()
        reader.join()
    assert torn == []
    assert seen  # the reader did read
    assert store.names() == ["state"]
    assert [n for n in os.listdir(store.directory) if n.startswith(".")] == []


def test_concurrent_writers_of_one_key_in_one_process(store: Store) -> None:
    """Threads of one process must not share a temp file (the pid alone is not unique)."""
    payloads = [bytes([65 + i]) * 200_000 for i in range(4)]
    errors: list[BaseException] = []

    def write_loop(data: bytes) -> None:
        try:
            for _ in range(15):
                store.write("shared", data)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write_loop, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.read("shared") in payloads
    assert os.listdir(store.directory) == ["shared"]


def test_write_atomic_directly(tmp_path: Path) -> None:
    target = tmp_path / "file"
    write_atomic(str(target), b"one", mode=0o640)
    assert target.read_bytes() == b"one"
    assert target.stat().st_mode & 0o777 == 0o640
    with pytest.raises(IOFailure):
        write_atomic(str(tmp_path / "missing-dir" / "file"), b"x")
    assert os.listdir(tmp_path) == ["file"]


# Keys and network names

GOOD_KEYS = ["a", "10.0.0.2", "fd00::2", "last_reserved_ip.0", "ctr-1_eth0", "A" * 255, "0"]
BAD_KEYS = ["..", ".", "/", "a/b", "/etc/passwd", "../x", ".hidden", "", "a\0b", "x" * 256,
            "café", "ü", "a b", "a\nb", "-a", "_a", ":a", "a\\b", "a*"]


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_check_key_accepts(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize("key", BAD_KEYS)
def test_check_key_rejects(key: str) -> None:
    with pytest.raises(InvalidConfig) as info:
        check_key(key)
    assert info.value.code == 7
    assert repr(key) in info.value.msg


@pytest.mark.parametrize("key", BAD_KEYS)
def test_store_methods_refuse_bad_keys(store: Store, tmp_path: Path, key: str) -> None:
    for call in (lambda: store.write(key, b"x"), lambda: store.read(key),
                 lambda: store.delete(key), lambda: store.path(key)):
        with pytest.raises(InvalidConfig):
            call()
    # Nothing escaped the network directory.
    assert sorted(os.listdir(tmp_path)) in ([], ["net1"])
    assert store.names() == []


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../etc", ".hidden", "", "net\0", "ü"])
def test_network_name_is_validated(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidConfig) as info:
        Store(str(tmp_path), name)
    assert "network name" in info.value.msg
    assert os.listdir(tmp_path) == []


# A root that is not a directory

def test_root_that_is_a_file_is_an_io_failure(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.write_bytes(b"not a directory")
    store = Store(str(root), "net1")
    with pytest.raises(IOFailure) as info:
        store.write("k", b"data")
    assert info.value.code == 5
    for call in (lambda: store.read("k"), store.names, lambda: store.delete("k")):
        with pytest.raises(IOFailure):
            call()
    with pytest.raises(IOFailure), store.locked():
        pytest.fail("lock taken under a regular file")
    assert os.listdir(tmp_path) == ["root"]
    assert root.read_bytes() == b"not a directory"


def test_network_directory_that_is_a_file_is_an_io_failure(tmp_path: Path) -> None:
    (tmp_path / "net1").write_bytes(b"x")
    store = Store(str(tmp_path), "net1")
    with pytest.raises(IOFailure) as info:
        store.write("k", b"data")
    assert "not a directory" in str(info.value).lower() or "exists" in str(info.value).lower()
    assert (tmp_path / "net1").read_bytes() == b"x"


# The lock

def _try_flock(path: str) -> bool:
    """Whether a new open file description can take the lock right now."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_lock_is_held_inside_and_released_after(store: Store) -> None:
    lock_path = os.path.join(store.directory, LOCK_NAME)
    with store.locked() as held:
        assert held is store
        assert os.path.isfile(lock_path)
        assert not _try_flock(lock_path)
    assert _try_flock(lock_path)
    with pytest.raises(RuntimeError), store.locked():
        raise RuntimeError("boom")
    assert _try_flock(lock_path)  # released on an exception too


def test_failed_first_use_leaves_no_directory(tmp_path: Path) -> None:
    """A failure under the first lock of a network removes what that call made; a later
    failure leaves the directory (and its lock) of the earlier, successful use."""
    fresh = Store(str(tmp_path / "data"), "net1")
    with pytest.raises(RuntimeError), fresh.locked():
        raise RuntimeError("boom")
    assert not (tmp_path / "data").exists()
    with fresh.locked():
        pass
    with pytest.raises(RuntimeError), fresh.locked():
        raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path / "data" / "net1")) == [LOCK_NAME]


def test_lock_and_hidden_files_are_not_keys(store: Store) -> None:
    with store.locked():
        store.write("10.0.0.2", b"x")
    with open(os.path.join(store.directory, ".10.0.0.3.123.tmp"), "wb") as f:
        f.write(b"leftover")
    assert sorted(os.listdir(store.directory)) == [".10.0.0.3.123.tmp", "10.0.0.2", LOCK_NAME]
    assert store.names() == ["10.0.0.2"]


HOLDER = """
import os, sys, time
from pycni.store import Store
root, go, out = sys.argv[1:4]
while not os.path.exists(go):
    time.sleep(0.002)
with Store(root, "net1").locked():
    start = time.monotonic()
    time.sleep(0.15)
    end = time.monotonic()
with open(out, "w") as f:
    f.write(f"{start} {end}")
"""


def test_lock_is_exclusive_across_processes(tmp_path: Path) -> None:
    root, go = tmp_path / "root", tmp_path / "go"
    outputs = [tmp_path / f"holder{i}" for i in range(4)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holders = [subprocess.Popen([sys.executable, "-c", HOLDER, str(root), str(go), str(out)],
                                env=env) for out in outputs]
    time.sleep(0.3)  # let every holder reach the starting line
    go.touch()
    for proc in holders:
        assert proc.wait(timeout=20) == 0
    spans = sorted(tuple(map(float, out.read_text().split())) for out in outputs)
    assert len(spans) == 4
    for (_, first_end), (second_start, _) in zip(spans, spans[1:], strict=False):
        assert second_start >= first_end, f"two holders overlapped: {spans}"
    # They all started together, so the lock made them queue: the last began
    # at least three holding times after the first.
    assert spans[-1][0] - spans[0][0] >= 3 * 0.15
    assert Store(str(root), "net1").names() == []
