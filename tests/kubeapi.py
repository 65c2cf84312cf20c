"""A small Kubernetes API server for tests: no kube-apiserver can run on these machines.

It serves the paths, verbs and JSON shapes the official `kubernetes` client uses for nodes,
pods and NetworkAttachmentDefinitions: list (with `metadata.resourceVersion`), watch
(newline-delimited events from a resourceVersion, 410 Gone once history is compacted), get,
create, replace, merge / strategic-merge / JSON patch (with the `status` subresource), delete,
Status errors (404, 409, 401) and an optional bearer token.

The listening socket is created inside a network namespace (a socket keeps the namespace it
was made in) and served from threads of the test process, so clients in that namespace, or
in namespaces routed to it, reach it while the machine's own namespace is never touched.
Tests also read and change the objects directly, and stop and start the server (an API
outage) without losing them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import socket
import socketserver
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pycni import netns

Object = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    plural: str
    kind: str
    group: str            # "" for the core API
    version: str
    namespaced: bool
    has_status: bool      # a `status` subresource: the main path ignores status and back

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


NODES = Resource("nodes", "Node", "", "v1", namespaced=False, has_status=True)
PODS = Resource("pods", "Pod", "", "v1", namespaced=True, has_status=True)
NADS = Resource("network-attachment-definitions", "NetworkAttachmentDefinition",
                "k8s.cni.cncf.io", "v1", namespaced=True, has_status=False)
RESOURCES = (NODES, PODS, NADS)

# Strategic merge patch: lists merged element by element on these keys (Kubernetes' own
# patchMergeKey for node and pod conditions, node addresses); other lists are replaced.
MERGE_KEYS = {"conditions": "type", "addresses": "type"}


class ApiError(Exception):
    """Answered as a Kubernetes Status object."""

    def __init__(self, code: int, reason: str, message: str,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.details = details or {}

    def status(self) -> Object:
        body: Object = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "message": self.message, "reason": self.reason,
                        "code": self.code}
        if self.details:
            body["details"] = self.details
        return body


def not_found(resource: Resource, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{resource.plural} "{name}" not found',
                    {"name": name, "kind": resource.plural})


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# Patches -------------------------------------------------------------------------------

def merge_patch(target: Any, patch: Any, merge_keys: dict[str, str] | None = None) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces; lists named
    in `merge_keys` (strategic merge) merge their elements by that key instead."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    keys = merge_keys or {}
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif key in keys and isinstance(value, list) and isinstance(result.get(key), list):
            merge_key = keys[key]
            merged = [copy.deepcopy(item) for item in result[key]]
            for item in value:
                position = next((i for i, old in enumerate(merged) if isinstance(old, dict)
                                 and isinstance(item, dict)
                                 and old.get(merge_key) == item.get(merge_key)), None)
                if position is None:
                    merged.append(copy.deepcopy(item))
                else:
                    merged[position] = merge_patch(merged[position], item, keys)
            result[key] = merged
        else:
            result[key] = merge_patch(result.get(key), value, keys)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Merge patch, except lists of MERGE_KEYS merge their elements by key."""
    return merge_patch(target, patch, MERGE_KEYS)


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"invalid JSON pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _walk(document: Any, parts: list[str]) -> Any:
    for part in parts:
        if isinstance(document, dict) and part in document:
            document = document[part]
        elif isinstance(document, list) and part.isdigit() and int(part) < len(document):
            document = document[int(part)]
        else:
            raise ApiError(422, "Invalid", f"JSON pointer /{'/'.join(parts)} does not exist")
    return document


