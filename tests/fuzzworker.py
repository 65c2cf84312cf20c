"""A long-lived process that runs plugins in-process, sealed off from the machine, for fuzzing.

Started by `start()` as
`ip netns exec <host> unshare --mount --propagation slave --pid --fork --mount-proc
python -m tests.fuzzworker <host>`, so it lives in:
- the sandbox "host" network namespace (standing for the node);
- its own PID namespace with its own /proc, where it is PID 1: `/proc/1/ns/net` is the
  sandbox node, never the machine's own namespace;
- a private mount namespace (slave: it sees pod namespaces made after it started, nothing it
  mounts leaks out) where, before any plugin runs, tmpfs covers /tmp, /run (its netns mounts
  moved back on top), /var/lib/cni and /etc/cni, and every other filesystem is remounted
  read-only. Whatever a fuzzed config names, no plugin can write to the machine.

It reads one JSON request per line on stdin and answers one JSON line on stdout:
- `{"op": "run", "type", "env", "stdin" | "stdin_b64"}` -> `{"status", "stdout", "stderr"}`
  through `skel.run` (delegation to our own types stays in-process, as in the frozen build);
- `{"op": "snapshot", "netns": [paths], "dirs": [paths]}` -> the kernel state of this
  namespace and of each path (links, addresses, routes, qdiscs, filters, sysctls, firewall)
  and a listing (with content digests) of the writable state directories and `dirs`;
- `{"op": "write", "path", "content"}`: seed a state file (e.g. flannel's subnet.env);
- `{"op": "ping"}` -> which namespaces it is in, to check the seal.
The loop survives any request; it ends when stdin closes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Mapping
from typing import Any

# Writable in the worker (tmpfs); everything else is read-only.
STATE_DIRS = ("/tmp", "/run", "/var/lib/cni", "/etc/cni")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEVER_TOUCHED = ("/proc", "/dev", "/mnt/sandboxing")  # left as they are
BIN_DIR = "/tmp/.fuzz-bin"  # CNI_PATH for examples: one script per pycni type
NETNS_KEEP = "/tmp/.netns-keep"


def _mount(*argv: str) -> None:
    subprocess.run(["mount", *argv], check=True, capture_output=True, text=True)


def _mount_points() -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as table:
        for line in table:
            point = line.split()[4].encode().decode("unicode_escape")
            points.append(point)
    return points


def seal() -> None:
    """tmpfs over the state directories, the rest read-only (this mount namespace only)."""
    if os.getpid() != 1:
        raise SystemExit("fuzzworker: must run as PID 1 of its own PID namespace")
    original = _mount_points()
    _mount("--make-rslave", "/")
    # A checkout under /tmp (a CI clone) stays visible: held open, bound back on the tmpfs.
    repo = REPO
    under_tmp = repo.startswith("/tmp/")
    repo_fd = os.open(repo, os.O_RDONLY | os.O_DIRECTORY) if under_tmp else -1
    _mount("-t", "tmpfs", "-o", "mode=0755", "fuzz-tmp", "/tmp")
    if under_tmp:
        import importlib

        os.makedirs(repo)
        # No canonicalizing: the magic link names the directory under the old /tmp, its path
        # string the new, empty one.
        _mount("--no-canonicalize", "--bind", f"/proc/{os.getpid()}/fd/{repo_fd}", repo)
        os.close(repo_fd)
        importlib.invalidate_caches()  # the import system saw /tmp empty a moment ago
    os.makedirs(NETNS_KEEP)
    has_netns = "/run/netns" in original
    if has_netns:
        _mount("--move", "/run/netns", NETNS_KEEP)
    _mount("-t", "tmpfs", "-o", "mode=0755", "fuzz-run", "/run")
    os.makedirs("/run/netns")
    if has_netns:
        _mount("--move", NETNS_KEEP, "/run/netns")
    for directory in ("/var/lib/cni", "/etc/cni"):
        if not os.path.isdir(directory):
            # No mount point on this machine: the parent becomes an overlay over a tmpfs
            # upper layer, so the directory exists here and the machine's disk stays as it was.
            _overlay(os.path.dirname(directory))
            os.mkdir(directory, 0o755)
        _mount("-t", "tmpfs", "-o", "mode=0755", "fuzz-state", directory)
    for point in sorted(set(original)):
        if point.startswith(STATE_DIRS) or point.startswith(NEVER_TOUCHED):
            continue
        subprocess.run(["mount", "-o", "remount,bind,ro", point], capture_output=True)
    if os.access("/usr", os.W_OK) and _writable("/usr"):
        raise SystemExit("fuzzworker: the root filesystem is still writable")
    os.makedirs(BIN_DIR)
    from pycni import registry

    for plugin_type in registry.PLUGINS:
        script = os.path.join(BIN_DIR, plugin_type)
        with open(script, "w") as file:
            file.write(f"#!/bin/sh\nexec {sys.executable} -m pycni {plugin_type}\n")
        os.chmod(script, 0o755)


def _overlay(directory: str) -> None:
    """`directory` writable in this mount namespace only: its content as the lower layer,
    changes in a directory of the /tmp tmpfs."""
    scratch = os.path.join("/tmp", ".overlay" + directory.replace("/", "-"))
    os.makedirs(os.path.join(scratch, "upper"))
    os.makedirs(os.path.join(scratch, "work"))
    _mount("-t", "overlay", "-o", f"lowerdir={directory},upperdir={scratch}/upper,"
           f"workdir={scratch}/work", "fuzz-overlay", directory)


def _writable(directory: str) -> bool:
    probe = os.path.join(directory, ".fuzzworker-probe")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def install_executor() -> None:
    """Delegation to our own types (found in BIN_DIR) runs in-process, as the frozen build
    does; anything else is exec'd as usual (inside this sandbox)."""
    from pycni import invoke

    class InProcess(invoke.Executor):
        def run(self, path: str, stdin_data: bytes,
                environ: Mapping[str, str]) -> tuple[int, bytes]:
            if os.path.dirname(os.path.realpath(path)) == BIN_DIR:
                return invoke._run_in_process(os.path.basename(path), stdin_data, environ)
            return super().run(path, stdin_data, environ)

    invoke.EXECUTOR = InProcess()


