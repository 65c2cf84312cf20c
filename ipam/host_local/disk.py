"""The allocations of one network on disk, in the reference host-local's format.

`<dataDir>/<network>/<ip>` holds `<containerID>\\r\\n<ifname>` (older files: the container ID
alone), `last_reserved_ip.<rangeSetIndex>` the last address handed out, `lock` the network's
flock. A node can switch between the reference plugin and ours without losing allocations.

What the reference format cannot hold lives in `.meta/<ip>` as JSON (never a valid container
ID, so the reference, which reads every file under the directory, never mistakes it for an
allocation): the boot the address was allocated in, and when.
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
from contextlib import suppress

from pycni.errors import IOFailure
from pycni.store import Store

LINE_BREAK = "\r\n"
LAST_RESERVED = "last_reserved_ip."
META_DIR = ".meta"
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Iterable

    from pycni.ipam.host_local.ranges import Address


def parse_address(name: str) -> Address:
    """A file name as an address (IPv4Address directly: the common case, and cheaper)."""
    if ":" in name:
        return ipaddress.IPv6Address(name)
    return ipaddress.IPv4Address(name)


def current_boot() -> str:
    try:
        with open(BOOT_ID_PATH) as f:
            return f.read().strip()
    except OSError:
        return ""


def boot_time() -> float:
    """When this boot started (seconds since the epoch), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


class Allocation:
    """One address held by one attachment. When and in which boot it was allocated are read
    on first use: an ordinary ADD never needs them, and skipping them halves its reads."""

    __slots__ = ("address", "container_id", "ifname", "_path", "_meta_path", "_boot",
                 "_created")

    def __init__(self, address: Address, container_id: str, ifname: str, path: str,
                 meta_path: str | None) -> None:
        self.address, self.container_id, self.ifname = address, container_id, ifname
        self._path, self._meta_path = path, meta_path
        self._boot: str | None = None
        self._created = 0.0

    def owned_by(self, container_id: str, ifname: str) -> bool:
        # Files from older reference versions name only the container.
        return self.container_id == container_id and self.ifname in (ifname, "")

    def _load(self) -> None:
        boot, created = "", None
        if self._meta_path:
            boot, created = _read_meta(self._meta_path, self.container_id, self.ifname)
        if created is None:
            try:
                created = os.stat(self._path).st_mtime
            except OSError:
                created = time.time()  # released meanwhile: not from an earlier boot
        self._boot, self._created = boot, created

    @property
    def boot(self) -> str:
        """The boot ID recorded at allocation ("" when there is no metadata)."""
        if self._boot is None:
            self._load()
        return self._boot or ""

    @property
    def created(self) -> float:
        if self._boot is None:
            self._load()
        return self._created

    def from_earlier_boot(self, boot: str, booted_at: float) -> bool:
        """Allocated before this boot. Without our metadata (a file the reference wrote),
        the file's age tells: older than the boot means the boot lost it."""
        if self.boot:
            return self.boot != boot
        return self.created < booted_at


def _read_meta(path: str, container_id: str, ifname: str) -> tuple[str, float | None]:
    """(boot, created) from a metadata file, or ("", None) when it does not apply."""
    try:
        with open(path, "rb") as f:
            info = json.loads(f.read())
        # Metadata left behind when the reference released the address and then gave it to
        # someone else describes the previous holder: ignore it.
        if (info.get("containerID", container_id), info.get("ifname", ifname)) != (
                container_id, ifname):
            return "", None
        return str(info.get("boot", "")), float(info.get("created"))
    except (OSError, ValueError, TypeError, AttributeError):
        return "", None  # a damaged metadata file only loses the boot


class Allocations:
    """The network's allocation files. Use under `store.locked()`."""

    def __init__(self, data_dir: str, network: str) -> None:
        self.store = Store(data_dir, network)
        self.meta = self.store.subdir(META_DIR)

    def scan(self) -> dict[Address, Allocation]:
        """Every allocation file in the network, by address.

        Runs on every ADD over every file (as the reference does), so it stays lean: one
        listing of each directory and one read per allocation.
        """
        found: dict[Address, Allocation] = {}
        directory, meta_dir = self.store.directory, self.meta.directory
        try:
            with_meta = set(os.listdir(meta_dir))
        except OSError:
            with_meta = set()
        for name in self.store.names():
            try:
                address = parse_address(name)
            except ValueError:
                continue  # lock, last_reserved_ip.N, anything else
            path = os.path.join(directory, name)
            try:
                with open(path, "rb") as f:
                    content = f.read().decode(errors="replace").strip()
            except (FileNotFoundError, IsADirectoryError):
                continue
            container_id, _, ifname = content.partition(LINE_BREAK)
            meta_path = os.path.join(meta_dir, name) if name in with_meta else None
            found[address] = Allocation(address, container_id, ifname, path, meta_path)
        return found

    def reserve(self, address: Address, container_id: str, ifname: str, range_set: int,
                boot: str) -> bool:
        """Take `address` for the attachment; False if someone holds it already."""
        name = str(address)
        if not self.store.create(name, f"{container_id.strip()}{LINE_BREAK}{ifname}".encode()):
            return False
        try:
            self._write_meta(address, container_id, ifname, boot)
            self.store.write(f"{LAST_RESERVED}{range_set}", name.encode())
        except BaseException:
            with suppress(IOFailure):  # a failed ADD must not keep the address
                self.release([address])
            raise
        return True

    def adopt(self, allocation: Allocation, boot: str) -> None:
        """Record that `allocation` (from an earlier boot) is in use again in `boot`."""
        self._write_meta(allocation.address, allocation.container_id, allocation.ifname, boot)

    def _write_meta(self, address: Address, container_id: str, ifname: str,
                    boot: str) -> None:
        self.meta.write(str(address), json.dumps({"boot": boot, "created": time.time(),
                                                  "containerID": container_id,
                                                  "ifname": ifname}).encode())

    def release(self, addresses: Iterable[Address]) -> list[Address]:
        released = []
        for address in addresses:
            if self.store.delete(str(address)):
                released.append(address)
            self.meta.delete(str(address))
        return released

    def last_reserved(self, range_set: int) -> Address | None:
        data = self.store.read(f"{LAST_RESERVED}{range_set}")
        try:
            return ipaddress.ip_address(data.decode().strip()) if data else None
        except ValueError:
            return None

    def drop_orphan_metadata(self, allocations: dict[Address, Allocation]) -> None:
        """Metadata whose allocation file is gone (released by the reference plugin)."""
        held = {str(a) for a in allocations}
        for name in self.meta.names():
            if name not in held:
                self.meta.delete(name)
