"""The resident server: plugin runs forked from a warm process instead of a cold start.

A cold plugin start pays the interpreter, pydantic (models built at import) and pyroute2
before any work: hundreds of milliseconds, for every exec of every pod start. `pycni daemon`
pays them once: it imports every plugin and the libraries they reach for, freezes the heap and
listens on a Unix socket (root only). The exec'd program, before importing anything heavy,
connects to that socket and hands over its standard streams (SCM_RIGHTS), arguments,
environment and working directory; the server forks a child that takes on the caller's network
and mount namespaces, streams, environment and working directory and runs `pycni.main` exactly
as the exec'd program would have; the child sends the exit status back itself, and the caller
exits with it. What the caller prints is what the child printed, on the caller's own stdout.

- No server (no socket, connection refused, `PYCNI_DAEMON_SOCKET` empty): the program runs the
  plugin itself, as it always did. The server is an accelerator, never a dependency.
- The server refuses (the caller then runs the plugin itself) when it cannot stand in for the
  caller: another user, namespaces it cannot enter.
- The caller killed (a runtime's timeout) kills the child, as it would kill an exec'd plugin.
- The child runs in the server's cgroup and with the server's resource limits.

The client half is `pycni.launch` (it runs on every plugin start, so it imports almost
nothing); this module is the server, importing what it needs when it starts.
"""

from __future__ import annotations

import os
import sys

from pycni import launch

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    import socket

# Modules the plugins import lazily, inside the functions that need them: imported by the
# server up front so that no child pays for them.
WARM_MODULES = (
    "json", "logging", "subprocess", "ctypes", "fcntl", "ipaddress", "hashlib", "uuid",
    "pyroute2", "pyroute2.iproute.linux", "pycni.link", "pycni.firewall", "pycni.sysctl",
    "pycni.store", "pycni.invoke", "pycni.ipam_delegate", "pycni.ifflags",
    "pycni.ipam.host_local.disk", "pycni.ipam.host_local.ranges",
    "kubernetes.client", "kubernetes.config", "etcd3gw",
)


# ---- the server ---------------------------------------------------------------------------

