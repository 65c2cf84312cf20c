"""Install pycni on a node: the bundle into the CNI bin directory, the config into net.d.

Two commands, both run from the DaemonSet (docs/installer.md has the deployment and flags):

`pycni install-cni --from DIR --to /host/opt/cni/bin` (an init container): `install()`. The
bundle is copied into a new versioned directory `.pycni-<version>-<digest>/` beside the links,
then each `<type>` link is created under a temporary name and renamed over the old one (rename
is atomic), so a runtime exec'ing `/opt/cni/bin/<type>` gets either the old or the new
program, never a missing or half-written file ("text file busy" is what an in-place copy over
a running program gives). Bundles two installs old are removed; the previous one stays for
processes still running it.

`pycni install-conf --conf SRC --to /host/etc/cni/net.d/NAME` (a container beside the node
agent), in this order:
1. wait until `--wait-for` exists (the agent's subnet file), polling, at most `--timeout`;
2. write `--kubeconfig` (0600; a directory made for it 0700) from the service account token
   and CA, for the meta plugin;
3. last, write DEST (0644): SRC's bytes once they parse as a network configuration. Runtimes
   take the first config in net.d as "the network is ready", so it appears only when
   everything it needs is there. Every write is atomic (a temporary name in the same
   directory, renamed over), and the temporary names end in `.tmp`, which runtimes skip.
Without `--once` it keeps going: the kubeconfig is rewritten when the token file changes and
before the token expires (at 80% of the lifetime left, read from the JWT's `exp`, at least
every `--refresh-interval`); DEST is rewritten when removed or changed, or when SRC changes.
SIGTERM or SIGINT ends it (exit 0); with `--cleanup-on-exit` DEST is removed first, if it
still holds what this process wrote.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    import threading
    from collections.abc import Callable
    from typing import Any

BUNDLE_PREFIX = ".pycni-"


def bundle_digest(bundle: str) -> str:
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(bundle):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, bundle).encode())
            with open(path, "rb") as f:
                digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()[:12]


def install(source_bin: str, target_bin: str) -> str:
    """Install `source_bin` (dist/bin: a bundle dir plus links) into `target_bin`."""
    from pycni import __version__

    bundle = os.path.join(source_bin, "pycni.bundle")
    if not os.path.isfile(os.path.join(bundle, "pycni")):
        raise SystemExit(f"no bundle at {bundle}: run `make build` first")
    types = sorted(n for n in os.listdir(source_bin)
                   if os.path.islink(os.path.join(source_bin, n)))
    os.makedirs(target_bin, exist_ok=True)
    name = f"{BUNDLE_PREFIX}{__version__}-{bundle_digest(bundle)}"
    in_use = _linked_bundles(target_bin, types) - {name}
    final = os.path.join(target_bin, name)
    if not os.path.isdir(final):
        staging = os.path.join(target_bin, f".staging-{name}-{os.getpid()}")
        shutil.copytree(bundle, staging, symlinks=True)
        os.rename(staging, final)
    for plugin_type in types:
        link = os.path.join(target_bin, plugin_type)
        tmp = os.path.join(target_bin, f".{plugin_type}.{os.getpid()}.new")
        if os.path.lexists(tmp):
            os.unlink(tmp)
        # the same program in the bundle as the source link: the launcher (`cni`)
        program = os.path.basename(os.readlink(os.path.join(source_bin, plugin_type)))
        os.symlink(os.path.join(name, program), tmp)
        os.replace(tmp, link)
    _prune(target_bin, keep={name, *(in_use or {_previous(target_bin, name)})})
    return final


def _linked_bundles(target_bin: str, types: list[str]) -> set[str]:
    """The bundles the links point into before the swap: what running processes use."""
    found: set[str] = set()
    for plugin_type in types:
        try:
            target = os.readlink(os.path.join(target_bin, plugin_type))
        except OSError:
            continue  # no link yet, or a regular file
        head = target.split("/", 1)[0]
        if head.startswith(BUNDLE_PREFIX):
            found.add(head)
    return found


def _previous(target_bin: str, current: str) -> str:
    """The newest other bundle, when no link says which one was in use (the directories'
    times are the build's, copied by copytree, not the install's)."""
    bundles = [n for n in os.listdir(target_bin) if n.startswith(BUNDLE_PREFIX) and n != current]
    bundles.sort(key=lambda n: os.stat(os.path.join(target_bin, n)).st_mtime)
    return bundles[-1] if bundles else ""


def _prune(target_bin: str, keep: set[str]) -> None:
    for entry in os.listdir(target_bin):
        if entry.startswith(BUNDLE_PREFIX) and entry not in keep:
            shutil.rmtree(os.path.join(target_bin, entry), ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pycni-install", description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", default="dist/bin")
    parser.add_argument("--to", dest="target", default="/opt/cni/bin")
    opts = parser.parse_args(argv)
    print(install(opts.source, opts.target), file=sys.stderr)



# -- pycni install-cni ------------------------------------------------------------------------

def install_cni_main(args: list[str]) -> int:
    """`pycni install-cni`: install the bundle beside this program (or `--from`) into `--to`."""
    parser = argparse.ArgumentParser(
        prog="pycni install-cni",
        description="Install the bundle and its links into a CNI bin directory (a new "
                    "versioned directory, links swapped by rename).")
    parser.add_argument("--from", dest="source", default=_own_bin_dir(),
                        help="a directory holding pycni.bundle and its links "
                             "(default: %(default)s)")
    parser.add_argument("--to", dest="target", default="/opt/cni/bin",
                        help="the CNI bin directory, e.g. /host/opt/cni/bin in a container "
                             "(default: %(default)s)")
    opts = parser.parse_args(args)
    try:
        final = install(opts.source, opts.target)
    except SystemExit as exc:  # install()'s "no bundle" message
        print(f"pycni install-cni: {exc.code}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"pycni install-cni: cannot install into {opts.target}: {exc}", file=sys.stderr)
        return 1
    name = os.path.basename(final)
    links = sorted(entry for entry in os.listdir(opts.target)
                   if os.path.islink(os.path.join(opts.target, entry))
                   and os.readlink(os.path.join(opts.target, entry)).startswith(name + "/"))
    print(f"installed {final}")
    print(f"links: {' '.join(links)}")
    return 0


def _own_bin_dir() -> str:
    """The `dist/bin` this frozen program runs from (the parent of its bundle directory)."""
    if getattr(sys, "frozen", False):
        return os.path.dirname(os.path.dirname(os.path.abspath(sys.executable)))
    return "dist/bin"


# -- pycni install-conf -----------------------------------------------------------------------

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
CONF_SUFFIXES = (".conf", ".conflist", ".json")  # what libcni reads from a conf directory
REFRESH_SHARE = 0.8  # rewrite the kubeconfig when 80% of the token's remaining life is gone


class InstallError(Exception):
    """What stops install-conf, said with the file it concerns."""


def install_conf_main(args: list[str], stop: threading.Event | None = None) -> int:
    """`pycni install-conf`. `stop` ends the loop like SIGTERM does (tests run the loop in a
    thread, where signals cannot be taken)."""
    opts = _conf_parser().parse_args(args)
    with _Waiter(stop) as waiter:
        try:
            return _ConfInstaller(opts, waiter).run()
        except InstallError as exc:
            _log(f"error: {exc}")
            return 1


def _conf_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pycni install-conf",
        description="Write the CNI network config into the runtime's conf directory once the "
                    "node agent is ready, and the meta plugin's kubeconfig beside it.")
    parser.add_argument("--conf", dest="source", required=True,
                        help="the network config to install (JSON), e.g. from a ConfigMap")
    parser.add_argument("--to", dest="dest", required=True,
                        help="where the runtime reads it, e.g. "
                             "/host/etc/cni/net.d/10-pycni.conflist")
    parser.add_argument("--wait-for", default="",
                        help="write nothing until this file exists (the agent's subnet file)")
    parser.add_argument("--timeout", type=float, default=0.0,
                        help="seconds to wait for --wait-for; 0 waits forever (default)")
    parser.add_argument("--kubeconfig", default="",
                        help="write a kubeconfig here from the service account (mode 0600)")
    parser.add_argument("--token-file", default=f"{SERVICE_ACCOUNT}/token")
    parser.add_argument("--ca-file", default=f"{SERVICE_ACCOUNT}/ca.crt")
    parser.add_argument("--api-server", default=_default_api_server(os.environ),
                        help="the API server URL in the kubeconfig (default: from "
                             "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT)")
    parser.add_argument("--refresh-interval", type=float, default=600.0,
                        help="rewrite the kubeconfig at least this often, in seconds")
    parser.add_argument("--poll-interval", type=float, default=1.0,
                        help="seconds between checks of the files watched")
    parser.add_argument("--cleanup-on-exit", action="store_true",
                        help="remove the installed config on SIGTERM or SIGINT")
    parser.add_argument("--once", action="store_true",
                        help="write once and exit instead of watching")
    return parser


def _default_api_server(environ: dict[str, str] | os._Environ[str]) -> str:
    host = environ.get("KUBERNETES_SERVICE_HOST", "")
    if not host:
        return ""
    port = environ.get("KUBERNETES_SERVICE_PORT", "443")
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def _log(message: str) -> None:
    print(f"pycni install-conf: {message}", file=sys.stderr, flush=True)


class _Waiter:
    """Sleeps between polls and tells when to stop.

    In the main thread SIGTERM and SIGINT are blocked and taken with sigtimedwait while
    sleeping, so no handler ever runs in the middle of a write and nothing is lost between
    two sleeps. Given an event (tests drive the loop from a thread), that event stops it.
    """

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self, stop: threading.Event | None) -> None:
        import threading

        self.event = stop
        self.signals: set[Any] = set()
        self.old_mask: set[Any] | None = None
        self.stopped_by = ""
        if stop is None and threading.current_thread() is not threading.main_thread():
            self.event = threading.Event()  # no signals outside the main thread

    def __enter__(self) -> _Waiter:
        if self.event is None:
            import signal

            self.signals = {getattr(signal, name) for name in self.SIGNALS}
            self.old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.signals)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.old_mask is not None:
            import signal

            signal.pthread_sigmask(signal.SIG_SETMASK, self.old_mask)

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True when told to stop."""
        if self.stopped_by:
            return True
        if self.event is not None:
            if self.event.wait(max(seconds, 0.0)):
                self.stopped_by = "stop event"
        else:
            import signal

            taken = signal.sigtimedwait(self.signals, max(seconds, 0.0))
            if taken is not None:
                self.stopped_by = signal.Signals(taken.si_signo).name
        return bool(self.stopped_by)


