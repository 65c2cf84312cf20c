"""Kubernetes as the subnet store, as flanneld's kube subnet manager uses it.

The node's subnet is its `spec.podCIDR` (and `spec.podCIDRs` under dual stack), given by the
controller manager; the agent only publishes its attributes as node annotations and reports
the network up through the node's NetworkUnavailable condition. Peers are the nodes carrying
flannel's annotations, followed by a watch that keeps an in-memory copy of every node.

The `kubernetes` client is imported when a store is made: only the agent needs it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from pycni.plugins.flannel.lease import Lease, LeaseAttrs
from pycni.plugins.flannel.netconf import NetworkConfig
from pycni.plugins.flannel.store.base import StoreError, StoreUnavailable, SubnetStore

PREFIX = "flannel.alpha.coreos.com"
BACKEND_TYPE = f"{PREFIX}/backend-type"
BACKEND_DATA = f"{PREFIX}/backend-data"
BACKEND_V6_DATA = f"{PREFIX}/backend-v6-data"
PUBLIC_IP = f"{PREFIX}/public-ip"
PUBLIC_IPV6 = f"{PREFIX}/public-ipv6"
PUBLIC_IP_OVERWRITE = f"{PREFIX}/public-ip-overwrite"
PUBLIC_IPV6_OVERWRITE = f"{PREFIX}/public-ipv6-overwrite"
KUBE_SUBNET_MANAGER = f"{PREFIX}/kube-subnet-manager"

log = logging.getLogger("pycni.flannel")
T = TypeVar("T")
Node = dict[str, Any]


def encode(data: Any) -> str:
    """JSON as Go's encoder writes it (no spaces), so annotations read like flanneld's."""
    return json.dumps(data, separators=(",", ":"))


def pod_cidrs(node: Node) -> tuple[ipaddress.IPv4Network | None, ipaddress.IPv6Network | None]:
    """The node's IPv4 and IPv6 pod subnets; ValueError for anything malformed."""
    spec = node.get("spec") or {}
    texts = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    if len(texts) > 2:
        raise ValueError(f"podCIDRs {texts} are neither single nor dual stack")
    subnet: ipaddress.IPv4Network | None = None
    subnet6: ipaddress.IPv6Network | None = None
    for text in texts:
        network = ipaddress.ip_network(str(text), strict=False)
        if isinstance(network, ipaddress.IPv4Network):
            subnet = network
        else:
            subnet6 = network
    return subnet, subnet6


def annotations_of(node: Node) -> dict[str, str]:
    return dict((node.get("metadata") or {}).get("annotations") or {})


def node_name_of(node: Node) -> str:
    return str((node.get("metadata") or {}).get("name", ""))


