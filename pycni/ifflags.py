"""Interface flags and addresses through ioctls, for the current thread's namespace.

Loopback runs for every pod start and needs only "is lo up, bring it up, which addresses".
The ioctl interface answers that without importing a netlink library (about 150 ms here);
anything richer goes through pyroute2 (`pycni.netns.ipr`). Call inside `netns.entered`.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
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


def addresses(name: str) -> list[str]:
    """The interface's addresses as CIDRs: its primary IPv4 address, then its IPv6 ones."""
    found: list[str] = []
    try:
        addr = socket.inet_ntoa(_ioctl(SIOCGIFADDR, name)[20:24])
        mask = socket.inet_ntoa(_ioctl(SIOCGIFNETMASK, name)[20:24])
        found.append(str(ipaddress.IPv4Interface(f"{addr}/{mask}")))
    except OSError:
        pass  # no IPv4 address
    try:
        with open("/proc/thread-self/net/if_inet6") as table:
            for line in table:
                hexaddr, _index, prefix, _scope, _flags, dev = line.split()
                if dev == name:
                    ip = ipaddress.IPv6Address(bytes.fromhex(hexaddr))
                    found.append(f"{ip}/{int(prefix, 16)}")
    except FileNotFoundError:
        pass  # IPv6 disabled
    return found