def json_patch(document: Any, operations: Any) -> Any:
    """RFC 6902: add, remove, replace, move, copy, test."""
    if not isinstance(operations, list):
        raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
    document = copy.deepcopy(document)

    def remove(parts: list[str]) -> Any:
        parent = _walk(document, parts[:-1])
        _walk(parent, parts[-1:])
        if isinstance(parent, list):
            return parent.pop(int(parts[-1]))
        return parent.pop(parts[-1])

    def add(parts: list[str], value: Any) -> None:
        nonlocal document
        if not parts:
            document = value
            return
        parent = _walk(document, parts[:-1])
        if isinstance(parent, list):
            last = parts[-1]
            parent.insert(len(parent) if last == "-" else int(last), value)
        elif isinstance(parent, dict):
            parent[parts[-1]] = value
        else:
            raise ApiError(422, "Invalid", f"cannot add under /{'/'.join(parts[:-1])}")

    for operation in operations:
        if not isinstance(operation, dict) or "op" not in operation or "path" not in operation:
            raise ApiError(400, "BadRequest", f"bad JSON patch operation {operation!r}")
        op, parts = operation["op"], _pointer(operation["path"])
        if op == "add":
            add(parts, copy.deepcopy(operation.get("value")))
        elif op == "remove":
            remove(parts)
        elif op == "replace":
            remove(parts)
            add(parts, copy.deepcopy(operation.get("value")))
        elif op in ("move", "copy"):
            source = _pointer(operation["from"])
            value = remove(source) if op == "move" else copy.deepcopy(_walk(document, source))
            add(parts, value)
        elif op == "test":
            if _walk(document, parts) != operation.get("value"):
                raise ApiError(422, "Invalid", f"JSON patch test failed at {operation['path']}")
        else:
            raise ApiError(400, "BadRequest", f"unknown JSON patch operation {op!r}")
    return document


PATCHES: dict[str, Callable[[Any, Any], Any]] = {
    "application/merge-patch+json": merge_patch,
    "application/strategic-merge-patch+json": strategic_merge_patch,
    "application/json-patch+json": json_patch,
}


# Selectors -----------------------------------------------------------------------------

