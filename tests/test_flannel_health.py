"""The agent's health and metrics: the state machine and the metrics without a network, then
`/healthz`, `/readyz` and `/metrics` of a running agent inside a sandbox node."""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pycni.plugins.flannel import health
from pycni.plugins.flannel.lease import Lease, LeaseAttrs

from tests.conftest import NetnsFactory
from tests.flannelcluster import Cluster, Node, wait_for

SUBNET = ipaddress.IPv4Network("10.244.3.0/24")
VXLAN_NET_CONF = json.loads((Path(__file__).parent / "seeds" / "net-conf.vxlan.json").read_text())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the state machine ----------------------------------------------------------------------

def test_ready_once_leased_programmed_and_subnet_env_written() -> None:
    clock = Clock()
    state = health.Health(stale_after=90, clock=clock)
    assert state.live() == (True, "ok")
    assert state.ready() == (False, "no subnet lease yet")
    state.leased = True
    assert state.ready() == (False, "peers not programmed yet (first full pass)")
    state.programmed = True
    assert state.ready() == (False, "subnet.env not written yet")
    state.subnet_env_written = True
    assert state.ready() == (True, "ok")


def test_stale_heartbeat_fails_liveness_and_readiness_until_the_loop_beats_again() -> None:
    clock = Clock()
    state = health.Health(stale_after=90, clock=clock)
    state.leased = state.programmed = state.subnet_env_written = True
    clock.now += 90
    assert state.live() == (True, "ok")           # at the limit: still alive
    clock.now += 1
    live, reason = state.live()
    assert not live and reason == "main loop stalled: no heartbeat for 91 s (limit 90 s)"
    assert state.ready() == (False, reason)
    state.heartbeat()
    assert state.live() == (True, "ok") and state.ready() == (True, "ok")


def test_recorder_follows_the_agent_reports() -> None:
    recorder = health.Recorder(resync_interval=30)
    assert recorder.health.stale_after == 90
    assert recorder.server is None                 # nothing served: no socket in this test
    metrics = recorder.metrics
    value = metrics.registry.get_sample_value
    lease = Lease(SUBNET, LeaseAttrs("192.168.0.10", "vxlan"), expiration=1_800_000_000.5)
    recorder.leased(lease, "vxlan")
    assert recorder.health.leased and not recorder.health.programmed
    recorder.programmed(0.02, {"route": 2, "neigh": 2, "fdb": 2}, 0, 2, full=True)
    recorder.programmed(0.003, {"route": 1, "neigh": 1, "fdb": 1}, 1, 1, full=False)
    recorder.error("watch")
    recorder.subnet_env_written()
    assert recorder.health.ready() == (True, "ok")
    assert value("pycni_flannel_lease_info",
                 {"subnet": "10.244.3.0/24", "backend": "vxlan"}) == 1
    assert value("pycni_flannel_lease_expiration_timestamp_seconds") == 1_800_000_000.5
    assert value("pycni_flannel_peers") == 1
    assert value("pycni_flannel_programming_seconds_count") == 2
    assert value("pycni_flannel_programming_seconds_sum") == pytest.approx(0.023)
    assert value("pycni_flannel_programmed_total", {"kind": "route"}) == 3
    assert value("pycni_flannel_programmed_total", {"kind": "fdb"}) == 3
    assert value("pycni_flannel_errors_total", {"stage": "program"}) == 1
    assert value("pycni_flannel_errors_total", {"stage": "watch"}) == 1
    assert value("pycni_flannel_errors_total", {"stage": "renew"}) == 0
    assert value("pycni_flannel_resyncs_total") == 1
    # a new lease replaces the info series instead of adding one
    moved = Lease(ipaddress.IPv4Network("10.244.4.0/24"), lease.attrs)
    recorder.leased(moved, "vxlan")
    assert value("pycni_flannel_lease_info",
                 {"subnet": "10.244.3.0/24", "backend": "vxlan"}) is None
    assert value("pycni_flannel_lease_expiration_timestamp_seconds") == 0
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain; version=")
    text = body.decode()
    assert 'pycni_flannel_lease_info{backend="vxlan",subnet="10.244.4.0/24"} 1.0' in text
    assert "_created" not in text
    assert "process_resident_memory_bytes" in text


