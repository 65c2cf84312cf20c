"""Interface flags and addresses through ioctls, for the current thread's namespace.

Loopback runs for every pod start and needs only "is lo up, bring it up, which addresses".
The ioctl interface answers that without importing a netlink library (about 150 ms here);
anything richer goes through pyroute2 (`pycni.netns.ipr`). Call inside `netns.entered`.
"""

from __future__ import annotations

import fcntl
import socket
import struct

from pycni import faults

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCGIFCONF = 0x8912
SIOCGIFADDR = 0x8915
SIOCGIFNETMASK = 0x891B
IFF_UP = 0x1


def _ifreq(name: str, payload: bytes = b"") -> bytes:
    return struct.pack("16s", name.encode()) + payload.ljust(24, b"\0")


def _ioctl(request: int, name: str, payload: bytes = b"") -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            return fcntl.ioctl(sock.fileno(), request, _ifreq(name, payload))
        except OSError as exc:
            raise OSError(exc.errno, f"{name}: {exc.strerror}") from None


def flags(name: str) -> int:
    return int(struct.unpack_from("H", _ioctl(SIOCGIFFLAGS, name), 16)[0])


def is_up(name: str) -> bool:
    return bool(flags(name) & IFF_UP)


def set_up(name: str, up: bool = True) -> None:
    current = flags(name)
    wanted = current | IFF_UP if up else current & ~IFF_UP
    if wanted != current:
        _ioctl(SIOCSIFFLAGS, name, struct.pack("H", wanted))
        faults.point(f"flags {name}")


def ipv4_addresses(name: str) -> list[str]:
    """Every IPv4 address on the interface (bare, no prefix), primary first."""
    import array

    size = 40  # struct ifreq on 64-bit Linux
    buffer = array.array("B", b"\0" * size * 256)
    address, _ = buffer.buffer_info()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        answer = fcntl.ioctl(sock.fileno(), SIOCGIFCONF, struct.pack("iL", len(buffer), address))
    length = struct.unpack("iL", answer)[0]
    raw = buffer.tobytes()[:length]
    found = []
    for offset in range(0, length, size):
        label = raw[offset:offset + 16].split(b"\0", 1)[0].decode()
        if label == name or label.startswith(f"{name}:"):
            found.append(socket.inet_ntoa(raw[offset + 20:offset + 24]))
    return found


def addresses(name: str) -> list[str]:
    """The interface's addresses as CIDRs: its primary IPv4 address, then its IPv6 ones."""
    found: list[str] = []
    try:
        addr = socket.inet_ntoa(_ioctl(SIOCGIFADDR, name)[20:24])
        mask = int.from_bytes(_ioctl(SIOCGIFNETMASK, name)[20:24], "big")
        found.append(f"{addr}/{mask.bit_count()}")
    except OSError:
        pass  # no IPv4 address
    try:
        with open("/proc/thread-self/net/if_inet6") as table:
            for line in table:
                hexaddr, _index, prefix, _scope, _flags, dev = line.split()
                if dev == name:
                    ip = socket.inet_ntop(socket.AF_INET6, bytes.fromhex(hexaddr))
                    found.append(f"{ip}/{int(prefix, 16)}")
    except FileNotFoundError:
        pass  # IPv6 disabled
    return found