def _field_value(obj: Object, path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def _terms(selector: str) -> Iterator[tuple[str, str, str]]:
    """(key, operator, value) of each term: `a=b`, `a==b`, `a!=b`, `a` (exists), `!a`."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            yield key.strip(), "!=", value.strip()
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            yield key.strip(), "=", value.strip()
        elif term.startswith("!"):
            yield term[1:].strip(), "absent", ""
        else:
            yield term, "present", ""


def matches(obj: Object, label_selector: str, field_selector: str) -> bool:
    """Equality-based label and field selectors (set-based ones are not served)."""
    labels: dict[str, str] = obj.get("metadata", {}).get("labels") or {}
    for key, operator, value in _terms(label_selector):
        if ((operator == "=" and labels.get(key) != value)
                or (operator == "!=" and labels.get(key) == value)
                or (operator == "present" and key not in labels)
                or (operator == "absent" and key in labels)):
            return False
    for key, operator, value in _terms(field_selector):
        if (_field_value(obj, key) == value) != (operator == "="):
            return False
    return True


# The server ----------------------------------------------------------------------------

@dataclass
class Event:
    resource_version: int
    type: str            # ADDED, MODIFIED, DELETED
    resource: Resource
    object: Object


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], api: KubeApiServer) -> None:
        self.api = api
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's name (DNS); nothing here may leave.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], OSError):   # a client gone mid-answer is fine
            super().handle_error(request, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.api._track(request)
        super().process_request(request, client_address)


class KubeApiServer:
    """Objects, resourceVersions and watch history in memory; HTTP while started.

    `netns_path`: the namespace to listen in (None: the caller's, only for tests that
    already run inside a sandbox namespace). `port` 0 picks a free port, kept across
    stop() and start(). `token`: require `Authorization: Bearer <token>`.
    """

    def __init__(self, netns_path: str | None, host: str = "127.0.0.1", port: int = 6443,
                 token: str | None = None) -> None:
        self.netns_path, self.host, self.port, self.token = netns_path, host, port, token
        self.requests: list[tuple[str, str, str]] = []   # (method, path, content type)
        self._objects: dict[tuple[str, str, str], Object] = {}  # (plural, namespace, name)
        self._events: list[Event] = []
        self._compacted = 0          # watches from before this resourceVersion get 410
        self._resource_version = 0
        self._changed = threading.Condition()
        self._http: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    # Lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._http is not None

    def start(self) -> KubeApiServer:
        if self._http is not None:
            return self
        entering = (netns.entered(self.netns_path) if self.netns_path
                    else contextlib.nullcontext())
        with entering:
            http = _HttpServer((self.host, self.port), self)
        self.port = http.server_port
        self._http = http
        self._thread = threading.Thread(target=http.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"kubeapi-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket and every connection (watches end); keep the objects."""
        http, thread = self._http, self._thread
        if http is None or thread is None:
            return
        self._http, self._thread = None, None
        http.shutdown()
        thread.join()
        with self._changed:
            self._changed.notify_all()           # watch handlers see `running` is False
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        http.server_close()                      # joins the request threads

    def __enter__(self) -> KubeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _track(self, connection: socket.socket) -> None:
        with self._changed:
            self._connections.add(connection)

    def _untrack(self, connection: socket.socket) -> None:
        with self._changed:
            self._connections.discard(connection)

    # Objects, for tests and for the handlers ---------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._resource_version

    def _key(self, resource: Resource, namespace: str | None, name: str) -> tuple[str, str, str]:
        return (resource.plural, (namespace or "default") if resource.namespaced else "", name)

    def _record(self, event_type: str, resource: Resource, obj: Object) -> None:
        """Under the lock: stamp a new resourceVersion, remember the event, wake watchers."""
        self._resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self._resource_version)
        self._events.append(Event(self._resource_version, event_type, resource,
                                  copy.deepcopy(obj)))
        self._changed.notify_all()

    def create(self, resource: Resource, obj: Object, namespace: str | None = None) -> Object:
        obj = copy.deepcopy(obj)
        metadata = obj.setdefault("metadata", {})
        name = metadata.get("name")
        if not name:
            raise ApiError(422, "Invalid", f"{resource.kind} has no metadata.name")
        namespace = namespace or metadata.get("namespace") or "default"
        if resource.namespaced:
            metadata["namespace"] = namespace
        else:
            metadata.pop("namespace", None)
        with self._changed:
            key = self._key(resource, namespace, name)
            if key in self._objects:
                raise ApiError(409, "AlreadyExists", f'{resource.plural} "{name}" already exists',
                               {"name": name, "kind": resource.plural})
            obj["apiVersion"], obj["kind"] = resource.api_version, resource.kind
            metadata["uid"] = str(uuid.uuid4())
            metadata["creationTimestamp"] = now_rfc3339()
            metadata.setdefault("generation", 1)
            self._objects[key] = obj
            self._record("ADDED", resource, obj)
            return copy.deepcopy(obj)

    def get(self, resource: Resource, name: str, namespace: str | None = None) -> Object:
        with self._changed:
            obj = self._objects.get(self._key(resource, namespace, name))
            if obj is None:
                raise not_found(resource, name)
            return copy.deepcopy(obj)

    def list(self, resource: Resource, namespace: str | None = None) -> list[Object]:
        with self._changed:
            return [copy.deepcopy(obj) for (plural, ns, _), obj in sorted(self._objects.items())
                    if plural == resource.plural and (namespace is None or ns == namespace)]

    def update(self, resource: Resource, name: str, change: Callable[[Object], Object | None],
               namespace: str | None = None, subresource: str | None = None,
               expected_version: str | None = None) -> Object:
        """Apply `change` to a copy of the object (it may return a new one) and store it.

        Identity fields stay. As the API server does for resources with a status
        subresource, `subresource` "status" keeps the spec and "" (the main path) keeps the
        status; None (tests changing objects directly) keeps neither.
        """
        with self._changed:
            key = self._key(resource, namespace, name)
            old = self._objects.get(key)
            if old is None:
                raise not_found(resource, name)
            new = copy.deepcopy(old)
            changed = change(new)
            new = new if changed is None else changed
            if not isinstance(new, dict):
                raise ApiError(422, "Invalid", "the result is not an object")
            wanted = (new.get("metadata") or {}).get("resourceVersion") or expected_version
            if wanted and wanted != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict",
                               f'Operation cannot be fulfilled on {resource.plural} "{name}": '
                               "the object has been modified; please apply your changes to "
                               "the latest version and try again",
                               {"name": name, "kind": resource.plural})
            metadata = new.setdefault("metadata", {})
            if not isinstance(metadata, dict):
                raise ApiError(422, "Invalid", "metadata is not an object")
            for field in ("name", "namespace", "uid", "creationTimestamp", "generation"):
                if field in old["metadata"]:
                    metadata[field] = old["metadata"][field]
            new["apiVersion"], new["kind"] = resource.api_version, resource.kind
            if resource.has_status and subresource is not None:
                kept = "spec" if subresource == "status" else "status"
                if kept in old:
                    new[kept] = old[kept]
                else:
                    new.pop(kept, None)
            if _same_content(old, new):
                return copy.deepcopy(old)       # no change: no new resourceVersion
            self._objects[key] = new
            self._record("MODIFIED", resource, new)
            return copy.deepcopy(new)

    def delete(self, resource: Resource, name: str, namespace: str | None = None) -> Object:
        with self._changed:
            obj = self._objects.pop(self._key(resource, namespace, name), None)
            if obj is None:
                raise not_found(resource, name)
            self._record("DELETED", resource, obj)
            return copy.deepcopy(obj)

    def compact(self) -> None:
        """Forget the watch history: watches from an older resourceVersion get 410 Gone."""
        with self._changed:
            self._events.clear()
            self._compacted = self._resource_version + 1

    # Convenience for tests ---------------------------------------------------------------

    def add_node(self, name: str, pod_cidr: str | None = None,
                 pod_cidrs: list[str] | None = None, annotations: dict[str, str] | None = None,
                 address: str | None = None, labels: dict[str, str] | None = None) -> Object:
        spec: Object = {}
        if pod_cidr or pod_cidrs:
            spec["podCIDR"] = pod_cidr or (pod_cidrs or [])[0]
            spec["podCIDRs"] = pod_cidrs or [pod_cidr]
        status: Object = {"conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "message": "kubelet is posting ready status", "lastHeartbeatTime": now_rfc3339(),
             "lastTransitionTime": now_rfc3339()}]}
        if address:
            status["addresses"] = [{"type": "InternalIP", "address": address},
                                   {"type": "Hostname", "address": name}]
        metadata: Object = {"name": name, "annotations": dict(annotations or {}),
                            "labels": {"kubernetes.io/hostname": name, **(labels or {})}}
        return self.create(NODES, {"metadata": metadata, "spec": spec, "status": status})

    def node(self, name: str) -> Object:
        return self.get(NODES, name)

    def update_node(self, name: str, change: Callable[[Object], Object | None],
                    subresource: str | None = None) -> Object:
        return self.update(NODES, name, change, subresource=subresource)

    def annotate_node(self, name: str, **annotations: str | None) -> Object:
        """Set (None: remove) annotations, as `kubectl annotate` does."""
        return self.update(NODES, name, lambda node: merge_patch(
            node, {"metadata": {"annotations": annotations}}))

    def delete_node(self, name: str) -> Object:
        return self.delete(NODES, name)

    def add_pod(self, namespace: str, name: str, node_name: str = "",
                annotations: dict[str, str] | None = None,
                labels: dict[str, str] | None = None) -> Object:
        metadata = {"name": name, "namespace": namespace, "annotations": dict(annotations or {}),
                    "labels": dict(labels or {})}
        spec = {"nodeName": node_name, "containers": [{"name": "main", "image": "pause"}]}
        return self.create(PODS, {"metadata": metadata, "spec": spec,
                                  "status": {"phase": "Pending"}}, namespace)

    def pod(self, namespace: str, name: str) -> Object:
        return self.get(PODS, name, namespace)

    def add_nad(self, namespace: str, name: str, config: str | dict[str, Any] | None = None,
                annotations: dict[str, str] | None = None) -> Object:
        spec = {} if config is None else {
            "config": config if isinstance(config, str) else json.dumps(config)}
        metadata = {"name": name, "namespace": namespace, "annotations": dict(annotations or {})}
        return self.create(NADS, {"metadata": metadata, "spec": spec}, namespace)

    def nad(self, namespace: str, name: str) -> Object:
        return self.get(NADS, name, namespace)

    # Watch -------------------------------------------------------------------------------

    def _events_after(self, resource: Resource, namespace: str | None, since: int,
                      selectors: tuple[str, str]) -> list[Event]:
        return [event for event in self._events
                if event.resource_version > since and event.resource is resource
                and (namespace is None
                     or event.object["metadata"].get("namespace") == namespace)
                and matches(event.object, *selectors)]

    def watch(self, resource: Resource, namespace: str | None, since: str | None,
              timeout: float, selectors: tuple[str, str] = ("", "")) -> Iterator[Object]:
        """Watch events as the API sends them; ends at `timeout` or when the server stops.
        ApiError at once (not on the first event) for a malformed resourceVersion."""
        deadline = time.monotonic() + timeout
        with self._changed:
            if not since or since == "0":
                # No resourceVersion: the current state as ADDED events, then changes.
                cursor = self._resource_version
                initial = [{"type": "ADDED", "object": obj}
                           for obj in self.list(resource, namespace) if matches(obj, *selectors)]
            else:
                try:
                    cursor = int(since)
                except ValueError:
                    raise ApiError(400, "BadRequest",
                                   f"invalid resourceVersion {since!r}") from None
                initial = []
                if cursor + 1 < self._compacted:
                    initial = [{"type": "ERROR", "object": ApiError(
                        410, "Expired", f"too old resource version: {cursor} "
                                        f"({self._compacted - 1})").status()}]
                    deadline = 0.0
        return self._follow(resource, namespace, cursor, deadline, selectors, initial)

    def _follow(self, resource: Resource, namespace: str | None, cursor: int, deadline: float,
                selectors: tuple[str, str], initial: list[Object]) -> Iterator[Object]:
        yield from initial
        while True:
            with self._changed:
                events = self._events_after(resource, namespace, cursor, selectors)
                while not events and self.running and time.monotonic() < deadline:
                    self._changed.wait(max(0.0, min(1.0, deadline - time.monotonic())))
                    events = self._events_after(resource, namespace, cursor, selectors)
                if not events:
                    return
                cursor = events[-1].resource_version
            for event in events:
                yield {"type": event.type, "object": copy.deepcopy(event.object)}


