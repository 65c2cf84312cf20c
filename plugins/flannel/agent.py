"""The flannel node agent: `pycni flanneld [options]`, long-running, one per node.

Start: read the network's configuration, pick the underlay, set up the backend (keeping the
VXLAN MAC of an earlier run), lease the node's subnet (keeping an earlier lease), write the
firewall rules and `subnet.env`. Then follow the store: every change of the leases is
programmed within a second, the lease is renewed before it expires, the kernel is fully
resynchronised now and then. When the store is away the data plane stays as it is.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from pycni.plugins.flannel import backend as backends
from pycni.plugins.flannel import health, masquerade, netconf, subnet_env, underlay
from pycni.plugins.flannel.lease import Lease
from pycni.plugins.flannel.store.base import (
    DEFAULT_TTL,
    StoreError,
    StoreUnavailable,
    SubnetStore,
)

from pycni import log as logs
from pycni.errors import CNIError

DEFAULT_STORE_DIR = "/var/lib/pycni/flannel"
BRIDGE = "cni0"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pycni flanneld", description="flannel node agent: lease this node's pod subnet, "
        "program routes to every peer, write subnet.env for the flannel CNI plugin")
    env = os.environ.get
    parser.add_argument("--iface", action="append", default=[],
                        help="underlay interface name or address (repeatable)")
    parser.add_argument("--iface-regex", action="append", default=[],
                        help="regex matched against interface names and addresses")
    parser.add_argument("--public-ip", default=env("FLANNELD_PUBLIC_IP"),
                        help="address advertised to peers")
    parser.add_argument("--net-config-path", default=netconf.DEFAULT_PATH,
                        help="net-conf.json (kube and file stores)")
    parser.add_argument("--subnet-file", default=subnet_env.DEFAULT_PATH)
    parser.add_argument("--ip-masq", action="store_true",
                        help="masquerade pod traffic leaving the cluster network")
    parser.add_argument("--etcd-endpoints", default=env("FLANNELD_ETCD_ENDPOINTS"),
                        help="comma-separated etcd URLs: use the etcd store")
    parser.add_argument("--etcd-prefix", default="/coreos.com/network")
    parser.add_argument("--etcd-cafile")
    parser.add_argument("--etcd-certfile")
    parser.add_argument("--etcd-keyfile")
    parser.add_argument("--kube-subnet-mgr", action="store_true",
                        help="use the Kubernetes API (node podCIDR and annotations)")
    parser.add_argument("--kubeconfig-file", default=None)
    parser.add_argument("--node-name", default=env("NODE_NAME") or socket.gethostname())
    parser.add_argument("--store-dir", default=DEFAULT_STORE_DIR,
                        help="file store directory (when neither etcd nor Kubernetes)")
    parser.add_argument("--subnet-lease-renew-margin", type=float, default=60,
                        help="renew the lease this many minutes before it expires")
    parser.add_argument("--lease-ttl", type=float, default=DEFAULT_TTL,
                        help="lease time in seconds (etcd and file stores)")
    parser.add_argument("--resync-interval", type=float, default=30,
                        help="seconds between full resynchronisations of the kernel state")
    parser.add_argument("--healthz-ip", default="0.0.0.0",
                        help="address of the /healthz, /readyz and /metrics server")
    parser.add_argument("--healthz-port", type=int, default=0,
                        help="port of the /healthz, /readyz and /metrics server (0: none)")
    parser.add_argument("--log-level", default=env("PYCNI_LOG_LEVEL") or "INFO")
    return parser.parse_args(argv)


def open_store(options: argparse.Namespace) -> SubnetStore:
    if options.kube_subnet_mgr:
        from pycni.plugins.flannel.store.kube import KubeStore

        return KubeStore(options.node_name, netconf.load(options.net_config_path),
                         options.kubeconfig_file)
    if options.etcd_endpoints:
        from pycni.plugins.flannel.store.etcd import EtcdStore

        return EtcdStore(options.etcd_endpoints.split(","), prefix=options.etcd_prefix,
                         ttl=options.lease_ttl, ca_cert=options.etcd_cafile,
                         cert=options.etcd_certfile, key=options.etcd_keyfile)
    from pycni.plugins.flannel.store.file import FileStore

    config = (netconf.load(options.net_config_path)
              if os.path.exists(options.net_config_path) else None)
    return FileStore(options.store_dir, config=config, ttl=options.lease_ttl)


class Agent:
    def __init__(self, options: argparse.Namespace, store: SubnetStore, log: Any,
                 monitor: health.Monitor | None = None) -> None:
        self.options = options
        self.store = store
        self.log = log
        self.monitor = monitor or health.Monitor()
        self.stop = threading.Event()
        self.lease: Lease | None = None
        self.programmer: backends.Programmer | None = None
        self.backend: backends.Backend | None = None
        self.config: netconf.NetworkConfig | None = None
        self.stats: dict[str, float] = {"syncs": 0, "store_errors": 0, "last_sync_seconds": 0.0}

    # --- start -----------------------------------------------------------------------------

    def start(self, ipr: Any) -> Lease:
        config: netconf.NetworkConfig = self._retry(self.store.network_config,
                                                    "read the network config", "config")
        self.config = config
        found = underlay.find(ipr, self.options.iface, self.options.iface_regex,
                              self.options.public_ip)
        self.log.info("underlay %s, %s, advertising %s", found.name, found.address,
                      found.public_ip)
        self.backend = backend = backends.create(config, found, ipr, self.log)
        previous = self._previous_lease(str(found.public_ip))
        attrs = backend.prepare(previous)
        lease: Lease = self._retry(lambda: self.store.acquire_lease(attrs, previous),
                                   "lease a subnet", "lease")
        self.lease = lease
        self.monitor.leased(lease, backend.type)
        self.log.info("leased %s (%s backend)", lease.key, backend.type)
        backend.configure(lease)
        self._clear_stale_bridge_address(ipr, lease)
        self._write_firewall()
        self.programmer = backends.Programmer(backend, lease)
        self.sync(full=True)
        self._write_subnet_env()
        self.monitor.subnet_env_written()
        return lease

    def _retry(self, action: Any, what: str, stage: str) -> Any:
        """Wait for the store to come up at start (flanneld does the same)."""
        delay = 0.5
        while True:
            self.monitor.heartbeat()     # waiting is alive; a liveness restart would not help
            try:
                return action()
            except StoreUnavailable as exc:
                self.stats["store_errors"] += 1
                self.monitor.error(stage)
                self.log.warning("cannot %s yet: %s", what, exc)
                if self.stop.wait(delay):
                    raise
                delay = min(delay * 2, 5)

    def _previous_lease(self, public_ip: str) -> Lease | None:
        """This node's lease as the store still holds it, else the one subnet.env recorded."""
        try:
            mine = [lease for lease in self.store.leases() if lease.attrs.public_ip == public_ip]
        except StoreUnavailable:
            mine = []
        if mine:
            return mine[0]
        try:
            env = subnet_env.read(self.options.subnet_file)
        except (OSError, ValueError):
            return None
        if env.subnet is None:
            return None
        from pycni.plugins.flannel.lease import LeaseAttrs

        return Lease(env.subnet.network, LeaseAttrs(public_ip, ""))

    def _clear_stale_bridge_address(self, ipr: Any, lease: Lease) -> None:
        """A `cni0` left holding a gateway address of an older subnet would route the new
        subnet's pods wrongly; bridge re-adds the right one at the next pod."""
        from pycni import link as links

        bridge = links.find(ipr, BRIDGE)
        if bridge is None or lease.subnet is None or self.config is None:
            return
        gateway = ipaddress.IPv4Interface(
            f"{lease.subnet.network_address + 1}/{lease.subnet.prefixlen}")
        for held in links.addresses(ipr, bridge.index, socket.AF_INET):
            address = ipaddress.IPv4Interface(held)
            if address != gateway and self.config.network is not None and \
                    address.ip in self.config.network:
                self.log.warning("removing %s from %s: it belongs to an older lease", held,
                                 BRIDGE)
                ipr.addr("del", index=bridge.index, address=str(address.ip),
                         prefixlen=address.network.prefixlen)

    def _write_firewall(self) -> None:
        assert self.config is not None and self.lease is not None
        if self.config.network is not None and self.lease.subnet is not None:
            masquerade.apply(self.config.network, self.lease.subnet, self.options.ip_masq,
                             self.config.enable_nftables)
        if self.config.ipv6_network is not None and self.lease.ipv6_subnet is not None:
            masquerade.apply(self.config.ipv6_network, self.lease.ipv6_subnet,
                             self.options.ip_masq, self.config.enable_nftables)

    def _write_subnet_env(self) -> None:
        assert self.config is not None and self.lease is not None and self.backend is not None
        lease = self.lease
        subnet = (ipaddress.IPv4Interface(f"{lease.subnet.network_address + 1}/"
                                          f"{lease.subnet.prefixlen}") if lease.subnet else None)
        subnet6 = (ipaddress.IPv6Interface(f"{lease.ipv6_subnet.network_address + 1}/"
                                           f"{lease.ipv6_subnet.prefixlen}")
                   if lease.ipv6_subnet else None)
        subnet_env.write(self.options.subnet_file, subnet_env.SubnetEnv(
            network=self.config.network if subnet else None, subnet=subnet,
            ipv6_network=self.config.ipv6_network if subnet6 else None, ipv6_subnet=subnet6,
            mtu=self.backend.mtu, ipmasq=self.options.ip_masq))

    # --- run -------------------------------------------------------------------------------

    def sync(self, full: bool = False) -> None:
        assert self.programmer is not None
        started = time.monotonic()
        leases = self.store.leases()
        programming = time.monotonic()
        stats = self.programmer.sync(leases, full=full)
        done = time.monotonic()
        self.monitor.programmed(done - programming, stats.entries, len(stats.failures),
                                len(self.programmer.programmed), full)
        self.stats["syncs"] += 1
        self.stats["last_sync_seconds"] = done - started
        if stats.added or stats.changed or stats.removed or stats.failures:
            self.log.info("peers: %d programmed (+%d ~%d -%d, %d skipped) in %.3f s",
                          len(self.programmer.programmed), stats.added, stats.changed,
                          stats.removed, stats.skipped, self.stats["last_sync_seconds"])
        for failure in stats.failures:
            self.log.error("peer programming failed: %s", failure)

    def renew_due(self) -> float:
        """Seconds until the lease must be renewed."""
        assert self.lease is not None
        if self.lease.expiration is None:
            return float("inf")
        ttl = float(self.options.lease_ttl)
        margin = min(float(self.options.subnet_lease_renew_margin) * 60, ttl / 2)
        return self.lease.expiration - margin - time.time()

    def run(self) -> None:
        next_resync = time.monotonic() + self.options.resync_interval
        dirty = False
        while not self.stop.is_set():
            self.monitor.heartbeat()
            stage = "renew"
            try:
                if self.renew_due() <= 0:
                    assert self.lease is not None and self.backend is not None
                    self.lease = self.store.renew_lease(self.lease)
                    self.monitor.leased(self.lease, self.backend.type)
                    self.log.info("renewed lease %s", self.lease.key)
                full = time.monotonic() >= next_resync
                if dirty or full:
                    stage = "leases"
                    self.sync(full=full)
                    if full:
                        self._write_firewall()
                        next_resync = time.monotonic() + self.options.resync_interval
                stage = "watch"
                dirty = self.store.wait_for_change(min(1.0, max(0.0, self.renew_due())))
            except StoreUnavailable as exc:
                self.stats["store_errors"] += 1
                self.monitor.error(stage)
                self.log.warning("store unavailable, keeping the data plane: %s", exc)
                dirty = True
                self.stop.wait(1.0)
            except StoreError as exc:
                self.stats["store_errors"] += 1
                self.monitor.error(stage)
                self.log.error("store: %s", exc)
                dirty = True
                self.stop.wait(1.0)