def run_plugin(request: dict[str, Any]) -> dict[str, Any]:
    from pycni import registry, skel

    plugin = registry.load(request["type"])
    if "stdin_b64" in request:
        stdin = base64.b64decode(request["stdin_b64"])
    else:
        stdin = str(request.get("stdin", "")).encode("utf-8", "surrogatepass")
    out, err = io.StringIO(), io.StringIO()
    real_stderr = sys.stderr
    sys.stderr = err  # in-process delegates log to sys.stderr
    try:
        status = skel.run(plugin, dict(request["env"]), io.BytesIO(stdin), out, err)
    finally:
        sys.stderr = real_stderr
    return {"status": status, "stdout": out.getvalue(), "stderr": err.getvalue()}


def kernel_state(path: str | None) -> dict[str, Any]:
    from conformance import kernelstate

    argv = ["sh", "-c", kernelstate.SCRIPT]
    if path is not None:
        argv = ["nsenter", f"--net={path}", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                               "PYCNI_EXTRA_SYSCTLS": ""})
    if path is not None and done.returncode != 0 and not done.stdout:
        return {"error": done.stderr.strip()}
    raw: dict[str, list[str]] = {}
    current: list[str] = []
    for line in done.stdout.splitlines():
        if line.startswith(kernelstate.SECTION):
            current = raw.setdefault(line[len(kernelstate.SECTION):], [])
        else:
            current.append(line)
    sections = {name: "\n".join(lines) for name, lines in raw.items()}
    masks = kernelstate.Masks()
    return {"links": kernelstate.links(sections.get("links", ""), masks),
            "addresses": kernelstate.addresses(sections.get("addresses", ""), masks),
            "routes": kernelstate.routes(sections.get("routes4", ""),
                                         sections.get("routes6", ""), masks),
            "qdiscs": kernelstate.qdiscs(sections.get("qdiscs", ""), masks),
            "filters": kernelstate.filters(sections, masks),
            "sysctls": kernelstate.sysctls(sections.get("sysctls", ""), masks),
            "iptables": kernelstate.firewall(sections.get("iptables", ""), masks),
            "ip6tables": kernelstate.firewall(sections.get("ip6tables", ""), masks),
            "nft": kernelstate.nft_ruleset(sections.get("nft", ""), masks)}