def _same_content(old: Object, new: Object) -> bool:
    strip = {"resourceVersion"}
    return (json.dumps({**old, "metadata": {k: v for k, v in old["metadata"].items()
                                             if k not in strip}}, sort_keys=True)
            == json.dumps({**new, "metadata": {k: v for k, v in new["metadata"].items()
                                               if k not in strip}}, sort_keys=True))


# HTTP ----------------------------------------------------------------------------------

def route(path: str) -> tuple[Resource, str | None, str | None, str | None]:
    """(resource, namespace, name, subresource) for an API path; ApiError 404 otherwise."""
    parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    else:
        raise ApiError(404, "NotFound", f"the server could not find the requested resource "
                                        f"({path})")
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    for resource in RESOURCES:
        prefix = f"{resource.group}/{resource.version}" if resource.group else ""
        if (prefix, resource.plural) == (group, rest[0] if rest else None) and (
                namespace is None or resource.namespaced):
            if not 1 <= len(rest) <= 3 or (len(rest) == 3 and rest[2] != "status"):
                break
            if resource.namespaced and namespace is None and len(rest) > 1:
                break
            name = rest[1] if len(rest) > 1 else None
            return resource, namespace, name, rest[2] if len(rest) == 3 else None
    raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.api._untrack(self.connection)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _send_json(self, code: int, body: Object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except json.JSONDecodeError as exc:
            raise ApiError(400, "BadRequest", f"the body is not JSON: {exc}") from None

    def _serve(self, method: str) -> None:
        api = self.server.api
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        api.requests.append((method, url.path, content_type))
        try:
            body = self._body()
            if api.token is not None and \
                    self.headers.get("Authorization") != f"Bearer {api.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            resource, namespace, name, subresource = route(url.path)
            if method == "GET" and name is None and query.get("watch") in ("true", "1"):
                self._watch(resource, namespace, query)
                return
            code, answer = self._dispatch(method, resource, namespace, name, subresource,
                                          content_type, body, query)
        except ApiError as error:
            code, answer = error.code, error.status()
        self._send_json(code, answer)

    def _dispatch(self, method: str, resource: Resource, namespace: str | None,
                  name: str | None, subresource: str | None, content_type: str, body: Any,
                  query: dict[str, str]) -> tuple[int, Object]:
        api = self.server.api
        if name is None:
            if method == "GET":
                with api._changed:
                    items = [obj for obj in api.list(resource, namespace)
                             if matches(obj, query.get("labelSelector", ""),
                                        query.get("fieldSelector", ""))]
                    version = str(api.resource_version)
                return 200, {"kind": f"{resource.kind}List", "apiVersion": resource.api_version,
                             "metadata": {"resourceVersion": version}, "items": items}
            if method == "POST":
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "the body must be an object")
                if resource.namespaced and namespace is None:
                    raise ApiError(404, "NotFound", "a namespace is required")
                return 201, api.create(resource, body, namespace)
            raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed on a collection")
        if method == "GET":
            return 200, api.get(resource, name, namespace)
        if method == "DELETE":
            deleted = api.delete(resource, name, namespace)
            if resource.group:
                return 200, deleted
            return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                         "status": "Success",
                         "details": {"name": name, "kind": resource.plural,
                                     "uid": deleted["metadata"]["uid"]}}
        if method == "PUT":
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "the body must be an object")
            return 200, api.update(resource, name, lambda _old: copy.deepcopy(body), namespace,
                                   subresource or "")
        if method == "PATCH":
            apply = PATCHES.get(content_type)
            if apply is None:
                raise ApiError(415, "UnsupportedMediaType",
                               f"the body of the request was in an unknown format: "
                               f"{content_type or 'none'}")
            return 200, api.update(resource, name, lambda old: apply(old, body), namespace,
                                   subresource or "")
        raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed")

    def _watch(self, resource: Resource, namespace: str | None, query: dict[str, str]) -> None:
        api = self.server.api
        timeout = float(query.get("timeoutSeconds") or 1800)
        try:
            events = api.watch(resource, namespace, query.get("resourceVersion"), timeout,
                               (query.get("labelSelector", ""), query.get("fieldSelector", "")))
        except ApiError as error:
            self._send_json(error.code, error.status())
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for event in events:
                self._chunk(json.dumps(event).encode() + b"\n")
            self._chunk(b"")
        except OSError:
            self.close_connection = True
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def write_kubeconfig(path: str | Path, server_url: str, token: str | None = None,
                     name: str = "test") -> Path:
    """A kubeconfig (JSON is YAML) for `server_url`, with a bearer token when given."""
    user: dict[str, Any] = {"token": token} if token else {}
    config = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": name, "cluster": {"server": server_url}}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }
    target = Path(path)
    target.write_text(json.dumps(config, indent=2))
    target.chmod(0o600)
    return target