def test_agent_without_healthz_port_imports_neither_prometheus_nor_http_server() -> None:
    script = (
        "import sys\n"
        "from pycni.plugins.flannel import agent, health\n"
        "options = agent.parse_args([])\n"
        "assert (options.healthz_ip, options.healthz_port) == ('0.0.0.0', 0), options\n"
        "monitor = health.create(options.healthz_ip, options.healthz_port, 30)\n"
        "assert type(monitor) is health.Monitor\n"
        "monitor.heartbeat(); monitor.error('watch'); monitor.close()\n"
        "print(sorted(m for m in ('prometheus_client', 'http.server') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- a running agent in a sandbox node ---------------------------------------------------------

HEALTHZ_PORT = 9898
FETCH = """
import json, sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as answer:
        status, body = answer.status, answer.read().decode()
except urllib.error.HTTPError as error:
    status, body = error.code, error.read().decode()
except OSError as error:
    status, body = 0, str(error)
print(json.dumps([status, body]))
"""


def fetch(node: Node, path: str) -> tuple[int, str]:
    """GET http://<node address>:HEALTHZ_PORT<path> from inside the node's netns."""
    done = node.netns.run(sys.executable, "-c", FETCH,
                          f"http://{node.address}:{HEALTHZ_PORT}{path}", timeout=30)
    status, body = json.loads(done.stdout)
    return int(status), str(body)


def sample(text: str, series: str) -> float | None:
    """The value of one series (`name{labels}` as exposed) in a scrape."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture
def cluster(netns_factory: NetnsFactory, tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(netns_factory, tmp_path / "cluster", VXLAN_NET_CONF, nodes=2)
    try:
        yield made
    finally:
        made.close()


@pytest.mark.kernel
def test_agent_serves_health_readiness_and_metrics(cluster: Cluster) -> None:
    first, second = cluster.nodes
    second.start_agent()
    second.wait_ready()
    # Holding the file store's lock keeps the first agent from leasing: it must answer
    # alive but not ready until the lock goes.
    lock = os.open(cluster.store_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        first.start_agent("--healthz-ip", first.address, "--healthz-port", str(HEALTHZ_PORT))

        def serving() -> tuple[int, str] | None:
            answer = fetch(first, "/healthz")
            return answer if answer[0] else None
        assert wait_for(serving, 20, 0.2) == (200, "ok\n"), first.agent_log.read_text()
        assert fetch(first, "/readyz") == (503, "no subnet lease yet\n")
        assert not first.subnet_file.exists()
    finally:
        os.close(lock)
    assert wait_for(lambda: fetch(first, "/readyz") == (200, "ok\n"), 20, 0.2), \
        (fetch(first, "/readyz"), first.agent_log.read_text())
    assert first.subnet_file.exists()
    assert fetch(first, "/healthz") == (200, "ok\n")
    assert fetch(first, "/nowhere")[0] == 404
    status, text = fetch(first, "/metrics")
    assert status == 200
    peers = len(cluster.nodes) - 1
    assert sample(text, "pycni_flannel_peers") == peers
    assert sample(text, f'pycni_flannel_lease_info{{backend="vxlan",subnet="{first.subnet()}"}}') \
        == 1
    assert (sample(text, "pycni_flannel_lease_expiration_timestamp_seconds") or 0) > 0
    for stage in health.STAGES:
        assert sample(text, f'pycni_flannel_errors_total{{stage="{stage}"}}') is not None, text
    assert sample(text, 'pycni_flannel_errors_total{stage="program"}') == 0
    for kind in health.KINDS:   # the first full pass wrote one route, neighbour, FDB entry
        assert (sample(text, f'pycni_flannel_programmed_total{{kind="{kind}"}}') or 0) >= peers
    assert (sample(text, "pycni_flannel_resyncs_total") or 0) >= 1
    assert (sample(text, "pycni_flannel_programming_seconds_count") or 0) >= 1
    # only the node with the port set serves
    assert fetch(second, "/healthz")[0] == 0
    assert first.stop_agent() == 0
