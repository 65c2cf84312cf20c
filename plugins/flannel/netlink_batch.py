"""Many route, neighbour and FDB changes in few system calls.

A node learns every peer at start and after each change of the store: 10,000 peers are
30,000 kernel entries. One pyroute2 request per entry waits for its answer (about 0.6 ms
each); here messages are encoded by pyroute2's message classes, sent in chunks on one netlink
socket, and the acknowledgements matched to the requests afterwards.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_DELNEIGH, RTM_DELROUTE, RTM_NEWNEIGH, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

AF_BRIDGE = 7
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
RTNH_F_ONLINK = 0x04
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4
NLMSG_ERROR = 2
CHUNK = 256          # messages per send: their acknowledgements fit the receive buffer

NEW = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
DELETE = NLM_F_REQUEST | NLM_F_ACK


@dataclass(frozen=True)
class Failure:
    what: str
    error: int

    def __str__(self) -> str:
        return f"{self.what}: {os.strerror(self.error)}"


class Batch:
    """Queue changes, then `commit()`; deleting what is already gone is not a failure."""

    def __init__(self) -> None:
        self._messages: list[tuple[bytes, str, bool]] = []   # (encoded, description, is_delete)

    def __len__(self) -> int:
        return len(self._messages)

    def _queue(self, message: rtmsg | ndmsg, kind: int, flags: int, what: str) -> None:
        message["header"]["type"] = kind
        message["header"]["flags"] = flags
        message["header"]["sequence_number"] = len(self._messages) + 1
        message.encode()
        self._messages.append((bytes(message.data), what, flags == DELETE))

    def _route(self, dst: str, prefixlen: int, gateway: str, oif: int, onlink: bool) -> rtmsg:
        message = rtmsg()
        message["family"] = socket.AF_INET if ":" not in dst else socket.AF_INET6
        message["dst_len"] = prefixlen
        message["table"] = RT_TABLE_MAIN
        message["proto"] = RTPROT_STATIC
        message["type"] = 1           # unicast
        message["flags"] = RTNH_F_ONLINK if onlink else 0
        message["attrs"] = [("RTA_TABLE", RT_TABLE_MAIN), ("RTA_DST", dst),
                            ("RTA_GATEWAY", gateway), ("RTA_OIF", oif)]
        return message

    def route_replace(self, dst: str, prefixlen: int, gateway: str, oif: int,
                      onlink: bool = False) -> None:
        self._queue(self._route(dst, prefixlen, gateway, oif, onlink), RTM_NEWROUTE, NEW,
                    f"route {dst}/{prefixlen} via {gateway}")

    def route_delete(self, dst: str, prefixlen: int, gateway: str, oif: int) -> None:
        self._queue(self._route(dst, prefixlen, gateway, oif, False), RTM_DELROUTE, DELETE,
                    f"delete route {dst}/{prefixlen}")

    def _neighbour(self, family: int, ifindex: int, dst: str, lladdr: str, flags: int) -> ndmsg:
        message = ndmsg()
        message["family"] = family
        message["ifindex"] = ifindex
        message["state"] = NUD_PERMANENT
        message["flags"] = flags
        message["ndm_type"] = 1
        message["attrs"] = [("NDA_DST", dst), ("NDA_LLADDR", lladdr)]
        return message

    def neighbour_replace(self, ifindex: int, dst: str, lladdr: str) -> None:
        family = socket.AF_INET if ":" not in dst else socket.AF_INET6
        self._queue(self._neighbour(family, ifindex, dst, lladdr, 0), RTM_NEWNEIGH, NEW,
                    f"neighbour {dst} lladdr {lladdr}")

    def neighbour_delete(self, ifindex: int, dst: str, lladdr: str) -> None:
        family = socket.AF_INET if ":" not in dst else socket.AF_INET6
        self._queue(self._neighbour(family, ifindex, dst, lladdr, 0), RTM_DELNEIGH, DELETE,
                    f"delete neighbour {dst}")

    def fdb_replace(self, ifindex: int, lladdr: str, dst: str) -> None:
        self._queue(self._neighbour(AF_BRIDGE, ifindex, dst, lladdr, NTF_SELF), RTM_NEWNEIGH,
                    NEW, f"fdb {lladdr} dst {dst}")

    def fdb_delete(self, ifindex: int, lladdr: str, dst: str) -> None:
        self._queue(self._neighbour(AF_BRIDGE, ifindex, dst, lladdr, NTF_SELF), RTM_DELNEIGH,
                    DELETE, f"delete fdb {lladdr} dst {dst}")

    def commit(self) -> list[Failure]:
        """Send everything queued (in the calling thread's network namespace); return what
        the kernel refused. The queue is empty afterwards."""
        messages, self._messages = self._messages, []
        if not messages:
            return []
        failures: list[Failure] = []
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                           socket.NETLINK_ROUTE) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind((0, 0))
            for start in range(0, len(messages), CHUNK):
                chunk = messages[start:start + CHUNK]
                sock.send(b"".join(data for data, _, _ in chunk))
                failures += self._acknowledgements(sock, chunk, start)
        return failures

    @staticmethod
    def _acknowledgements(sock: socket.socket, chunk: list[tuple[bytes, str, bool]],
                          start: int) -> list[Failure]:
        failures = []
        waiting = len(chunk)
        while waiting:
            data = sock.recv(1 << 20)
            offset = 0
            while offset + 16 <= len(data):
                length, kind, _, sequence = struct.unpack_from("=IHHI", data, offset)
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, offset + 16)[0]
                    _, what, is_delete = chunk[sequence - 1 - start]
                    gone = is_delete and code in (errno.ENOENT, errno.ESRCH)
                    if code and not gone:
                        failures.append(Failure(what, code))
                    waiting -= 1
                offset += (length + 3) & ~3
        return failures