def main(args: list[str]) -> int:
    """`pycni daemon [--socket PATH]`: serve plugin starts until SIGTERM or SIGINT."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="pycni daemon",
        description="Serve plugin starts from a warm process (the programs in /opt/cni/bin "
                    "use it when its socket exists, and run the plugin themselves otherwise).")
    parser.add_argument("--socket", default=launch.socket_path() or launch.DEFAULT_SOCKET,
                        help=f"Unix socket to listen on (default: ${launch.SOCKET_ENV} or "
                             f"{launch.DEFAULT_SOCKET})")
    options = parser.parse_args(args)
    warm_up()
    return Server(options.socket).serve()


def warm_up() -> None:
    """Import every plugin and what they import lazily, then freeze the heap (so the garbage
    collector of a child does not copy the shared pages it would otherwise touch)."""
    import contextlib
    import gc
    import importlib

    from pycni import registry

    for plugin_type in registry.PLUGINS:
        registry.load(plugin_type)
    for name in WARM_MODULES:
        with contextlib.suppress(ImportError):  # an optional library missing from this build
            importlib.import_module(name)
    warm_netlink()
    gc.collect()
    gc.freeze()


def warm_netlink() -> None:
    """One netlink socket's life, reading only, in the server and in each spare before it
    waits: pyroute2 builds its event loop machinery and compiles each message class's
    attribute map at first use, and a process's first socket touches pages it then copies
    from the server's. ~4 ms, paid off the caller's path instead of in its request."""
    import contextlib

    from pycni import link

    with contextlib.suppress(Exception), link.socket() as ipr:  # an accelerator only
        loopback = link.find(ipr, "lo")
        if loopback is not None:
            link.addresses(ipr, loopback.index)
            link.routes(ipr, loopback.index)
            ipr.get_links(loopback.index)


class Server:
    """The accept loop: a child per request, forked ahead and handed the connection, watched
    through pidfds (the child's, to reap it; the caller's, to kill the child when the caller
    dies first)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.children: dict[int, tuple[int, socket.socket, int | None]] = {}
        # the child forked ahead: (pid, control socket, pidfd)
        self.spare: tuple[int, socket.socket, int] | None = None
        self.stopping = False

    def serve(self) -> int:
        import contextlib
        import selectors
        import signal
        import socket

        from pycni.store import make_dirs

        directory = os.path.dirname(self.path) or "."
        make_dirs(directory)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a socket left by a server that died
        old_umask = os.umask(0o177)
        try:
            listener.bind(self.path)
        finally:
            os.umask(old_umask)
        listener.listen(128)
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, ("accept", None))
        self.listener = listener

        def stop(signum: int, frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        print(f"pycni daemon: serving on {self.path}", file=sys.stderr, flush=True)
        try:
            self.fork_spare()
            while not self.stopping:
                for key, _ in self.selector.select(timeout=1.0):
                    kind, pid = key.data
                    if kind == "spare":
                        self.spare_died(pid)
                        continue
                    if kind != "accept" and pid not in self.children:
                        continue  # reaped earlier in this round
                    if kind == "accept":
                        self.accept()
                    elif kind == "child":
                        self.reap(pid)
                    else:
                        self.caller_gone(pid)
        finally:
            if self.spare is not None:  # without its control socket the spare exits
                self.spare[1].close()
            self.selector.close()
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        # Children still running finish their runs and answer their callers themselves.
        return 0

    def accept(self) -> None:
        import selectors
        import socket

        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        caller_pid, uid, _ = peer_credentials(conn)
        if uid != os.getuid():
            _send_status(conn, launch.REFUSED)
            conn.close()
            return
        for _ in range(2):  # a spare that died meanwhile is replaced once
            if self.spare is None:
                self.fork_spare()
            assert self.spare is not None
            pid, control, child_fd = self.spare
            self.spare = None
            try:
                socket.send_fds(control, [b"r"], [conn.fileno()])
                break
            except OSError:
                continue  # its pidfd reports the death; the loop reaps it
            finally:
                control.close()
        else:
            _send_status(conn, launch.REFUSED)
            conn.close()
            return
        try:
            caller_fd: int | None = os.pidfd_open(caller_pid) if caller_pid > 0 else None
        except OSError:  # the caller is not in our pid namespace, or already gone
            caller_fd = None
        self.children[pid] = (child_fd, conn, caller_fd)
        self.selector.modify(child_fd, selectors.EVENT_READ, ("child", pid))
        if caller_fd is not None:
            self.selector.register(caller_fd, selectors.EVENT_READ, ("caller", pid))
        self.fork_spare()

    def fork_spare(self) -> None:
        """A child forked ahead of the next request, waiting for its connection: the fork
        (page tables of the whole warm heap, ~7 ms here) is off the caller's path."""
        import selectors
        import socket

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            ours.close()
            self.selector.close()
            self.listener.close()
            for _, other, watch in self.children.values():
                other.close()
                if watch is not None:
                    os.close(watch)
            warm_netlink()
            try:
                _, fds, _, _ = socket.recv_fds(theirs, 16, 1)
            except OSError:
                fds = []
            theirs.close()
            if not fds:  # the server stopped (or died) before handing a request over
                os._exit(0)
            conn = socket.socket(fileno=fds[0])
            os._exit(run_child(conn, peer_credentials(conn)[0]))
        theirs.close()
        child_fd = os.pidfd_open(pid)
        self.spare = (pid, ours, child_fd)
        self.selector.register(child_fd, selectors.EVENT_READ, ("spare", pid))

    def spare_died(self, pid: int) -> None:
        if self.spare is None or self.spare[0] != pid:
            return
        _, control, child_fd = self.spare
        self.spare = None
        os.waitpid(pid, 0)
        self.selector.unregister(child_fd)
        os.close(child_fd)
        control.close()
        if not self.stopping:
            self.fork_spare()

    def reap(self, pid: int) -> None:
        child_fd, conn, caller_fd = self.children.pop(pid)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):  # the child could not answer itself
            _send_status(conn, 128 + os.WTERMSIG(status))
        for fd in (child_fd, caller_fd):
            if fd is not None:
                self.selector.unregister(fd)
                os.close(fd)
        conn.close()

    def caller_gone(self, pid: int) -> None:
        """The caller died before its child finished: kill the child, as the caller's own
        death would have killed an exec'd plugin."""
        child_fd, conn, caller_fd = self.children[pid]
        if caller_fd is not None:
            self.selector.unregister(caller_fd)
            os.close(caller_fd)
            self.children[pid] = (child_fd, conn, None)
        import contextlib
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    import socket
    import struct

    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def _send_status(conn: socket.socket, status: int) -> None:
    import contextlib

    with contextlib.suppress(OSError):  # the caller is gone
        conn.sendall(status.to_bytes(4, "big"))