def listing(root: str) -> dict[str, str]:
    """Every entry under `root`: kind, mode and, for files, a digest of the content."""
    found: dict[str, str] = {}
    skip = ("/run/netns", NETNS_KEEP, BIN_DIR, REPO)  # REPO: a checkout bound back on /tmp
    if not os.path.lexists(root):
        return found
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if os.path.join(directory, d) not in skip]
        for name in sorted(subdirs):
            path = os.path.join(directory, name)
            found[path] = f"dir {os.lstat(path).st_mode:o}"
        for name in sorted(files):
            path = os.path.join(directory, name)
            info = os.lstat(path)
            if os.path.islink(path):
                found[path] = f"link -> {os.readlink(path)}"
            elif os.path.isfile(path):
                with open(path, "rb") as file:
                    digest = hashlib.sha256(file.read()).hexdigest()[:16]
                found[path] = f"file {info.st_mode:o} {digest}"
            else:
                found[path] = f"other {info.st_mode:o}"
    return found


def snapshot(request: dict[str, Any]) -> dict[str, Any]:
    files: dict[str, str] = {}
    for root in (*STATE_DIRS, *request.get("dirs", [])):
        files.update(listing(root))
    kernel = {"node": kernel_state(None)}
    for path in request.get("netns", []):
        kernel[path] = kernel_state(path)
    return {"kernel": kernel, "files": files}


def write(request: dict[str, Any]) -> dict[str, Any]:
    """Seed a file of the node's state (inside the tmpfs state directories only)."""
    path = os.path.realpath(request["path"])
    if not path.startswith(tuple(d + "/" for d in STATE_DIRS)):
        return {"error": f"{path} is outside the state directories"}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as file:
        file.write(request["content"])
    return {}


def ping() -> dict[str, Any]:
    def inode(path: str) -> list[int]:
        info = os.stat(path)
        return [info.st_dev, info.st_ino]

    return {"pid": os.getpid(), "net": inode("/proc/self/ns/net"),
            "init_net": inode("/proc/1/ns/net"), "mnt": inode("/proc/self/ns/mnt"),
            "root_writable": _writable("/usr")}


def answer(request: dict[str, Any]) -> dict[str, Any]:
    op = request.get("op")
    if op == "run":
        return run_plugin(request)
    if op == "snapshot":
        return snapshot(request)
    if op == "ping":
        return ping()
    if op == "write":
        return write(request)
    return {"error": f"unknown op {op!r}"}


def serve() -> None:
    # The protocol gets private copies of fds 0 and 1; the real ones point elsewhere, so no
    # plugin, delegate or helper program can read a request or write into an answer.
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in requests:
        try:
            reply = answer(json.loads(line))
        except BaseException:  # noqa: BLE001 - the worker outlives every example
            reply = {"error": traceback.format_exc()}
        answers.write(json.dumps(reply) + "\n")
        answers.flush()


def main() -> None:
    import conformance.kernelstate  # noqa: F401 - imported while the checkout is in plain view

    seal()
    install_executor()
    serve()


# --- the test side --------------------------------------------------------------------------

class Worker:
    """The pytest side: start the worker in `host_netns` (a name under /var/run/netns)."""

    def __init__(self, host_netns: str, python: str = sys.executable) -> None:
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": repo}
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", host_netns, "unshare", "--mount", "--propagation", "slave",
             "--pid", "--fork", "--mount-proc", python, "-m", "tests.fuzzworker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            cwd=repo, env=env, text=True)

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"fuzzworker died (status {self.process.poll()})")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply and request.get("op") != "snapshot":
            raise RuntimeError(f"fuzzworker: {reply['error']}")
        return reply

    def run(self, plugin_type: str, env: dict[str, str], stdin: bytes | str) -> dict[str, Any]:
        request: dict[str, Any] = {"op": "run", "type": plugin_type, "env": env}
        if isinstance(stdin, bytes):
            request["stdin_b64"] = base64.b64encode(stdin).decode()
        else:
            request["stdin"] = stdin
        return self.call(request)

    def snapshot(self, netns: list[str] = (), dirs: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
        return self.call({"op": "snapshot", "netns": list(netns), "dirs": list(dirs)})

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


if __name__ == "__main__":
    main()
