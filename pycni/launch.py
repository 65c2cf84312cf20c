"""The client half of `pycni daemon`'s protocol, and the fast path of a plugin start.

`/opt/cni/bin/<type>` links to the bundle's native launcher (`cni`, build/launcher.c), which
answers VERSION, hands every other plugin start to `pycni daemon` when one listens, and
otherwise execs the full program (`pycni`, beside it). The full program started as a type
(`pycni <type>`, or exec'd by the launcher) goes through the same steps here before loading
the plugin (`fast_path`). The launcher and this module speak one protocol: one request per
connection, the caller's fds 0, 1 and 2 passed with SCM_RIGHTS beside a length-prefixed payload
(see `encode`), answered by a 4-byte exit status. It imports only `_socket`.
"""

from __future__ import annotations

import os
import sys

from pycni import registry

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    import _socket

PROGRAM = "pycni"  # the full program
LAUNCHER = "cni"  # the native launcher beside it in the bundle (build/launcher.c)
SOCKET_ENV = "PYCNI_DAEMON_SOCKET"
DEFAULT_SOCKET = "/run/pycni/daemon.sock"
# The server's answer when it will not run the request: the caller runs the plugin itself.
REFUSED = 0xFFFFFFFF
_serving = False  # set in the server's children: a child never forwards again


def socket_path(environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """The server's socket ('' when forwarding is turned off)."""
    return environ.get(SOCKET_ENV, DEFAULT_SOCKET)


def forward(argv: list[str]) -> int | None:
    """Have the server run this plugin start; its exit status, or None to run it here."""
    path = socket_path()
    if _serving or not path:
        return None
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            sock.connect(path)
        except OSError:
            return None  # no server (or a stale socket): run the plugin here
        request = encode(argv, os.environb, os.getcwdb())
        request = len(request).to_bytes(4, "big") + request
        fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2))  # C ints
        try:
            sent = sock.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
            sock.sendall(request[sent:])  # the rest of a large environment
        except OSError:
            pass  # a server that refuses may answer and hang up before reading it all
        answer = _recv_exactly(sock, 4)
    except OSError:
        answer = b""
    finally:
        sock.close()
    if len(answer) < 4:  # the server and its child both died under us
        return fail("pycni daemon: lost the connection to the server")
    status = int.from_bytes(answer, "big")
    return None if status == REFUSED else status


def _recv_exactly(sock: _socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def encode(argv: list[str], environ: os._Environ[bytes] | dict[bytes, bytes], cwd: bytes
           ) -> bytes:
    """cwd, argc, argv..., KEY=VALUE... joined by NUL (none of them can contain one)."""
    parts = [cwd, str(len(argv)).encode(), *(os.fsencode(arg) for arg in argv)]
    parts += [key + b"=" + value for key, value in environ.items()]
    return b"\0".join(parts)


def decode(payload: bytes) -> tuple[list[str], dict[str, str], str]:
    """argv, environment and working directory of an encoded request."""
    parts = payload.split(b"\0")
    cwd, argc = parts[0], int(parts[1])
    argv = [os.fsdecode(arg) for arg in parts[2:2 + argc]]
    environ = {}
    for item in parts[2 + argc:]:
        key, _, value = item.partition(b"=")
        if key:
            environ[os.fsdecode(key)] = os.fsdecode(value)
    return argv, environ, os.fsdecode(cwd)


def fast_path(plugin_type: str, argv: list[str]) -> None:
    """Finish this plugin start here when it can be: VERSION answered from the registry,
    anything else run by the server (SystemExit with the status). Returns when the plugin
    must run in this process."""
    if os.environ.get("CNI_COMMAND") == "VERSION":
        from pycni import spec

        sys.stdout.write(spec.version_json(registry.versions(plugin_type)))
        sys.exit(0)
    status = forward(argv)
    if status is not None:
        sys.exit(status)


def fail(message: str) -> int:
    """A CNI error (code 999) on stdout, without the json module; the exit status."""
    escaped = message.replace("\\", "\\\\").replace('"', '\\"')
    sys.stdout.write(f'{{"cniVersion": "0.1.0", "code": 999, "msg": "{escaped}"}}\n')
    sys.stdout.flush()
    return 1