class KubeStore(SubnetStore):
    """Subnets from Kubernetes nodes.

    `kubeconfig`: a kubeconfig file; None: the in-cluster service account. `podcidr_wait`:
    how long acquire_lease waits for the controller manager to give the node a podCIDR.
    `request_timeout`: per API call. `retry_min`/`retry_max`: the watch's reconnection
    backoff. `set_network_condition`: report NetworkUnavailable=False (flanneld's default).
    """

    def __init__(self, node_name: str, config: NetworkConfig, kubeconfig: str | None = None,
                 *, podcidr_wait: float = 60.0, request_timeout: float = 10.0,
                 watch_timeout: int = 300, retry_min: float = 0.5, retry_max: float = 10.0,
                 set_network_condition: bool = True) -> None:
        if not config.enable_ipv4:
            raise StoreError("IPv6-only networks are not supported by the Kubernetes store")
        self.node_name = node_name
        self.config = config
        self.podcidr_wait = podcidr_wait
        self.request_timeout = request_timeout
        self.watch_timeout = watch_timeout
        self.retry_min, self.retry_max = retry_min, retry_max
        self.set_network_condition = set_network_condition
        self._connect(kubeconfig)

        self._changed = threading.Condition()
        self._nodes: dict[str, Node] = {}       # the watch's copy, by name
        self._resource_version: str | None = None
        self._live = False                      # the copy is current and the watch running
        self._generation = 0                    # bumped when the leases may have changed
        self._delivered = 0                     # the generation the caller last saw
        self._stopping = threading.Event()
        self._response: Any = None              # the open watch response, to cut on close
        self._watcher = threading.Thread(target=self._watch_loop, daemon=True,
                                         name=f"kube-store-watch-{node_name}")
        self._watcher.start()

    def _connect(self, kubeconfig: str | None) -> None:
        import kubernetes.client
        import kubernetes.config
        from kubernetes.config.config_exception import ConfigException

        kube: Any = kubernetes     # parts of the client are not annotated
        configuration = kube.client.Configuration()
        try:
            if kubeconfig:
                kube.config.load_kube_config(config_file=kubeconfig,
                                             client_configuration=configuration)
            else:
                kube.config.load_incluster_config(client_configuration=configuration)
        except (ConfigException, OSError, ValueError) as exc:
            where = f"kubeconfig {kubeconfig!r}" if kubeconfig else "in-cluster configuration"
            raise StoreError(f"cannot load the Kubernetes {where}: {exc}") from None
        configuration.retries = 1       # our own loops retry; a dead API must fail fast
        self.server = str(configuration.host)
        self._api_client: Any = kube.client.ApiClient(configuration)
        self._core: Any = kube.client.CoreV1Api(self._api_client)

    # Calls --------------------------------------------------------------------------------

    def _call(self, what: str, request: Callable[[], T]) -> T:
        """Run one API request; StoreUnavailable when the API cannot answer now."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        try:
            return request()
        except ApiException as exc:
            if exc.status in (0, 429) or (exc.status or 0) >= 500:
                raise StoreUnavailable(f"Kubernetes API {self.server} failed {what}: "
                                       f"{exc.status} {exc.reason}") from None
            raise StoreError(f"Kubernetes API {self.server} refused {what}: {exc.status} "
                             f"{_status_message(exc)}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StoreUnavailable(f"Kubernetes API {self.server} is unreachable "
                                   f"({what}): {_reason(exc)}") from None

    def _json(self, response: Any) -> Any:
        try:
            return json.loads(response.data)
        finally:
            response.release_conn()

    def _timeout(self) -> tuple[float, float]:
        return (self.request_timeout, self.request_timeout)

    def _get_node(self) -> Node | None:
        from kubernetes.client.exceptions import ApiException

        def read() -> Node | None:
            try:
                response = self._core.read_node(self.node_name, _preload_content=False,
                                                _request_timeout=self._timeout())
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            node: Node = self._json(response)
            return node

        return self._call(f"reading node {self.node_name!r}", read)

    def _list_nodes(self) -> tuple[list[Node], str]:
        data = self._call("listing nodes", lambda: self._json(self._core.list_node(
            _preload_content=False, _request_timeout=self._timeout())))
        return list(data.get("items") or []), str(data["metadata"]["resourceVersion"])

    # The lease -----------------------------------------------------------------------------

    def network_config(self) -> NetworkConfig:
        return self.config

    def acquire_lease(self, attrs: LeaseAttrs, previous: Lease | None = None) -> Lease:
        """The node's podCIDR, waited for up to `podcidr_wait`; `previous` plays no part (the
        controller manager chooses). Publishes `attrs` as flanneld's annotations."""
        deadline = time.monotonic() + self.podcidr_wait
        while True:
            node = self._get_node()
            subnets = pod_cidrs_checked(node, self.node_name) if node else (None, None)
            missing = node is None or subnets[0] is None or (
                self.config.enable_ipv6 and subnets[1] is None)
            if not missing:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                what = "does not exist" if node is None else (
                    "has no podCIDR" + (" of each family" if self.config.enable_ipv6 else ""))
                raise StoreError(f"node {self.node_name!r} {what} after {self.podcidr_wait:g}s "
                                 f"(Kubernetes API {self.server})")
            log.info("node %r has no podCIDR yet; waiting", self.node_name)
            if self._stopping.wait(min(1.0, remaining)):
                raise StoreError("the store is closed")
        assert node is not None
        subnet, subnet6 = subnets
        self._check_in_network(subnet, subnet6)
        attrs = self._publish(node, attrs)
        if self.set_network_condition:
            self._report_network_up()
        return Lease(subnet=subnet, attrs=attrs,
                     ipv6_subnet=subnet6 if self.config.enable_ipv6 else None, expiration=None)

    def _check_in_network(self, subnet: ipaddress.IPv4Network | None,
                          subnet6: ipaddress.IPv6Network | None) -> None:
        network, network6 = self.config.network, self.config.ipv6_network
        if subnet is not None and network is not None and not subnet.subnet_of(network):
            raise StoreError(f"node {self.node_name!r} podCIDR {subnet} is not in the flannel "
                             f"Network {network}")
        if self.config.enable_ipv6 and subnet6 is not None and network6 is not None and \
                not subnet6.subnet_of(network6):
            raise StoreError(f"node {self.node_name!r} IPv6 podCIDR {subnet6} is not in the "
                             f"flannel IPv6Network {network6}")

    def _wanted_annotations(self, node: Node, attrs: LeaseAttrs) -> tuple[dict[str, str],
                                                                          LeaseAttrs]:
        """flanneld's annotations for `attrs`, honouring the public-ip overwrite annotations
        (an operator's choice of address); the attributes as published."""
        current = annotations_of(node)
        public_ip = current.get(PUBLIC_IP_OVERWRITE) or attrs.public_ip
        wanted = {BACKEND_TYPE: attrs.backend_type, BACKEND_DATA: encode(attrs.backend_data),
                  PUBLIC_IP: public_ip, KUBE_SUBNET_MANAGER: "true"}
        public_ipv6 = (current.get(PUBLIC_IPV6_OVERWRITE) or attrs.public_ipv6
                       if attrs.public_ipv6 else None)
        if public_ipv6:
            wanted[PUBLIC_IPV6] = public_ipv6
        if attrs.backend_v6_data is not None:
            wanted[BACKEND_V6_DATA] = encode(attrs.backend_v6_data)
        return wanted, replace(attrs, public_ip=public_ip, public_ipv6=public_ipv6)

    def _publish(self, node: Node, attrs: LeaseAttrs) -> LeaseAttrs:
        wanted, published = self._wanted_annotations(node, attrs)
        current = annotations_of(node)
        stale = {key: value for key, value in wanted.items()
                 if not _same_annotation(key, current.get(key), value)}
        if stale:
            log.info("annotating node %r: %s", self.node_name, ", ".join(sorted(stale)))
            # Through the status subresource, as flanneld: its role needs `nodes/status`
            # patch only, never the right to change any node's spec, labels or taints.
            self._call(f"annotating node {self.node_name!r}", lambda: self._json(
                self._core.patch_node_status(
                    self.node_name, {"metadata": {"annotations": stale}},
                    _preload_content=False, _request_timeout=self._timeout())))
        return published

    def _report_network_up(self) -> None:
        """NetworkUnavailable=False through the status subresource (a strategic merge keyed
        on the condition type, so the kubelet's conditions stay)."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        condition = {"type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp",
                     "message": "Flannel is running on this node", "lastTransitionTime": now,
                     "lastHeartbeatTime": now}
        self._call(f"setting the network condition of node {self.node_name!r}",
                   lambda: self._json(self._core.patch_node_status(
                       self.node_name, {"status": {"conditions": [condition]}},
                       _content_type="application/strategic-merge-patch+json",
                       _preload_content=False, _request_timeout=self._timeout())))

    def renew_lease(self, lease: Lease) -> Lease:
        """Nothing expires; the annotations are put back if someone removed them. StoreError
        when the node is gone or its podCIDR is no longer the lease's subnet."""
        node = self._get_node()
        if node is None:
            raise StoreError(f"node {self.node_name!r} no longer exists")
        subnet, subnet6 = pod_cidrs_checked(node, self.node_name)
        if subnet != lease.subnet or (lease.ipv6_subnet is not None
                                      and subnet6 != lease.ipv6_subnet):
            raise StoreError(f"node {self.node_name!r} podCIDR is now {subnet}, "
                             f"not the leased {lease.subnet}")
        self._publish(node, lease.attrs)
        return lease

    # Peers -----------------------------------------------------------------------------------

    def node_lease(self, node: Node) -> Lease | None:
        """The lease a node's annotations and podCIDRs describe; None for nodes flannel does
        not manage (yet) or whose annotations are unusable."""
        current = annotations_of(node)
        if current.get(KUBE_SUBNET_MANAGER) != "true":
            return None
        try:
            subnet, subnet6 = pod_cidrs(node)
            if subnet is None:
                return None
            backend_data = json.loads(current.get(BACKEND_DATA) or "{}") or {}
            v6_text = current.get(BACKEND_V6_DATA)
            v6_data = json.loads(v6_text) if v6_text else None
            if not isinstance(backend_data, dict):
                raise ValueError("backend-data is not an object")
            public_ipv6 = current.get(PUBLIC_IPV6) or None
            attrs = LeaseAttrs(
                public_ip=str(ipaddress.IPv4Address(current.get(PUBLIC_IP, ""))),
                backend_type=current.get(BACKEND_TYPE, ""),
                backend_data=backend_data,
                public_ipv6=str(ipaddress.IPv6Address(public_ipv6)) if public_ipv6 else None,
                backend_v6_data=v6_data if isinstance(v6_data, dict) else None)
        except ValueError as exc:
            log.warning("ignoring node %r: %s", node_name_of(node), exc)
            return None
        if not attrs.backend_type:
            return None
        return Lease(subnet=subnet, attrs=attrs,
                     ipv6_subnet=subnet6 if self.config.enable_ipv6 else None, expiration=None)

    def _leases_of(self, nodes: list[Node]) -> list[Lease]:
        found = (self.node_lease(node) for node in nodes)
        return sorted((lease for lease in found if lease is not None), key=lambda x: x.key)

    def leases(self) -> list[Lease]:
        """From the watch's copy while it is current; straight from the API otherwise (so an
        unreachable API is StoreUnavailable, not stale data)."""
        with self._changed:
            if self._live:
                self._delivered = self._generation
                return self._leases_of(list(self._nodes.values()))
        nodes, _ = self._list_nodes()
        return self._leases_of(nodes)

    def wait_for_change(self, timeout: float) -> bool:
        """True on a lease change by any node, and when the API is lost or found again."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._generation == self._delivered:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping.is_set():
                    return False
                self._changed.wait(remaining)
            self._delivered = self._generation
            return True

    def wait_until_synced(self, timeout: float) -> bool:
        """Block until the watch holds a current copy of the nodes (or `timeout` passes)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._live:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    # The watch ---------------------------------------------------------------------------------

    def _set_live(self, live: bool) -> None:
        """Under the lock."""
        if live != self._live:
            self._live = live
            self._generation += 1
            self._changed.notify_all()

    def _watch_loop(self) -> None:
        """List, then watch from the list's resourceVersion. A watch the server ends resumes
        from the last version seen (or lists again if that is too old); after a failure the
        loop lists again, backing off while the API is unreachable."""
        backoff = self.retry_min
        while not self._stopping.is_set():
            try:
                if self._resource_version is None:
                    self._relist()
                self._follow()
                backoff = self.retry_min
            except _Gone:
                log.info("node watch expired; listing again")
                self._resource_version = None
            except Exception as exc:   # the watcher must outlive any surprise, and say so
                # List again after a failure, as client-go's reflector does: a resumed
                # watch would show the copy as current before it has caught up.
                self._resource_version = None
                self._lost(str(exc) if isinstance(exc, StoreError)
                           else f"node watch failed: {exc!r}")
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, self.retry_max)

    def _lost(self, reason: str) -> None:
        if self._stopping.is_set():
            return
        with self._changed:
            if self._live:
                log.warning("%s", reason)
            self._set_live(False)

    def _relist(self) -> None:
        nodes, version = self._list_nodes()
        with self._changed:
            before = self._leases_of(list(self._nodes.values()))
            self._nodes = {node_name_of(node): node for node in nodes}
            self._resource_version = version
            if self._leases_of(nodes) != before:
                self._generation += 1
                self._changed.notify_all()

    def _follow(self) -> None:
        """One watch request, until the server ends it (timeoutSeconds) or it breaks."""
        def open_watch() -> Any:
            return self._core.list_node(
                watch=True, resource_version=self._resource_version,
                timeout_seconds=self.watch_timeout, allow_watch_bookmarks=True,
                _preload_content=False,
                _request_timeout=(self.request_timeout, self.watch_timeout + self.request_timeout))

        response = self._call("watching nodes", open_watch)
        self._response = response
        try:
            if self._stopping.is_set():
                return
            with self._changed:
                self._set_live(True)
            self._call("watching nodes", lambda: self._read_events(response))
        finally:
            self._response = None
            response.release_conn()

    def _read_events(self, response: Any) -> None:
        buffer = b""
        for chunk in response.stream(amt=None, decode_content=True):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    self._apply(json.loads(line))
            if self._stopping.is_set():
                return

    def _apply(self, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Gone()
            raise StoreUnavailable(f"Kubernetes API {self.server} ended the node watch: "
                                   f"{obj.get('code')} {obj.get('message')}")
        version = (obj.get("metadata") or {}).get("resourceVersion")
        with self._changed:
            if version:
                self._resource_version = str(version)
            if kind == "BOOKMARK":
                return
            name = node_name_of(obj)
            old = self._nodes.get(name)
            if kind == "DELETED":
                self._nodes.pop(name, None)
                new_lease = None
            else:
                self._nodes[name] = obj
                new_lease = self.node_lease(obj)
            if (self.node_lease(old) if old else None) != new_lease:
                self._generation += 1
                self._changed.notify_all()

    def close(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        response = self._response
        if response is not None:
            # Wakes the watcher blocked on a quiet stream.
            shutdown = getattr(response, "shutdown", None)
            if shutdown is not None:
                shutdown()
        with self._changed:
            self._changed.notify_all()
        self._watcher.join(self.request_timeout + 1)
        self._api_client.close()


class _Gone(Exception):
    """The watch's resourceVersion is older than the API keeps: list again."""


def pod_cidrs_checked(node: Node, name: str) -> tuple[ipaddress.IPv4Network | None,
                                                       ipaddress.IPv6Network | None]:
    try:
        return pod_cidrs(node)
    except ValueError as exc:
        raise StoreError(f"node {name!r} has unusable podCIDRs: {exc}") from None


def _same_annotation(key: str, current: str | None, wanted: str) -> bool:
    """Backend data compares as JSON: flanneld's spacing or key order is no reason to
    rewrite it."""
    if current is None:
        return False
    if key in (BACKEND_DATA, BACKEND_V6_DATA):
        try:
            return bool(json.loads(current) == json.loads(wanted))
        except ValueError:
            return False
    return current == wanted


def _status_message(exc: Any) -> str:
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


def _reason(exc: BaseException) -> str:
    """The innermost cause of a urllib3 error (`Connection refused`), not its retry wrapper."""
    reason: object = getattr(exc, "reason", None)
    while isinstance(reason, BaseException):
        inner = getattr(reason, "reason", None)
        if inner is None:
            break
        reason = inner
    return str(reason or exc)
