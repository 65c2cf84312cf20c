"""A subnet store in etcd v3, in flanneld's layout, so flanneld and this agent share a cluster.

    <prefix>/config                 net-conf JSON, written by the administrator
    <prefix>/subnets/<subnet key>   a node's LeaseAttrs JSON (`{"PublicIP": ...}`), attached to
                                    an etcd lease of `ttl` seconds: etcd deletes it on expiry

The client is etcd3gw, which speaks etcd's JSON gateway over HTTP (no gRPC stack to install).
A subnet is taken by a transaction that creates its key only if absent, so two nodes never
hold one subnet. Changes are noticed by polling the subnets' count and newest revision, one
small request every 0.2 s: unlike a watch stream, it needs no reconnection logic to survive
an etcd restart.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Callable
from ipaddress import IPv4Network
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from pycni.plugins.flannel import netconf
from pycni.plugins.flannel.lease import Lease, LeaseAttrs, parse_subnet_key, subnet_key
from pycni.plugins.flannel.netconf import NetworkConfig
from pycni.plugins.flannel.store.base import (
    DEFAULT_TTL,
    StoreError,
    StoreUnavailable,
    SubnetStore,
    pick_free_subnet,
)

from pycni import log

if TYPE_CHECKING:
    from etcd3gw.client import Etcd3Client

DEFAULT_PREFIX = "/coreos.com/network"
POLL_INTERVAL = 0.2
ACQUIRE_ATTEMPTS = 64        # each failed attempt means another node took a subnet meanwhile
SORT_BY_MOD_REVISION, DESCEND = 3, 2

Fingerprint = tuple[int, int]     # (number of subnet keys, newest mod revision among them)
T = TypeVar("T")


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def _prefix_end(prefix: str) -> str:
    """The range end covering every key that starts with `prefix`."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def encode_attrs(attrs: LeaseAttrs) -> str:
    return json.dumps(attrs.to_json(), separators=(",", ":"))


class _Entry:
    """One key of `<prefix>/subnets/` as a range returned it."""

    __slots__ = ("key", "name", "lease", "lease_id", "mod_revision")

    def __init__(self, key: str, name: str, lease: Lease, lease_id: int,
                 mod_revision: int) -> None:
        self.key, self.name, self.lease = key, name, lease
        self.lease_id, self.mod_revision = lease_id, mod_revision


