"""pycni install-cni and install-conf: links swapped under exec, the config written last."""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pycni import install
from tests.conftest import REPO
from tests.test_install import make_dist

CONF = {"cniVersion": "1.0.0", "name": "podnet", "kubeconfig": "/etc/cni/net.d/pycni.d/kc",
        "plugins": [{"type": "multus", "delegates": []}]}
API = "https://10.96.0.1:443"


def wait_until(condition: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.01)


def make_token(exp: float | None, subject: str = "system:serviceaccount:kube-system:pycni") -> str:
    """A JWT-shaped token (unsigned: the installer only reads the claims)."""
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    claims: dict[str, Any] = {"sub": subject}
    if exp is not None:
        claims["exp"] = int(exp)
    return f"{part({'alg': 'RS256', 'kid': 'k'})}.{part(claims)}.c2lnbmF0dXJl"


def write_replace(path: Path, data: str) -> None:
    """As kubelet updates a projected volume: the new file renamed over the old."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(data)
    os.replace(tmp, path)


class Setup:
    def __init__(self, root: Path) -> None:
        self.src = root / "config" / "conf.json"
        self.src.parent.mkdir()
        self.src.write_text(json.dumps(CONF, indent=1))
        self.netd = root / "host" / "etc" / "cni" / "net.d"
        self.dest = self.netd / "10-pycni.conflist"
        self.subnet = root / "run" / "flannel" / "subnet.env"
        self.token = root / "sa" / "token"
        self.ca = root / "sa" / "ca.crt"
        self.token.parent.mkdir()
        self.token.write_text(make_token(time.time() + 3600))
        self.ca.write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIfake\n-----END CERTIFICATE-----\n")
        self.kubeconfig = self.netd / "pycni.d" / "pycni.kubeconfig"

    def args(self, *extra: str) -> list[str]:
        return ["--conf", str(self.src), "--to", str(self.dest), "--poll-interval", "0.02",
                *extra]

    def kube_args(self) -> list[str]:
        return ["--kubeconfig", str(self.kubeconfig), "--token-file", str(self.token),
                "--ca-file", str(self.ca), "--api-server", API]

    def kubeconfig_token(self) -> str:
        loaded = yaml.safe_load(self.kubeconfig.read_text())
        return str(loaded["users"][0]["user"]["token"])


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


class Running:
    """install-conf's loop in a thread, stopped through the event it takes for tests."""

    def __init__(self, args: list[str]) -> None:
        self.stop = threading.Event()
        self.status: list[int] = []
        self.thread = threading.Thread(
            target=lambda: self.status.append(install.install_conf_main(args, self.stop)))
        self.thread.start()

    def finish(self) -> int:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()
        return self.status[0]


@pytest.fixture
def run_loop() -> Iterator[Callable[[list[str]], Running]]:
    started: list[Running] = []

    def start(args: list[str]) -> Running:
        started.append(Running(args))
        return started[-1]

    yield start
    for running in started:  # a failed assertion must not leave a thread behind
        running.stop.set()
        running.thread.join(10)


# -- install-conf: the config ---------------------------------------------------------------

def test_conf_waits_for_the_subnet_file(setup: Setup, run_loop: Callable[[list[str]], Running],
                                        ) -> None:
    running = run_loop(setup.args("--wait-for", str(setup.subnet), "--once"))
    seen_early: list[str] = []
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:  # the installer polls every 20 ms meanwhile
        if setup.dest.exists() or setup.netd.exists() and os.listdir(setup.netd):
            seen_early.append(str(os.listdir(setup.netd)))
        time.sleep(0.005)
    assert seen_early == []
    assert running.thread.is_alive()

    setup.subnet.parent.mkdir(parents=True)
    setup.subnet.write_text("FLANNEL_SUBNET=10.244.1.1/24\n")
    running.thread.join(5)
    assert running.status == [0]
    assert setup.dest.read_bytes() == setup.src.read_bytes()  # as given, "kubeconfig" too
    assert stat.S_IMODE(setup.dest.stat().st_mode) == 0o644
    assert os.listdir(setup.netd) == [setup.dest.name]  # no temporary file left


