"""A subnet store in a directory: one host, a demo, or nodes sharing a directory.

Layout (all files 0600, directories 0700):

    <directory>/config                  net-conf JSON (flanneld's keys)
    <directory>/lock                    flock'ed around every read-modify-write
    <directory>/subnets/<subnet key>    one lease, e.g. subnets/10.244.1.0-24

A lease file holds flannel's attribute JSON with one more key, the expiration as RFC 3339
UTC time (flanneld's `Expiration`):

    {"PublicIP": "192.168.0.10", "BackendType": "vxlan",
     "BackendData": {"VNI": 1, "VtepMAC": "..."},
     "Expiration": "2026-11-24T02:26:43.123456Z"}

Files are replaced atomically, so readers never see half a lease; expired files stay until a
node takes their subnet. Several agents (each in its own network namespace) share one
directory: the lock makes two acquisitions at once pick different subnets.
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime

from pycni.plugins.flannel import netconf
from pycni.plugins.flannel.lease import Lease, LeaseAttrs, parse_subnet_key, subnet_key
from pycni.plugins.flannel.netconf import NetworkConfig
from pycni.plugins.flannel.store.base import (
    DEFAULT_TTL,
    StoreError,
    SubnetStore,
    pick_free_subnet,
)

from pycni import log
from pycni.errors import IOFailure
from pycni.store import flock, make_dirs, write_atomic

POLL_INTERVAL = 0.1
CONFIG_NAME = "config"
LOCK_NAME = "lock"
SUBNETS_NAME = "subnets"

Fingerprint = frozenset[tuple[str, int, int]]


@dataclass(frozen=True)
class _Entry:
    """One file of `subnets/`: its lease, or None when it cannot be read as one."""

    name: str
    subnet: ipaddress.IPv4Network | None
    lease: Lease | None
    mtime: float


def format_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def stored_time(epoch: float) -> float:
    """`epoch` as a lease file keeps it (microseconds), so a lease read back compares equal."""
    return parse_time(format_time(epoch))


def encode_lease(lease: Lease) -> bytes:
    data = lease.attrs.to_json()
    if lease.expiration is not None:
        data["Expiration"] = format_time(lease.expiration)
    return json.dumps(data, indent=1).encode() + b"\n"


def decode_lease(name: str, data: bytes) -> Lease:
    """ValueError when `data` is not a lease file of the key `name`."""
    subnet, ipv6_subnet = parse_subnet_key(name)
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    expiration = raw.get("Expiration")
    if not isinstance(expiration, str):
        raise ValueError("Expiration is missing")
    return Lease(subnet, LeaseAttrs.from_json(raw), ipv6_subnet, parse_time(expiration))


class FileStore(SubnetStore):
    """Leases in `directory`. `config`, when given, is used instead of `<directory>/config`
    (and written there when absent, for the other agents); `ttl` is a lease's lifetime."""

    def __init__(self, directory: str, config: NetworkConfig | None = None,
                 ttl: float = DEFAULT_TTL) -> None:
        self.directory = directory
        self.subnets_dir = os.path.join(directory, SUBNETS_NAME)
        self.config_path = os.path.join(directory, CONFIG_NAME)
        self.ttl = ttl
        self._config = config
        self._seen: Fingerprint | None = None     # the directory as the last leases() saw it
        self._next_expiry: float | None = None    # when a lease last listed drops out
        self._reported: set[tuple[str, float]] = set()   # unreadable files already logged
        self._make_dirs()
        if config is not None and not os.path.exists(self.config_path):
            data = config.model_dump_json(by_alias=True, exclude_none=True).encode() + b"\n"
            with self._locked():
                self._write(self.config_path, data, exclusive=True)

    # -- files --------------------------------------------------------------------------

    def _make_dirs(self) -> None:
        try:
            make_dirs(self.subnets_dir)
        except OSError as exc:
            raise StoreError(f"failed to create {self.subnets_dir}: {exc.strerror}") from None

    @staticmethod
    def _write(path: str, data: bytes, exclusive: bool = False) -> None:
        try:
            write_atomic(path, data, 0o600, exclusive=exclusive)
        except IOFailure as exc:
            raise StoreError(str(exc)) from None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the directory's lock: an flock, released if the process dies."""
        with ExitStack() as held:
            try:
                held.enter_context(flock(os.path.join(self.directory, LOCK_NAME)))
            except IOFailure as exc:
                raise StoreError(str(exc)) from None
            yield

    def _scan(self) -> list[_Entry]:
        """Every lease file, unreadable ones with `lease` None (logged)."""
        entries = []
        try:
            names = sorted(os.listdir(self.subnets_dir))
        except OSError as exc:
            raise StoreError(f"failed to list {self.subnets_dir}: {exc.strerror}") from None
        for name in names:
            if name.startswith("."):
                continue  # a write in progress
            path = os.path.join(self.subnets_dir, name)
            try:
                subnet = parse_subnet_key(name)[0]
            except ValueError:
                if (name, 0.0) not in self._reported:
                    self._reported.add((name, 0.0))
                    log.get().warning("flannel file store: ignoring %s: not a subnet key", path)
                continue
            try:
                with open(path, "rb") as handle:
                    mtime = os.fstat(handle.fileno()).st_mtime
                    data = handle.read()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.get().warning("flannel file store: cannot read %s: %s", path, exc.strerror)
                continue
            try:
                lease: Lease | None = decode_lease(name, data)
            except ValueError as exc:
                if (name, mtime) not in self._reported:   # once, not on every scan
                    self._reported.add((name, mtime))
                    log.get().warning("flannel file store: skipping corrupt lease %s: %s",
                                      path, exc)
                lease = None
            entries.append(_Entry(name, subnet, lease, mtime))
        return entries

    def _holder(self, entry: _Entry, now: float) -> str | None:
        """The PublicIP holding the entry's subnet now; "" for a recent unreadable file (its
        subnet stays taken for one ttl, in case it was a live node's lease); None if free."""
        if entry.lease is None:
            return "" if entry.mtime + self.ttl > now else None
        return None if entry.lease.expired(now) else entry.lease.attrs.public_ip

    def _fingerprint(self) -> Fingerprint:
        found = []
        with suppress(FileNotFoundError), os.scandir(self.subnets_dir) as scan:
            for item in scan:
                with suppress(FileNotFoundError):
                    stat = item.stat(follow_symlinks=False)
                    found.append((item.name, stat.st_mtime_ns, stat.st_size))
        return frozenset(found)

    # -- SubnetStore ----------------------------------------------------------------------

    def network_config(self) -> NetworkConfig:
        if self._config is not None:
            return self._config
        try:
            with open(self.config_path, "rb") as handle:
                return netconf.parse(handle.read())
        except OSError as exc:
            raise StoreError(f"cannot read the network configuration {self.config_path}: "
                             f"{exc.strerror}") from None
        except ValueError as exc:
            raise StoreError(f"{self.config_path}: {exc}") from None

    def acquire_lease(self, attrs: LeaseAttrs, previous: Lease | None = None) -> Lease:
        config = self.network_config()
        candidates = set(config.candidate_subnets())
        with self._locked():
            now = time.time()
            entries = self._scan()
            ours = [e for e in entries if e.lease is not None
                    and e.lease.attrs.public_ip == attrs.public_ip]
            reusable = [e for e in ours if e.subnet in candidates
                        and e.name == subnet_key(e.subnet, config.ipv6_subnet_for(e.subnet))]
            if reusable:
                subnet = reusable[0].subnet
            else:
                taken = [e.subnet for e in entries
                         if e.subnet is not None and self._holder(e, now) is not None]
                subnet = pick_free_subnet(config, taken,
                                          previous.subnet if previous is not None else None)
            assert subnet is not None
            lease = Lease(subnet, attrs, config.ipv6_subnet_for(subnet),
                          stored_time(now + self.ttl))
            self._write(os.path.join(self.subnets_dir, lease.key), encode_lease(lease))
            # Expired leases on the subnet we took, and our own other leases, are gone now.
            for entry in entries:
                stale = entry.subnet == subnet or entry in ours
                if stale and entry.name != lease.key:
                    with suppress(FileNotFoundError):
                        os.unlink(os.path.join(self.subnets_dir, entry.name))
        return lease

    def renew_lease(self, lease: Lease) -> Lease:
        if lease.subnet is None:
            raise StoreError("the file store only keeps leases with an IPv4 subnet")
        with self._locked():
            now = time.time()
            for entry in self._scan():
                if entry.subnet != lease.subnet:
                    continue
                holder = self._holder(entry, now)
                if holder not in (None, lease.attrs.public_ip):
                    raise StoreError(f"lease on {lease.subnet} was lost: "
                                     f"{holder or 'an unreadable lease file'} holds it now")
            renewed = lease.with_attrs(lease.attrs, stored_time(now + self.ttl))
            self._write(os.path.join(self.subnets_dir, renewed.key), encode_lease(renewed))
        return renewed

    def leases(self) -> list[Lease]:
        seen = self._fingerprint()
        now = time.time()
        found = [e.lease for e in self._scan() if e.lease is not None and not e.lease.expired(now)]
        self._seen = seen
        self._next_expiry = min((lease.expiration for lease in found
                                 if lease.expiration is not None), default=None)
        return found

    def wait_for_change(self, timeout: float) -> bool:
        """Poll the directory (names, mtimes, sizes): cheap, and needs nothing but a shared
        file system. A lease expiring also counts as a change."""
        deadline = time.monotonic() + timeout
        seen = self._seen if self._seen is not None else self._fingerprint()
        while True:
            if self._fingerprint() != seen:
                return True
            if self._next_expiry is not None and time.time() >= self._next_expiry:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(POLL_INTERVAL, left))