class _ConfInstaller:
    """install-conf's steps and what it last wrote (so it knows what to rewrite or remove)."""

    def __init__(self, opts: argparse.Namespace, waiter: _Waiter) -> None:
        self.source: str = opts.source
        self.dest: str = opts.dest
        self.wait_for: str = opts.wait_for
        self.timeout: float = opts.timeout
        self.kubeconfig: str = opts.kubeconfig
        self.token_file: str = opts.token_file
        self.ca_file: str = opts.ca_file
        self.api_server: str = opts.api_server
        self.refresh_interval: float = max(opts.refresh_interval, 0.001)
        self.poll: float = max(opts.poll_interval, 0.001)
        self.cleanup: bool = opts.cleanup_on_exit
        self.once: bool = opts.once
        self.waiter = waiter
        self.conf_written: bytes | None = None  # DEST's bytes as this process last wrote them
        self.kube_written: bytes | None = None
        self.kube_due = 0.0  # time.monotonic() by which the kubeconfig is rewritten anyway
        self.last_problems: list[str] = []

    def run(self) -> int:
        if not self.dest.endswith(CONF_SUFFIXES):
            raise InstallError(f"{self.dest}: runtimes only read {', '.join(CONF_SUFFIXES)} "
                               "files from a conf directory")
        if self.kubeconfig and not self.api_server:
            raise InstallError("no API server for the kubeconfig: pass --api-server or set "
                               "KUBERNETES_SERVICE_HOST")
        _read_network_conf(self.source, self.dest)  # a broken SRC fails now, not after the wait
        if not self._wait_for_file():
            _log(f"stopped ({self.waiter.stopped_by}) before {self.wait_for} appeared; "
                 "nothing written")
            return 1 if self.once else 0
        if self.kubeconfig:
            self._write_kubeconfig("initial")
        self._write_conf(_read_network_conf(self.source, self.dest), "initial")
        if self.once:
            return 0
        while not self.waiter.wait(self.poll):
            self._check()
        _log(f"stopping ({self.waiter.stopped_by})")
        if self.cleanup:
            self._remove_conf()
        return 0

    def _wait_for_file(self) -> bool:
        if not self.wait_for:
            return True
        import time

        deadline = time.monotonic() + self.timeout if self.timeout > 0 else None
        announced = False
        while not os.path.exists(self.wait_for):
            if not announced:
                _log(f"waiting for {self.wait_for}")
                announced = True
            left = self.poll if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise InstallError(f"timed out after {self.timeout:g}s waiting for "
                                   f"{self.wait_for}")
            if self.waiter.wait(min(self.poll, left)):
                return False
        return True

    def _check(self) -> None:
        """One poll: rewrite what is due, missing or changed. A problem is reported once (not
        every poll) and the files last written stay."""
        problems = []
        for step in (self._check_kubeconfig, self._check_conf):
            try:
                step()
            except InstallError as exc:
                problems.append(str(exc))
        for problem in problems:
            if problem not in self.last_problems:
                _log(f"error: {problem} (keeping what was written before)")
        self.last_problems = problems

    def _check_kubeconfig(self) -> None:
        if self.kubeconfig:
            reason = self._kubeconfig_reason()
            if reason:
                self._write_kubeconfig(reason)

    def _check_conf(self) -> None:
        wanted = _read_network_conf(self.source, self.dest)
        if _read_bytes(self.dest) != wanted:
            self._write_conf(wanted, "source changed" if wanted != self.conf_written
                             else "removed or changed")

    def _kubeconfig_reason(self) -> str:
        import time

        if time.monotonic() >= self.kube_due:
            return "refresh due"
        if _read_bytes(self.kubeconfig) != self.kube_written:
            return "removed or changed"
        if self._render_kubeconfig()[0] != self.kube_written:
            return "token or CA changed"
        return ""

    def _render_kubeconfig(self) -> tuple[bytes, str]:
        token = _read_bytes(self.token_file)
        if token is None:
            raise InstallError(f"cannot read the service account token {self.token_file}")
        ca = _read_bytes(self.ca_file)
        if ca is None:
            raise InstallError(f"cannot read the API server's CA {self.ca_file}")
        text = token.decode(errors="replace").strip()
        return render_kubeconfig(self.api_server, ca, text, self.token_file), text

    def _write_kubeconfig(self, reason: str) -> None:
        import time

        data, token = self._render_kubeconfig()
        _make_dirs(os.path.dirname(self.kubeconfig), 0o700)  # it holds a credential
        _write(self.kubeconfig, data, 0o600)
        self.kube_written = data
        delay = refresh_delay(token, time.time(), self.refresh_interval)
        self.kube_due = time.monotonic() + max(delay, self.poll)
        expiry = token_expiry(token)
        if expiry is not None and expiry <= time.time():
            _log(f"warning: the token in {self.token_file} has expired; the kubeconfig "
                 "carries it until the kubelet rotates it")
        _log(f"wrote {self.kubeconfig} ({reason}; next refresh in {delay:.0f}s at the latest)")

    def _write_conf(self, data: bytes, reason: str) -> None:
        _make_dirs(os.path.dirname(self.dest), 0o755)
        _write(self.dest, data, 0o644)
        self.conf_written = data
        _log(f"wrote {self.dest} ({reason})")

    def _remove_conf(self) -> None:
        """Remove DEST if it still holds what this process wrote (never another's config)."""
        if self.conf_written is None:
            return
        if _read_bytes(self.dest) != self.conf_written:
            _log(f"left {self.dest}: not what this process wrote")
            return
        try:
            os.unlink(self.dest)
            _log(f"removed {self.dest}")
        except FileNotFoundError:
            pass
        except OSError as exc:
            _log(f"error: cannot remove {self.dest}: {exc.strerror}")