def test_conf_never_appears_before_the_subnet_file(setup: Setup) -> None:
    """Watched from a tight loop: whenever DEST exists, the subnet file does too."""
    stop = threading.Event()
    violations: list[float] = []

    def watch() -> None:
        while not stop.is_set():
            if setup.dest.exists() and not setup.subnet.exists():
                violations.append(time.monotonic())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        running = Running(setup.args("--wait-for", str(setup.subnet), "--once"))
        time.sleep(0.2)
        setup.subnet.parent.mkdir(parents=True)
        setup.subnet.write_text("x\n")
        running.thread.join(5)
    finally:
        stop.set()
        watcher.join()
    assert running.status == [0] and setup.dest.exists()
    assert violations == []


def test_wait_is_bounded_by_the_timeout(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    status = install.install_conf_main(setup.args("--wait-for", str(setup.subnet),
                                                  "--timeout", "0.2", "--once"))
    assert status == 1
    assert 0.15 < time.monotonic() - started < 3
    err = capsys.readouterr().err
    assert f"timed out after 0.2s waiting for {setup.subnet}" in err
    assert not setup.dest.exists()


@pytest.mark.parametrize(("content", "complaint"), [
    ("{\"cniVersion\": \"1.0.0\", \"name\": ", "is not valid JSON"),
    ("[1, 2]", "is not a JSON object"),
    ("{\"cniVersion\": \"1.0.0\", \"plugins\": [{\"type\": \"bridge\"}]}", "has no \"name\""),
    ("{\"name\": \"n\", \"plugins\": [{\"bridge\": \"br0\"}]}", "needs \"plugins\""),
    ("{\"name\": \"n\", \"type\": \"bridge\"}", "needs \"plugins\""),  # DEST is a .conflist
])
def test_invalid_source_is_an_error_and_nothing_is_written(
        setup: Setup, capsys: pytest.CaptureFixture[str], content: str, complaint: str) -> None:
    setup.src.write_text(content)
    # The subnet file is missing and the timeout infinite: a broken SRC fails at once.
    status = install.install_conf_main(setup.args("--wait-for", str(setup.subnet), "--once",
                                                  *setup.kube_args()))
    assert status != 0
    err = capsys.readouterr().err
    assert str(setup.src) in err and complaint in err
    assert not setup.dest.exists() and not setup.kubeconfig.exists()


def test_missing_source_and_bad_destination_name(setup: Setup,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    missing = setup.src.with_name("absent.json")
    assert install.install_conf_main(["--conf", str(missing), "--to", str(setup.dest),
                                      "--once"]) == 1
    assert f"cannot read the network config {missing}" in capsys.readouterr().err
    wrong = setup.netd / "10-pycni.yaml"
    assert install.install_conf_main(["--conf", str(setup.src), "--to", str(wrong),
                                      "--once"]) == 1
    assert f"{wrong}: runtimes only read" in capsys.readouterr().err
    assert not setup.netd.exists()


def test_single_plugin_conf(setup: Setup) -> None:
    setup.src.write_text(json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "bridge"}))
    dest = setup.netd / "10-bridge.conf"
    assert install.install_conf_main(["--conf", str(setup.src), "--to", str(dest),
                                      "--once"]) == 0
    assert dest.read_bytes() == setup.src.read_bytes()


def test_mode_is_exact_under_a_restrictive_umask(setup: Setup) -> None:
    old = os.umask(0o077)
    try:
        assert install.install_conf_main(setup.args("--once", *setup.kube_args())) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(setup.dest.stat().st_mode) == 0o644
    assert stat.S_IMODE(setup.kubeconfig.stat().st_mode) == 0o600


def test_loop_rewrites_a_removed_or_changed_conf(
        setup: Setup, run_loop: Callable[[list[str]], Running]) -> None:
    running = run_loop(setup.args())
    wait_until(setup.dest.exists, what="DEST")
    original = setup.src.read_bytes()

    setup.dest.unlink()
    wait_until(lambda: setup.dest.exists() and setup.dest.read_bytes() == original,
               what="DEST rewritten after removal")
    setup.dest.write_text("{\"edited\": true}")
    wait_until(lambda: setup.dest.read_bytes() == original, what="DEST restored")

    changed = dict(CONF, name="podnet2")
    setup.src.write_text(json.dumps(changed))
    wait_until(lambda: json.loads(setup.dest.read_bytes())["name"] == "podnet2",
               what="SRC's change installed")
    setup.src.write_text("{broken")  # a bad edit of the ConfigMap: the last good one stays
    time.sleep(0.2)
    assert json.loads(setup.dest.read_bytes())["name"] == "podnet2"
    assert running.finish() == 0
    assert setup.dest.exists()  # no --cleanup-on-exit