def main(argv: list[str]) -> int:
    options = parse_args(argv)
    log = logs.setup(level=options.log_level)
    from pycni import netns

    try:   # first, so that probes answer (not ready) while the store is awaited
        monitor = health.create(options.healthz_ip, options.healthz_port,
                                options.resync_interval)
    except (OSError, OverflowError) as exc:      # in use, no such address, port > 65535
        log.error("cannot serve health on %s port %d: %s", options.healthz_ip,
                  options.healthz_port, exc)
        return 1
    try:
        store = open_store(options)
    except (StoreError, OSError, ValueError) as exc:
        log.error("cannot open the subnet store: %s", exc)
        monitor.close()
        return 1
    agent = Agent(options, store, log, monitor)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: agent.stop.set())
    ipr = netns.ipr(None)
    try:
        agent.start(ipr)
        agent.run()
    except StoreUnavailable:
        return 1 if not agent.stop.is_set() else 0
    except (StoreError, underlay.UnderlayError, backends.BackendError,
            masquerade.FirewallError, OSError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    except CNIError as exc:  # subnet.env could not be written (a full or read-only /run)
        log.error("%s", exc.msg)
        return 1
    finally:
        store.close()
        ipr.close()
        monitor.close()
    log.info("stopped; routes and devices stay for the next start")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