def _read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _make_dirs(directory: str, mode: int) -> None:
    """`directory` with `mode`, its missing parents 0755, whatever the umask."""
    from pycni.store import make_dirs

    try:
        make_dirs(directory, mode, parents=0o755)
    except OSError as exc:
        raise InstallError(f"failed to create {directory}: {exc.strerror}") from None


def _write(path: str, data: bytes, mode: int) -> None:
    """Atomically, with exactly `mode` (the umask may have taken bits from the new file)."""
    from pycni.errors import CNIError
    from pycni.store import write_atomic

    try:
        write_atomic(path, data, mode)
    except CNIError as exc:
        raise InstallError(str(exc)) from None
    try:
        if os.stat(path).st_mode & 0o7777 != mode:
            os.chmod(path, mode)
    except FileNotFoundError:
        pass  # removed already (by whom install-conf watches for: it writes it again)
    except OSError as exc:
        raise InstallError(f"failed to set the mode of {path}: {exc.strerror}") from None


def _read_network_conf(path: str, dest: str) -> bytes:
    """SRC's bytes, once they parse as a network config (a list for a .conflist DEST)."""
    import json

    data = _read_bytes(path)
    if data is None:
        raise InstallError(f"cannot read the network config {path}")
    try:
        conf = json.loads(data)
    except ValueError as exc:
        raise InstallError(f"the network config {path} is not valid JSON: {exc}") from None
    if not isinstance(conf, dict):
        raise InstallError(f"the network config {path} is not a JSON object")
    if not isinstance(conf.get("name"), str) or not conf["name"]:
        raise InstallError(f"the network config {path} has no \"name\"")
    plugins = conf.get("plugins")
    if dest.endswith(".conflist") or plugins is not None:
        if not (isinstance(plugins, list) and plugins
                and all(isinstance(p, dict) and p.get("type") for p in plugins)):
            raise InstallError(f"the network config list {path} needs \"plugins\", a list "
                               "of objects each with a \"type\"")
    elif not isinstance(conf.get("type"), str) or not conf["type"]:
        raise InstallError(f"the network config {path} has no \"type\"")
    return data


