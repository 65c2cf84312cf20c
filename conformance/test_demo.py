"""`make demo` (`python -m conformance.demo`): it completes, shows the pings and the VXLAN
packets, and leaves the machine as it was, also when interrupted once its agents run.

"As it was": the machine's own namespace has the same links, addresses, routes, rules,
iptables and nftables rulesets afterwards (counters and timestamps aside), the bind targets
the demo may create are gone again, no namespace of the demo and no process it started is
left. Namespaces of other sandboxes running at the same time on a shared machine come and
go on their own, so only the demo's (`pycni-demo<pid>-...`) are checked there.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from conformance.demo import AGENTS_MARKER
from tests.conftest import IS_ROOT, REPO
from tests.etcdlib import needs_etcd
from tests.multuslib import NODE_MOUNTS

pytestmark = [pytest.mark.conformance, pytest.mark.kernel,
              pytest.mark.skipif(not IS_ROOT, reason="needs root to create network namespaces")]

DEMO_TIMEOUT = 240
MARK = "PYCNI_DEMO_TEST_RUN"      # set for the demo; its processes inherit it
DEMO_NAMESPACE = re.compile(r"pycni-demo\d+-")


def command_output(*argv: str) -> str:
    if shutil.which(argv[0]) is None:
        return f"({argv[0]} not installed)"
    done = subprocess.run(argv, capture_output=True, text=True)
    return done.stdout + done.stderr


def root_state() -> dict[str, str]:
    """What the machine's own namespace holds, without counters and timestamps."""
    iptables = "\n".join(re.sub(r"\[\d+:\d+\]", "", line)
                         for line in command_output("iptables-save").splitlines()
                         if not line.startswith("#"))
    nftables = re.sub(r"counter packets \d+ bytes \d+", "counter",
                      command_output("nft", "list", "ruleset"))
    return {
        "links": command_output("ip", "-o", "link", "show"),
        "addresses": command_output("ip", "-o", "addr", "show"),
        "routes": command_output("ip", "route", "show", "table", "main"),
        "rules": command_output("ip", "rule", "show"),
        "iptables": iptables,
        "nftables": nftables,
        "bind targets": " ".join(f"{path}={os.path.isdir(path)}" for path in NODE_MOUNTS),
    }


def demo_namespaces() -> list[str]:
    listed = command_output("ip", "netns", "list").splitlines()
    return [line.split()[0] for line in listed if DEMO_NAMESPACE.match(line)]


def marked_processes(token: str) -> list[str]:
    """Processes still carrying this run's mark in their environment."""
    needle = f"{MARK}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(f"{entry.name}: {(entry / 'cmdline').read_bytes()!r}")
        except OSError:
            continue                         # gone meanwhile
    return found


def start_demo(*args: str) -> tuple[subprocess.Popen[str], str]:
    token = uuid.uuid4().hex
    process = subprocess.Popen([sys.executable, "-m", "conformance.demo", *args], cwd=REPO,
                               env={**os.environ, MARK: token}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return process, token


def assert_left_as_it_was(before: dict[str, str], token: str, output: str) -> None:
    after = root_state()
    for key, value in before.items():
        assert after[key] == value, f"the root namespace's {key} changed:\n{output}"
    assert demo_namespaces() == [], output
    assert marked_processes(token) == [], output
    for scratch in re.findall(r"(/\S*/pycni-demo-[^/\s]+)/", output):
        assert not Path(scratch).exists(), output


# The etcd store and SIGTERM variants are `make stress`'s (each a whole demo, ~10 s).
@pytest.mark.parametrize("store", [
    "file", pytest.param("etcd", marks=[needs_etcd, pytest.mark.stress])])
def test_demo_pings_shows_vxlan_and_leaves_nothing(built: None, store: str) -> None:
    before = root_state()
    process, token = start_demo("--store", store)
    try:
        output, _ = process.communicate(timeout=DEMO_TIMEOUT)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    assert process.returncode == 0, output
    assert output.count("OK: cross-node ping succeeded") == 2, output
    assert output.count("OK: business network ping succeeded") == 2, output
    assert re.search(r"IP 192\.168\.0\.10\.\d+ > 192\.168\.0\.20\.8472: VXLAN, flags \[I\] "
                     r"\(0x08\), vni 1", output), output
    assert re.search(r"IP 10\.244\.\d+\.2 > 10\.244\.\d+\.2: ICMP echo request", output), output
    assert "net1" in output and "192.168.100.11/" in output, output
    assert "==> teardown complete" in output and "==> demo OK" in output, output
    assert_left_as_it_was(before, token, output)


@pytest.mark.parametrize("how", ["ctrl-c", pytest.param("sigterm", marks=pytest.mark.stress)])
def test_interrupted_demo_tears_everything_down(built: None, how: str) -> None:
    """Ctrl-C reaches the demo and everything it started (its process group); SIGTERM only
    the demo, which must then stop its agents itself."""
    before = root_state()
    process, token = start_demo()
    lines: list[str] = []
    agents_running = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if line.strip() == AGENTS_MARKER:
                agents_running.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert agents_running.wait(DEMO_TIMEOUT), "".join(lines)
        if how == "ctrl-c":
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGTERM)
        process.wait(DEMO_TIMEOUT)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    reader.join(10)
    output = "".join(lines)

    expected = signal.SIGINT if how == "ctrl-c" else signal.SIGTERM
    assert process.returncode == 128 + expected, output
    assert f"==> interrupted ({expected.name})" in output, output
    assert "==> teardown complete" in output, output
    assert_left_as_it_was(before, token, output)