# -- install-conf: the kubeconfig -----------------------------------------------------------

def test_kubeconfig_from_the_service_account(setup: Setup) -> None:
    assert install.install_conf_main(setup.args("--once", *setup.kube_args())) == 0
    loaded = yaml.safe_load(setup.kubeconfig.read_text())
    context = next(c["context"] for c in loaded["contexts"]
                   if c["name"] == loaded["current-context"])
    cluster = next(c["cluster"] for c in loaded["clusters"] if c["name"] == context["cluster"])
    user = next(u["user"] for u in loaded["users"] if u["name"] == context["user"])
    assert loaded["kind"] == "Config" and loaded["apiVersion"] == "v1"
    assert cluster["server"] == API
    assert base64.b64decode(cluster["certificate-authority-data"]) == setup.ca.read_bytes()
    assert user["token"] == setup.token.read_text()
    assert stat.S_IMODE(setup.kubeconfig.stat().st_mode) == 0o600
    # written before the config that points the meta plugin at it
    assert setup.kubeconfig.stat().st_mtime_ns <= setup.dest.stat().st_mtime_ns
    assert json.loads(setup.dest.read_bytes())["kubeconfig"] == CONF["kubeconfig"]


def test_kubeconfig_loads_with_the_kubernetes_client(setup: Setup) -> None:
    kubernetes = pytest.importorskip("kubernetes")
    assert install.install_conf_main(setup.args("--once", *setup.kube_args())) == 0
    client = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(setup.kubeconfig),
                                       client_configuration=client)
    assert client.host == API
    assert client.api_key["BearerToken"] == f"Bearer {setup.token.read_text()}"
    assert Path(client.ssl_ca_cert).read_bytes() == setup.ca.read_bytes()