class EtcdStore(SubnetStore):
    """Leases under `prefix` in the etcd cluster at `endpoints` (`http(s)://host:port`, tried
    in turn); `timeout` bounds each request; `ca_cert`, `cert`, `key` are PEM file paths."""

    def __init__(self, endpoints: list[str], prefix: str = DEFAULT_PREFIX,
                 ttl: float = DEFAULT_TTL, timeout: float = 5.0, ca_cert: str | None = None,
                 cert: str | None = None, key: str | None = None) -> None:
        if not endpoints:
            raise StoreError("no etcd endpoints given")
        self.endpoints = list(endpoints)
        self.prefix = "/" + prefix.strip("/")
        self.config_key = f"{self.prefix}/config"
        self.subnets_prefix = f"{self.prefix}/subnets/"
        self.ttl = max(1, math.ceil(ttl))    # etcd leases count whole seconds
        self.timeout = timeout
        self._tls = (ca_cert, cert, key)
        # Two sets of clients: wait_for_change polls from another thread than the rest.
        self._clients = [self._client(url) for url in self.endpoints]
        self._poll_clients = [self._client(url) for url in self.endpoints]
        self._current = 0
        self._seen: Fingerprint | None = None
        # Leases parsed by the last listing, by their (key, value) as etcd sent them: with
        # thousands of nodes, parsing dominates a listing, and few keys change between two.
        self._parsed: dict[tuple[str, str], tuple[str, Lease] | None] = {}

    def _client(self, url: str) -> Etcd3Client:
        from etcd3gw.client import Etcd3Client

        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise StoreError(f"invalid etcd endpoint {url!r}: expected http(s)://host:port")
        ca_cert, cert, key = self._tls
        return Etcd3Client(host=parts.hostname, port=parts.port or 2379, protocol=parts.scheme,
                           ca_cert=ca_cert, cert_cert=cert, cert_key=key, timeout=self.timeout)

    # -- requests -------------------------------------------------------------------------

    def _call(self, request: Callable[[Etcd3Client], T], poll: bool = False) -> T:
        """Run `request` against the first endpoint that answers, starting from the last
        one that did; StoreUnavailable naming every endpoint when none does."""
        import requests
        from etcd3gw import exceptions

        clients = self._poll_clients if poll else self._clients
        unreachable = (exceptions.ConnectionFailedError, exceptions.ConnectionTimeoutError,
                       exceptions.InternalServerError, requests.RequestException)
        problems: dict[str, str] = {}
        for attempt in range(len(clients) + 1):   # one retry: a pooled connection may be stale
            index = (self._current + attempt) % len(clients)
            try:
                result = request(clients[index])
            except unreachable as exc:
                problems[self.endpoints[index]] = _describe(exc)
                continue
            except exceptions.Etcd3Exception as exc:
                raise StoreError(f"etcd at {self.endpoints[index]} refused the request: "
                                 f"{_describe(exc)}") from None
            except ValueError as exc:
                raise StoreError(f"etcd at {self.endpoints[index]} answered garbage: "
                                 f"{exc}") from None
            self._current = index
            return result
        details = "; ".join(f"{url}: {problem}" for url, problem in problems.items())
        raise StoreUnavailable(f"etcd is unreachable at {', '.join(self.endpoints)} ({details})")

    def _post(self, path: str, payload: dict[str, Any], poll: bool = False) -> dict[str, Any]:
        def request(client: Etcd3Client) -> dict[str, Any]:
            answer = client.post(client.get_url(path), json=payload)
            if not isinstance(answer, dict):
                raise ValueError(f"{path} answered {type(answer).__name__}, not an object")
            return answer

        return self._call(request, poll)

    def _range(self, key: str, range_end: str | None = None, poll: bool = False,
               **options: Any) -> dict[str, Any]:
        payload: dict[str, Any] = {"key": _b64(key), **options}
        if range_end is not None:
            payload["range_end"] = _b64(range_end)
        return self._post("/kv/range", payload, poll)

    def _txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]]) -> bool:
        answer = self._post("/kv/txn", {"compare": compare, "success": success, "failure": []})
        return bool(answer.get("succeeded", False))

    def _grant(self) -> int:
        answer = self._post("/lease/grant", {"TTL": self.ttl, "ID": 0})
        return int(answer["ID"])

    def _keepalive(self, lease_id: int) -> int:
        """The lease's new TTL; 0 or less when etcd no longer has it."""
        answer = self._post("/lease/keepalive", {"ID": lease_id})
        result = answer.get("result", {})
        return int(result.get("TTL", 0)) if isinstance(result, dict) else 0

    def _revoke(self, lease_id: int) -> None:
        """Best effort: an unused lease also goes away by itself after its TTL."""
        try:
            self._post("/kv/lease/revoke", {"ID": lease_id})
        except StoreError as exc:
            log.get().info("flannel etcd store: could not revoke lease %x: %s", lease_id, exc)

    @staticmethod
    def _put(key: str, value: str, lease_id: int) -> dict[str, Any]:
        return {"request_put": {"key": _b64(key), "value": _b64(value), "lease": lease_id}}

    def _entries(self) -> list[_Entry]:
        """Every lease under `subnets/`, in one range request; unreadable keys are logged."""
        answer = self._range(self.subnets_prefix, _prefix_end(self.subnets_prefix))
        entries = []
        newest = 0
        parsed: dict[tuple[str, str], tuple[str, Lease] | None] = {}
        for kv in answer.get("kvs", []):
            mod_revision = int(kv.get("mod_revision", 0))
            newest = max(newest, mod_revision)
            raw = (kv["key"], kv.get("value", ""))
            lease = parsed[raw] = (self._parsed[raw] if raw in self._parsed
                                   else self._parse(*raw))
            if lease is not None:
                key = self.subnets_prefix + lease[0]
                entries.append(_Entry(key, lease[0], lease[1], int(kv.get("lease", 0)),
                                      mod_revision))
        self._parsed = parsed
        self._seen = (len(answer.get("kvs", [])), newest)
        return entries

    def _parse(self, raw_key: str, raw_value: str) -> tuple[str, Lease] | None:
        """A subnet key's name and lease from the range answer's base64 text; None (logged)
        when unreadable."""
        key = base64.b64decode(raw_key).decode(errors="replace")
        name = key[len(self.subnets_prefix):]
        try:
            subnet, ipv6_subnet = parse_subnet_key(name)
            attrs = LeaseAttrs.from_json(json.loads(base64.b64decode(raw_value)))
        except ValueError as exc:   # JSONDecodeError and UnicodeDecodeError included
            log.get().warning("flannel etcd store: skipping %s: %s", key, exc)
            return None
        return name, Lease(subnet, attrs, ipv6_subnet)

    # -- SubnetStore ----------------------------------------------------------------------

    def network_config(self) -> NetworkConfig:
        answer = self._range(self.config_key)
        kvs = answer.get("kvs", [])
        if not kvs:
            raise StoreError(f"no network configuration in etcd ({', '.join(self.endpoints)}):"
                             f" write the net-conf JSON to the key {self.config_key}")
        try:
            return netconf.parse(base64.b64decode(kvs[0].get("value", "")))
        except ValueError as exc:
            raise StoreError(f"etcd key {self.config_key}: {exc}") from None

    def acquire_lease(self, attrs: LeaseAttrs, previous: Lease | None = None) -> Lease:
        config = self.network_config()
        candidates = set(config.candidate_subnets())
        value = encode_attrs(attrs)
        lease_id = self._grant()
        try:
            for _ in range(ACQUIRE_ATTEMPTS):
                entries = self._entries()
                ours = next((e for e in entries if e.lease.attrs.public_ip == attrs.public_ip),
                            None)
                if ours is not None:
                    subnet = ours.lease.subnet
                    valid = subnet in candidates and ours.name == subnet_key(
                        subnet, config.ipv6_subnet_for(subnet))
                    same = [{"key": _b64(ours.key), "target": "MOD", "result": "EQUAL",
                             "mod_revision": ours.mod_revision}]
                    if not valid:   # left from another network configuration
                        self._txn(same, [{"request_delete_range": {"key": _b64(ours.key)}}])
                        continue
                    if self._txn(same, [self._put(ours.key, value, lease_id)]):
                        if ours.lease_id and ours.lease_id != lease_id:
                            self._revoke(ours.lease_id)
                        return self._new_lease(subnet, attrs, config)
                    continue
                taken = [e.lease.subnet for e in entries if e.lease.subnet is not None]
                subnet = pick_free_subnet(config, taken,
                                          previous.subnet if previous is not None else None)
                key = self.subnets_prefix + subnet_key(subnet, config.ipv6_subnet_for(subnet))
                absent = [{"key": _b64(key), "target": "CREATE", "result": "EQUAL",
                           "create_revision": 0}]
                if self._txn(absent, [self._put(key, value, lease_id)]):
                    return self._new_lease(subnet, attrs, config)
        except BaseException:
            self._revoke(lease_id)
            raise
        self._revoke(lease_id)
        raise StoreError(f"could not lease a subnet in etcd: {ACQUIRE_ATTEMPTS} attempts lost "
                         "to other nodes")

    def _new_lease(self, subnet: IPv4Network | None, attrs: LeaseAttrs,
                   config: NetworkConfig) -> Lease:
        return Lease(subnet, attrs, config.ipv6_subnet_for(subnet), time.time() + self.ttl)

    def renew_lease(self, lease: Lease) -> Lease:
        key = self.subnets_prefix + lease.key
        value = encode_attrs(lease.attrs)
        for _ in range(ACQUIRE_ATTEMPTS):
            kvs = self._range(key).get("kvs", [])
            if kvs:
                kv = kvs[0]
                try:
                    holder = LeaseAttrs.from_json(json.loads(base64.b64decode(kv["value"])))
                except (ValueError, KeyError):
                    raise StoreError(f"lease on {lease.subnet} was lost: etcd key {key} "
                                     "holds something unreadable") from None
                if holder.public_ip != lease.attrs.public_ip:
                    raise StoreError(f"lease on {lease.subnet} was lost: {holder.public_ip} "
                                     "holds it now")
                lease_id = int(kv.get("lease", 0))
                ttl = self._keepalive(lease_id) if lease_id else 0
                if ttl > 0 and holder == lease.attrs:
                    return lease.with_attrs(lease.attrs, time.time() + ttl)
                # Attributes changed, or the key lost its etcd lease: put it again.
                same = [{"key": _b64(key), "target": "MOD", "result": "EQUAL",
                         "mod_revision": int(kv["mod_revision"])}]
                new_id = lease_id if ttl > 0 else self._grant()
                if self._txn(same, [self._put(key, value, new_id)]):
                    return lease.with_attrs(lease.attrs, time.time() + (ttl or self.ttl))
                if new_id != lease_id:
                    self._revoke(new_id)
                continue
            # Gone (expired, or etcd lost its data): take the subnet again if still free.
            lease_id = self._grant()
            absent = [{"key": _b64(key), "target": "CREATE", "result": "EQUAL",
                       "create_revision": 0}]
            if self._txn(absent, [self._put(key, value, lease_id)]):
                log.get().warning("flannel etcd store: lease on %s had expired; re-created it",
                                  lease.subnet)
                return lease.with_attrs(lease.attrs, time.time() + self.ttl)
            self._revoke(lease_id)
        raise StoreError(f"could not renew the lease on {lease.subnet}: etcd key {key} keeps "
                         "changing")

    def leases(self) -> list[Lease]:
        """Every lease in etcd. Expirations are None: etcd deletes expired keys itself."""
        return [entry.lease for entry in self._entries()]

    def _fingerprint(self) -> Fingerprint:
        answer = self._range(self.subnets_prefix, _prefix_end(self.subnets_prefix),
                             sort_target=SORT_BY_MOD_REVISION, sort_order=DESCEND, limit=1,
                             keys_only=True, poll=True)
        kvs = answer.get("kvs", [])
        return int(answer.get("count", 0)), int(kvs[0]["mod_revision"]) if kvs else 0

    def wait_for_change(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        seen = self._seen if self._seen is not None else self._fingerprint()
        while True:
            if self._fingerprint() != seen:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(POLL_INTERVAL, left))

    def close(self) -> None:
        for client in self._clients + self._poll_clients:
            client.session.close()


def _describe(exc: BaseException) -> str:
    detail = getattr(exc, "detail_text", None)
    return str(detail or exc or type(exc).__name__)