# -- the kubeconfig ---------------------------------------------------------------------------

def render_kubeconfig(server: str, ca: bytes, token: str, token_file: str = "") -> bytes:
    """A kubeconfig carrying the CA and the token themselves (the plugin runs on the host,
    where the container's service account files are not). Strings are written as JSON
    strings, which are YAML double-quoted scalars."""
    import base64
    import json

    def quoted(value: str) -> str:
        return json.dumps(value)

    source = f" from {token_file}" if token_file else ""
    lines = [
        f"# Written by pycni install-conf{source}; rewritten as the token rotates.",
        "apiVersion: v1",
        "kind: Config",
        "clusters:",
        "- name: local",
        "  cluster:",
        f"    server: {quoted(server)}",
        f"    certificate-authority-data: {quoted(base64.b64encode(ca).decode())}",
        "users:",
        "- name: pycni",
        "  user:",
        f"    token: {quoted(token)}",
        "contexts:",
        "- name: pycni-context",
        "  context:",
        "    cluster: local",
        "    user: pycni",
        "current-context: pycni-context",
    ]
    return ("\n".join(lines) + "\n").encode()


def token_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT (seconds since the epoch), read without checking the
    signature (only the API server needs to trust it); None when there is none."""
    import base64
    import json

    parts = token.strip().split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return float(exp)


def refresh_delay(token: str, now: float, interval: float) -> float:
    """Seconds until the kubeconfig is rewritten: at 80% of the token's remaining life, and
    at least every `interval` (also when the token has no expiry or has expired)."""
    expiry = token_expiry(token)
    if expiry is None or expiry <= now:
        return interval
    return min(REFRESH_SHARE * (expiry - now), interval)


def _module_main(argv: list[str]) -> int | None:
    """`python -m pycni.install [install-cni|install-conf] ...`; bare flags are `make
    install`'s form (main())."""
    commands: dict[str, Callable[[list[str]], int]] = {
        "install-cni": install_cni_main, "install-conf": install_conf_main}
    if argv and argv[0] in commands:
        return commands[argv[0]](argv[1:])
    main(argv)
    return None


if __name__ == "__main__":
    sys.exit(_module_main(sys.argv[1:]))