def test_api_server_from_the_service_environment(setup: Setup,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    args = [a for a in setup.kube_args() if a not in ("--api-server", API)]
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00:10:96::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    assert install.install_conf_main(setup.args("--once", *args)) == 0
    loaded = yaml.safe_load(setup.kubeconfig.read_text())
    assert loaded["clusters"][0]["cluster"]["server"] == "https://[fd00:10:96::1]:6443"


def test_no_api_server_is_an_error(setup: Setup, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    args = [a for a in setup.kube_args() if a not in ("--api-server", API)]
    assert install.install_conf_main(setup.args("--once", *args)) == 1
    assert "KUBERNETES_SERVICE_HOST" in capsys.readouterr().err
    assert not setup.dest.exists()


def test_missing_token_is_an_error_naming_it(setup: Setup,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    setup.token.unlink()
    assert install.install_conf_main(setup.args("--once", *setup.kube_args())) == 1
    assert f"cannot read the service account token {setup.token}" in capsys.readouterr().err
    assert not setup.dest.exists()  # the config waits for its kubeconfig


def test_kubeconfig_follows_the_token_file(setup: Setup,
                                          run_loop: Callable[[list[str]], Running]) -> None:
    first = setup.token.read_text()
    running = run_loop(setup.args("--refresh-interval", "600", *setup.kube_args()))
    wait_until(setup.dest.exists, what="DEST")
    assert setup.kubeconfig_token() == first

    second = make_token(time.time() + 7200, subject="rotated")
    write_replace(setup.token, second)
    wait_until(lambda: setup.kubeconfig_token() == second, what="the rotated token")
    assert stat.S_IMODE(setup.kubeconfig.stat().st_mode) == 0o600

    setup.kubeconfig.unlink()  # removed: written again
    wait_until(setup.kubeconfig.exists, what="the kubeconfig rewritten")
    assert setup.kubeconfig_token() == second
    assert running.finish() == 0


def test_a_problem_is_reported_once_and_does_not_stop_the_rest(
        setup: Setup, run_loop: Callable[[list[str]], Running],
        capsys: pytest.CaptureFixture[str]) -> None:
    running = run_loop(setup.args("--refresh-interval", "0.05", *setup.kube_args()))
    wait_until(setup.dest.exists, what="DEST")
    setup.token.unlink()  # the kubeconfig cannot be refreshed now...
    time.sleep(0.3)
    setup.dest.unlink()  # ...and the config is still looked after
    wait_until(setup.dest.exists, what="DEST rewritten")
    assert setup.kubeconfig.exists()  # the last one written stays
    assert running.finish() == 0
    err = capsys.readouterr().err
    assert err.count(f"cannot read the service account token {setup.token}") == 1


def test_kubeconfig_refreshed_before_the_token_expires(
        setup: Setup, run_loop: Callable[[list[str]], Running]) -> None:
    setup.token.write_text(make_token(time.time() + 2))
    running = run_loop(setup.args("--refresh-interval", "600", *setup.kube_args()))
    wait_until(setup.kubeconfig.exists, what="the kubeconfig")
    written = time.monotonic()
    inode = setup.kubeconfig.stat().st_ino
    # 80% of the ~2 s left: rewritten (a new file renamed over) after ~1.6 s, same token.
    wait_until(lambda: setup.kubeconfig.stat().st_ino != inode, timeout=5,
               what="the refresh before expiry")
    assert time.monotonic() - written > 0.5
    assert running.finish() == 0


def test_refresh_interval_bounds_the_refresh(setup: Setup,
                                             run_loop: Callable[[list[str]], Running]) -> None:
    running = run_loop(setup.args("--refresh-interval", "0.3", *setup.kube_args()))
    wait_until(setup.kubeconfig.exists, what="the kubeconfig")
    inodes = {setup.kubeconfig.stat().st_ino}
    wait_until(lambda: len(inodes | {setup.kubeconfig.stat().st_ino}) > 1, timeout=5,
               what="a refresh after --refresh-interval")
    assert running.finish() == 0


def test_token_expiry_and_refresh_delay() -> None:
    now = 1_800_000_000.0
    token = make_token(now + 1000)
    assert install.token_expiry(token) == now + 1000
    assert install.token_expiry(token + "\n") == now + 1000
    assert install.refresh_delay(token, now, 3600) == pytest.approx(800)
    assert install.refresh_delay(token, now, 600) == 600  # the interval bounds it
    assert install.refresh_delay(make_token(now - 5), now, 600) == 600  # expired
    assert install.token_expiry(make_token(None)) is None
    for junk in ("", "opaque-legacy-token", "a.!!!.c", "a.bnVsbA.c"):  # bnVsbA: "null"
        assert install.token_expiry(junk) is None
        assert install.refresh_delay(junk, now, 600) == 600


# -- install-conf: shutdown -----------------------------------------------------------------

def start_process(setup: Setup, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "pycni.install", "install-conf",
                             *setup.args(*extra)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cleanup_on_exit_removes_only_dest(setup: Setup, signum: int) -> None:
    other = setup.netd / "05-other.conflist"
    setup.netd.mkdir(parents=True)
    other.write_text("{}")
    process = start_process(setup, "--cleanup-on-exit", *setup.kube_args())
    try:
        wait_until(setup.dest.exists, timeout=15, what="DEST")
        process.send_signal(signum)
        _, err = process.communicate(timeout=10)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, err
    assert not setup.dest.exists()
    assert other.exists() and setup.kubeconfig.exists() and setup.src.exists()
    assert f"removed {setup.dest}" in err


def test_without_cleanup_the_conf_stays(setup: Setup) -> None:
    process = start_process(setup)
    try:
        wait_until(setup.dest.exists, timeout=15, what="DEST")
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=10)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0
    assert setup.dest.read_bytes() == setup.src.read_bytes()


def test_signal_while_waiting_writes_nothing(setup: Setup) -> None:
    process = start_process(setup, "--wait-for", str(setup.subnet), "--cleanup-on-exit")
    try:
        assert process.stderr is not None
        assert "waiting for" in process.stderr.readline()
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=10)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0
    assert not setup.dest.exists()


# -- install-cni ----------------------------------------------------------------------------

def test_install_cni_prints_what_it_installed(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    dist = make_dist(tmp_path, "first")
    target = tmp_path / "bin"
    assert install.install_cni_main(["--from", str(dist), "--to", str(target)]) == 0
    name = next(n for n in os.listdir(target) if n.startswith(install.BUNDLE_PREFIX))
    out = capsys.readouterr().out
    assert out == f"installed {target / name}\nlinks: bridge loopback\n"
    assert subprocess.run([str(target / "loopback")], capture_output=True, text=True,
                          check=True).stdout == "first loopback\n"


def test_install_cni_without_a_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert install.install_cni_main(["--from", str(tmp_path), "--to",
                                     str(tmp_path / "bin")]) == 1
    assert f"no bundle at {tmp_path / 'pycni.bundle'}" in capsys.readouterr().err


def test_module_entry_dispatches(tmp_path: Path) -> None:
    dist = make_dist(tmp_path, "first")
    target = tmp_path / "bin"
    done = subprocess.run([sys.executable, "-m", "pycni.install", "install-cni",
                           "--from", str(dist), "--to", str(target)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"installed {target}/.pycni-")


# -- the acceptance test: installs while another process execs the links --------------------

# Runs in its own process: a thread of the installing process would hold the staging files'
# write descriptors across its fork()s, and an exec of those files would then fail with
# ETXTBSY because of the test, not because of the installer.
EXEC_LOOP = r"""
import json, os, subprocess, sys
link, ready, stop = sys.argv[1:4]
env = dict(os.environ, CNI_COMMAND="VERSION", PYCNI_DAEMON_SOCKET="")
outputs, failures, runs = {}, [], 0
while not os.path.exists(stop):
    try:
        done = subprocess.run([link], capture_output=True, env=env, stdin=subprocess.DEVNULL)
    except OSError as exc:  # ENOENT, ETXTBSY, EACCES: the exec itself failed
        failures.append(f"exec failed: {exc!r}")
    else:
        if done.returncode:
            failures.append(f"exit {done.returncode}: {done.stderr[-300:]!r}")
        else:
            key = done.stdout.decode(errors="replace")
            outputs[key] = outputs.get(key, 0) + 1
    runs += 1
    if runs == 1:
        open(ready, "w").close()
print(json.dumps({"runs": runs, "outputs": outputs, "failures": failures[:20],
                  "failed": len(failures)}))
"""


def swap_while_exec_ing(sources: list[Path], target: Path, link: str, installs: int = 24,
                        seconds: float = 3.0) -> tuple[dict[str, Any], int]:
    """Run install-cni over `sources` in turn, at least `installs` times and for at least
    `seconds`, while another process execs `target/link` in a tight loop. Returns what the
    loop saw and how many installs ran."""
    assert install.install_cni_main(["--from", str(sources[0]), "--to", str(target)]) == 0
    ready, stop = target.parent / "loop.ready", target.parent / "loop.stop"
    loop = subprocess.Popen([sys.executable, "-c", EXEC_LOOP, str(target / link), str(ready),
                             str(stop)], stdout=subprocess.PIPE, text=True)
    count = 0
    try:
        wait_until(lambda: ready.exists() or loop.poll() is not None, timeout=60,
                   what="the exec loop")
        started = time.monotonic()
        while count < installs or time.monotonic() - started < seconds:
            count += 1
            source = sources[count % len(sources)]
            assert install.install_cni_main(["--from", str(source), "--to", str(target)]) == 0
        stop.touch()
        out, _ = loop.communicate(timeout=120)
    finally:
        stop.touch()
        loop.kill()
        loop.wait()
    return json.loads(out), count


def leftovers(target: Path) -> list[str]:
    return [n for n in os.listdir(target) if n.startswith(".staging") or n.endswith(".new")]


def two_dists(tmp_path: Path) -> list[Path]:
    return [make_dist(tmp_path / flavour, flavour) for flavour in ("old", "new")]


def test_no_exec_fails_while_links_are_swapped(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "host" / "opt" / "cni" / "bin"
    seen, count = swap_while_exec_ing(two_dists(tmp_path), target, "loopback")
    capsys.readouterr()
    assert count >= 20
    assert seen["failed"] == 0, seen["failures"]
    assert seen["runs"] > 50, seen
    assert set(seen["outputs"]) == {"old loopback\n", "new loopback\n"}, seen["outputs"]
    assert leftovers(target) == []


def test_no_exec_fails_while_bundles_are_copied_and_pruned(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A new bundle every install: copies, swaps and removals of old bundles under load."""
    flavours = [f"v{i}" for i in range(12)]
    sources = [make_dist(tmp_path / flavour, flavour) for flavour in flavours]
    target = tmp_path / "host" / "opt" / "cni" / "bin"
    seen, count = swap_while_exec_ing(sources, target, "loopback", installs=len(flavours) * 2,
                                      seconds=2.0)
    capsys.readouterr()
    assert seen["failed"] == 0, seen["failures"]
    assert set(seen["outputs"]) <= {f"{flavour} loopback\n" for flavour in flavours}
    assert len(seen["outputs"]) > 2
    assert leftovers(target) == []
    assert len([n for n in os.listdir(target) if n.startswith(install.BUNDLE_PREFIX)]) == 2
