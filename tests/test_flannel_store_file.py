"""The file subnet store: leases in a directory shared by the agents of one machine."""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pycni.plugins.flannel import netconf
from pycni.plugins.flannel.lease import Lease, LeaseAttrs
from pycni.plugins.flannel.store.base import StoreError
from pycni.plugins.flannel.store.file import FileStore, decode_lease

from pycni import log
from tests.conftest import REPO

NET_CONF = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}
SMALL_NET_CONF = {**NET_CONF, "SubnetMin": "10.244.1.0", "SubnetMax": "10.244.2.0"}


def attrs(public_ip: str) -> LeaseAttrs:
    return LeaseAttrs(public_ip, "vxlan", {"VNI": 1, "VtepMAC": "0a:58:0a:f4:01:00"})


def net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    path = tmp_path / "flannel"
    path.mkdir()
    (path / "config").write_text(json.dumps(NET_CONF))
    return path


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """What the `pycni` logger writes during the test."""
    logger = log.get()
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    logger.addHandler(handler)
    try:
        yield buffer
    finally:
        logger.removeHandler(handler)


def test_two_agents_lease_distinct_subnets(directory: Path) -> None:
    first = FileStore(str(directory)).acquire_lease(attrs("192.168.0.10"))
    second = FileStore(str(directory)).acquire_lease(attrs("192.168.0.20"))
    assert (first.subnet, second.subnet) == (net("10.244.1.0/24"), net("10.244.2.0/24"))
    listed = FileStore(str(directory)).leases()
    assert sorted(lease.attrs.public_ip for lease in listed) == ["192.168.0.10", "192.168.0.20"]
    assert {lease.subnet for lease in listed} == {first.subnet, second.subnet}


def test_layout_is_flannels_attributes_plus_expiration(directory: Path) -> None:
    lease = FileStore(str(directory), ttl=600).acquire_lease(attrs("192.168.0.10"))
    path = directory / "subnets" / "10.244.1.0-24"
    data = json.loads(path.read_text())
    assert data["PublicIP"] == "192.168.0.10"
    assert data["BackendType"] == "vxlan"
    assert data["BackendData"] == {"VNI": 1, "VtepMAC": "0a:58:0a:f4:01:00"}
    assert data["Expiration"].endswith("Z")
    assert decode_lease(path.name, path.read_bytes()) == lease
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [name for name in os.listdir(directory / "subnets") if name.startswith(".")]


def test_given_config_is_written_when_absent(tmp_path: Path) -> None:
    config = netconf.parse(SMALL_NET_CONF)
    store = FileStore(str(tmp_path / "new"), config)
    assert stat.S_IMODE((tmp_path / "new" / "subnets").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "new" / "config").stat().st_mode) == 0o600
    assert store.network_config() == config
    assert FileStore(str(tmp_path / "new")).network_config() == config


def test_missing_or_invalid_config_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=str(tmp_path / "config")):
        FileStore(str(tmp_path)).network_config()
    (tmp_path / "config").write_text('{"Network": "10.244.0.0/16", "Backend": {"Type": "x"}}')
    with pytest.raises(StoreError, match=f"{tmp_path / 'config'}.*not supported"):
        FileStore(str(tmp_path)).acquire_lease(attrs("192.168.0.10"))


def test_restarted_agent_gets_its_lease_back(directory: Path) -> None:
    FileStore(str(directory)).acquire_lease(attrs("192.168.0.10"))
    second = FileStore(str(directory)).acquire_lease(attrs("192.168.0.20"))
    new_attrs = LeaseAttrs("192.168.0.20", "vxlan", {"VNI": 1, "VtepMAC": "0a:58:00:00:00:02"})
    again = FileStore(str(directory)).acquire_lease(new_attrs)
    assert again.subnet == second.subnet
    assert again.attrs == new_attrs
    assert len(os.listdir(directory / "subnets")) == 2


def test_previous_subnet_is_honoured_when_free(directory: Path) -> None:
    store = FileStore(str(directory))
    previous = Lease(net("10.244.7.0/24"), attrs("192.168.0.10"))
    assert store.acquire_lease(attrs("192.168.0.10"), previous).subnet == previous.subnet
    taken = store.acquire_lease(attrs("192.168.0.20"), previous)
    assert taken.subnet == net("10.244.1.0/24")


def test_exhaustion_is_a_store_error(tmp_path: Path) -> None:
    store = FileStore(str(tmp_path), netconf.parse(SMALL_NET_CONF))
    store.acquire_lease(attrs("192.168.0.10"))
    store.acquire_lease(attrs("192.168.0.20"))
    with pytest.raises(StoreError, match="no free subnet"):
        store.acquire_lease(attrs("192.168.0.30"))