def run_child(conn: socket.socket, caller_pid: int) -> int:
    """In the forked child: become the caller's plugin run, answer its status."""
    import socket

    launch._serving = True
    try:
        argv, environ, cwd, fds = receive(conn)
        enter_namespaces_of(caller_pid)
        os.chdir(cwd)
    except Exception as exc:  # noqa: BLE001 - anything: the caller runs the plugin itself
        print(f"pycni daemon: refused a request: {exc}", file=sys.stderr, flush=True)
        _send_status(conn, launch.REFUSED)
        return 1
    become(fds, environ, argv)
    if os.environ.get("PYCNI_LOG_LEVEL", "").upper() == "DEBUG":
        from pycni import log

        log.get().debug("run by pycni daemon %d for caller %d", os.getppid(), caller_pid)
    status = run_main(argv)
    let_go_of_streams()
    _send_status(conn, status)
    conn.shutdown(socket.SHUT_RDWR)
    return status


def let_go_of_streams() -> None:
    """Close our copies of the caller's streams before answering: a runtime reads the
    plugin's stdout to its end, which comes when every copy is closed, and this process's
    own exit (the teardown of its share of the server's memory) is not the caller's to wait
    for. /dev/null takes their place for anything written later."""
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for fd in (0, 1, 2):
            os.dup2(null, fd)
    finally:
        os.close(null)


def receive(conn: socket.socket) -> tuple[list[str], dict[str, str], str, list[int]]:
    import socket

    data, fds, _, _ = socket.recv_fds(conn, 65536, 3)
    if len(fds) != 3 or len(data) < 4:
        raise ValueError("malformed request")
    size = int.from_bytes(data[:4], "big")
    payload = data[4:]
    while len(payload) < size:
        chunk = conn.recv(size - len(payload))
        if not chunk:
            raise ValueError("truncated request")
        payload += chunk
    argv, environ, cwd = launch.decode(payload)
    return argv, environ, cwd, fds


def enter_namespaces_of(pid: int) -> None:
    """Take on the caller's network and mount namespaces (those it would have run in)."""
    from pycni import netns

    for kind, flag in (("mnt", netns.CLONE_NEWNS), ("net", netns.CLONE_NEWNET)):
        theirs = f"/proc/{pid}/ns/{kind}"
        if os.stat(theirs).st_ino == os.stat(f"/proc/self/ns/{kind}").st_ino:
            continue
        fd = os.open(theirs, os.O_RDONLY | os.O_CLOEXEC)
        try:
            netns.setns(fd, flag)
        finally:
            os.close(fd)


def become(fds: list[int], environ: dict[str, str], argv: list[str]) -> None:
    """The caller's standard streams, environment and arguments, fresh Python streams on
    them, the default signal handlers and no logging set up: a process as exec left it."""
    import signal

    from pycni import log

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115 - lives as long as the run
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace",  # noqa: SIM115
                      buffering=1, closefd=False)
    os.environ.clear()
    os.environ.update(environ)
    sys.argv = list(argv)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    log.reset()


def run_main(argv: list[str]) -> int:
    """`pycni.main.main(argv)` to its exit status, streams flushed."""
    from pycni import main

    try:
        main.main(argv)
        status = 0
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - what an uncaught exception does to a process
        import traceback

        traceback.print_exc()
        status = 1
    import contextlib

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):
            stream.flush()
    return status
