"""Health and metrics of the node agent: `/healthz`, `/readyz` and `/metrics` over HTTP.

`--healthz-port` (0, the default, as flanneld: off) turns them on. The agent reports to a
`Monitor` in any case; without the port that is the base class, which keeps nothing, and
neither prometheus_client nor http.server is imported: the agent starts as fast as before.

- `/healthz`: 200 while the main loop beats (once a second at least, also while it waits for
  the store at start); 503 once no beat came for 3 resync intervals: a wedged agent, which a
  liveness probe should restart.
- `/readyz`: 200 once the subnet is leased, the peers programmed by a first full pass and
  `subnet.env` written (pods can start); else 503 with what is missing.
- `/metrics`: the Prometheus text format, from a registry of our own (the agent's metrics and
  the process's CPU, memory and descriptors; nothing from the library's global registry).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from http.server import ThreadingHTTPServer

    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from pycni.plugins.flannel.lease import Lease

STALE_RESYNC_INTERVALS = 3
KINDS = ("route", "fdb", "neigh")
# where errors are counted: the start's store reads, the running loop's steps, kernel refusals
STAGES = ("config", "lease", "renew", "leases", "watch", "program")
# a pass takes milliseconds for a few peers and ~10 s for 10,000 (docs/plugins/flannel.md)
PROGRAMMING_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                       20.0, 40.0)


class Health:
    """Liveness and readiness, fed by the agent's main thread, read by the HTTP threads
    (each field is written whole, so readers need no lock)."""

    def __init__(self, stale_after: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_after = stale_after
        self.clock = clock
        self.last_heartbeat = clock()
        self.leased = False
        self.programmed = False
        self.subnet_env_written = False

    def heartbeat(self) -> None:
        self.last_heartbeat = self.clock()

    def live(self) -> tuple[bool, str]:
        silent = self.clock() - self.last_heartbeat
        if silent > self.stale_after:
            return False, (f"main loop stalled: no heartbeat for {silent:.0f} s "
                           f"(limit {self.stale_after:.0f} s)")
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        live, reason = self.live()
        if not live:
            return False, reason
        if not self.leased:
            return False, "no subnet lease yet"
        if not self.programmed:
            return False, "peers not programmed yet (first full pass)"
        if not self.subnet_env_written:
            return False, "subnet.env not written yet"
        return True, "ok"


class Metrics:
    """The agent's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            ProcessCollector,
            disable_created_metrics,
        )

        # `*_created` series double every counter's lines for a value nobody graphs; this
        # switch is process-wide, and the agent is the only user in its process.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry: CollectorRegistry = CollectorRegistry()
        ProcessCollector(registry=self.registry)      # reads /proc/self at scrape time
        registry = self.registry
        self.lease_info: Gauge = Gauge(
            "pycni_flannel_lease_info", "The subnet this node holds (value 1).",
            ["subnet", "backend"], registry=registry)
        self.lease_expiration: Gauge = Gauge(
            "pycni_flannel_lease_expiration_timestamp_seconds",
            "When the lease expires unless renewed (Unix time; 0: never, Kubernetes store).",
            registry=registry)
        self.peers: Gauge = Gauge(
            "pycni_flannel_peers", "Peers whose subnets are programmed.", registry=registry)
        self.programming_seconds: Histogram = Histogram(
            "pycni_flannel_programming_seconds",
            "Time of a programming pass: leases diffed and the changes applied.",
            buckets=PROGRAMMING_BUCKETS, registry=registry)
        self.programmed: Counter = Counter(
            "pycni_flannel_programmed_total",
            "Kernel entries written or deleted by programming passes.", ["kind"],
            registry=registry)
        self.errors: Counter = Counter(
            "pycni_flannel_errors_total",
            "Errors: store failures by step, kernel refusals (program).", ["stage"],
            registry=registry)
        self.resyncs: Counter = Counter(
            "pycni_flannel_resyncs_total",
            "Full programming passes (at start and every --resync-interval).",
            registry=registry)
        for kind in KINDS:          # present at 0 from the first scrape
            self.programmed.labels(kind)
        for stage in STAGES:
            self.errors.labels(stage)

    def exposition(self) -> tuple[bytes, str]:
        """The metrics as a scrape returns them, and their content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Monitor:
    """What the agent reports about itself. This base keeps nothing (no --healthz-port)."""

    def heartbeat(self) -> None:
        pass

    def leased(self, lease: Lease, backend: str) -> None:
        pass

    def programmed(self, seconds: float, entries: Mapping[str, int], failures: int,
                   peers: int, full: bool) -> None:
        pass

    def subnet_env_written(self) -> None:
        pass

    def error(self, stage: str, count: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class Recorder(Monitor):
    """Keeps `Health` and `Metrics` up to date; `serve_on` puts them on HTTP."""

    def __init__(self, resync_interval: float) -> None:
        self.health = Health(STALE_RESYNC_INTERVALS * resync_interval)
        self.metrics = Metrics()
        self.server: ThreadingHTTPServer | None = None

    def serve_on(self, host: str, port: int) -> None:
        self.server = serve(host, port, self.health, self.metrics)

    def heartbeat(self) -> None:
        self.health.heartbeat()

    def leased(self, lease: Lease, backend: str) -> None:
        self.metrics.lease_info.clear()
        self.metrics.lease_info.labels(str(lease.subnet), backend).set(1)
        self.metrics.lease_expiration.set(lease.expiration or 0)
        self.health.leased = True

    def programmed(self, seconds: float, entries: Mapping[str, int], failures: int,
                   peers: int, full: bool) -> None:
        self.metrics.programming_seconds.observe(seconds)
        for kind, count in entries.items():
            self.metrics.programmed.labels(kind).inc(count)
        if failures:
            self.metrics.errors.labels("program").inc(failures)
        self.metrics.peers.set(peers)
        if full:
            self.metrics.resyncs.inc()
            self.health.programmed = True

    def subnet_env_written(self) -> None:
        self.health.subnet_env_written = True

    def error(self, stage: str, count: int = 1) -> None:
        self.metrics.errors.labels(stage).inc(count)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def serve(host: str, port: int, health: Health, metrics: Metrics) -> ThreadingHTTPServer:
    """Answer GET /healthz, /readyz and /metrics on (host, port) from a daemon thread;
    OSError when the address cannot be bound."""
    import socketserver
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            content_type = "text/plain; charset=utf-8"
            if path == "/healthz":
                ok, text = health.live()
                status, body = (200 if ok else 503), f"{text}\n".encode()
            elif path == "/readyz":
                ok, text = health.ready()
                status, body = (200 if ok else 503), f"{text}\n".encode()
            elif path == "/metrics":
                status = 200
                body, content_type = metrics.exposition()
            else:
                status, body = 404, b"not found: try /healthz, /readyz or /metrics\n"
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Silent: probes every few seconds would bury the agent's own log."""

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        def server_bind(self) -> None:
            """Bind without HTTPServer's reverse lookup of the address (a DNS query at start,
            for a name nobody reads)."""
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = host, int(self.server_address[1])

    server = Server((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="healthz", daemon=True).start()
    return server


def create(host: str, port: int, resync_interval: float) -> Monitor:
    """The agent's monitor: serving on (host, port), or, for port 0, the one that keeps
    nothing (and imports nothing)."""
    if not port:
        return Monitor()
    recorder = Recorder(resync_interval)
    recorder.serve_on(host, port)
    return recorder