def test_expired_lease_frees_its_subnet(tmp_path: Path) -> None:
    config = netconf.parse({**NET_CONF, "SubnetMin": "10.244.1.0", "SubnetMax": "10.244.1.0"})
    short = FileStore(str(tmp_path), config, ttl=0.3)
    gone = short.acquire_lease(attrs("192.168.0.10"))
    assert short.leases() == [gone]
    time.sleep(0.4)
    assert short.leases() == []
    taken = FileStore(str(tmp_path), config).acquire_lease(attrs("192.168.0.20"))
    assert taken.subnet == gone.subnet
    assert os.listdir(tmp_path / "subnets") == ["10.244.1.0-24"]
    with pytest.raises(StoreError, match="lost.*192.168.0.20"):
        short.renew_lease(gone)


def test_renew_keeps_the_lease_past_its_ttl(directory: Path) -> None:
    store = FileStore(str(directory), ttl=0.4)
    lease = store.acquire_lease(attrs("192.168.0.10"))
    for _ in range(6):
        time.sleep(0.15)
        renewed = store.renew_lease(lease)
        assert renewed.expiration is not None and lease.expiration is not None
        assert renewed.expiration > lease.expiration
        lease = renewed
    assert [found.subnet for found in store.leases()] == [lease.subnet]


def test_renew_recreates_a_deleted_lease_file(directory: Path) -> None:
    store = FileStore(str(directory))
    lease = store.acquire_lease(attrs("192.168.0.10"))
    (directory / "subnets" / lease.key).unlink()
    assert store.renew_lease(lease).subnet == lease.subnet
    assert [found.subnet for found in store.leases()] == [lease.subnet]


def test_wait_for_change_wakes_when_another_agent_acquires(directory: Path) -> None:
    watcher = FileStore(str(directory))
    watcher.leases()
    assert watcher.wait_for_change(0.3) is False
    other = threading.Timer(0.3, lambda: FileStore(str(directory)).acquire_lease(
        attrs("192.168.0.20")))
    other.start()
    try:
        assert watcher.wait_for_change(10) is True
    finally:
        other.join()
    assert [lease.attrs.public_ip for lease in watcher.leases()] == ["192.168.0.20"]


def test_wait_for_change_wakes_when_a_lease_expires(directory: Path) -> None:
    FileStore(str(directory), ttl=0.3).acquire_lease(attrs("192.168.0.10"))
    watcher = FileStore(str(directory))
    assert len(watcher.leases()) == 1
    assert watcher.wait_for_change(10) is True
    assert watcher.leases() == []


def test_corrupt_lease_files_are_skipped_and_logged(directory: Path,
                                                    log_lines: io.StringIO) -> None:
    store = FileStore(str(directory))
    good = store.acquire_lease(attrs("192.168.0.10"))
    (directory / "subnets" / "10.244.2.0-24").write_text('{"PublicIP": "192.168.0.2')
    (directory / "subnets" / "not-a-subnet").write_text("{}")
    assert store.leases() == [good]
    assert "10.244.2.0-24" in log_lines.getvalue()
    assert "not-a-subnet" in log_lines.getvalue()
    # A recent unreadable file may be a live node's lease: its subnet is not handed out.
    assert store.acquire_lease(attrs("192.168.0.20")).subnet == net("10.244.3.0/24")


CHILD = """
import sys
from pycni.plugins.flannel.lease import LeaseAttrs
from pycni.plugins.flannel.store.file import FileStore
directory, public_ip, go = sys.argv[1:]
store = FileStore(directory)
while not __import__("os").path.exists(go):
    pass
lease = store.acquire_lease(LeaseAttrs(public_ip, "vxlan", {"VNI": 1}))
print(lease.subnet)
"""


def test_processes_acquiring_at_once_get_distinct_subnets(directory: Path,
                                                          tmp_path: Path) -> None:
    go = tmp_path / "go"
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(directory),
                                  f"192.168.0.{10 + i}", str(go)],
                                 cwd=REPO, stdout=subprocess.PIPE, text=True)
                for i in range(8)]
    try:
        time.sleep(0.3)
        go.touch()
        subnets = [child.communicate(timeout=30)[0].strip() for child in children]
    finally:
        for child in children:
            child.kill()
            child.wait()
    assert all(child.returncode == 0 for child in children)
    assert len(set(subnets)) == 8, subnets
    assert sorted(subnets) == sorted(str(net(f"10.244.{i}.0/24")) for i in range(1, 9))
    assert len(FileStore(str(directory)).leases()) == 8
