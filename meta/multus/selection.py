"""The pod annotation's network selections, in both forms Multus accepts.

`k8s.v1.cni.cncf.io/networks` is either a comma list of `[namespace/]name[@interface]` or a
JSON list of objects (`name`, `namespace`, `interface`, `ips`, `mac`, `default-route`,
`portMappings`, `bandwidth`, `cni-args`, `deviceID`). Parsing is pure: errors are ValueError
with a message the plugin prefixes with the pod's namespace and name.
"""

from __future__ import annotations

import ipaddress
import json
import re

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from typing import Any

NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
DEFAULT_NETWORK_ANNOTATION = "v1.multus-cni.io/default-network"
STATUS_ANNOTATION = "k8s.v1.cni.cncf.io/network-status"
RESOURCE_ANNOTATION = "k8s.v1.cni.cncf.io/resourceName"

# Kubernetes object names (DNS-1123 subdomain) and namespaces (DNS-1123 label).
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_MAC = re.compile(r"^([0-9a-fA-F]{2}[:-]){5}[0-9a-fA-F]{2}$")
_KEYS = frozenset({"name", "namespace", "interface", "ips", "mac", "default-route",
                   "portMappings", "bandwidth", "cni-args", "deviceID", "infiniband-guid",
                   "ipam-claim-reference"})


class Selection:
    """One network the pod asks for, with what it asks of that attachment."""

    __slots__ = ("name", "namespace", "interface", "ips", "mac", "gateways", "port_mappings",
                 "bandwidth", "cni_args", "device_id")

    def __init__(self, name: str, namespace: str, interface: str = "",
                 ips: list[str] | None = None, mac: str = "",
                 gateways: list[str] | None = None,
                 port_mappings: list[dict[str, Any]] | None = None,
                 bandwidth: dict[str, Any] | None = None,
                 cni_args: dict[str, Any] | None = None, device_id: str = "") -> None:
        self.name, self.namespace, self.interface = name, namespace, interface
        self.ips, self.mac, self.gateways = ips or [], mac, gateways or []
        self.port_mappings, self.bandwidth = port_mappings, bandwidth
        self.cni_args, self.device_id = cni_args, device_id

    @property
    def key(self) -> str:
        """How the network is named in network-status: `namespace/name`."""
        return f"{self.namespace}/{self.name}"

    def runtime_config(self) -> dict[str, Any]:
        """The capability arguments this selection offers its delegate."""
        runtime: dict[str, Any] = {}
        if self.ips:
            runtime["ips"] = list(self.ips)
        if self.mac:
            runtime["mac"] = self.mac
        if self.port_mappings is not None:
            runtime["portMappings"] = self.port_mappings
        if self.bandwidth is not None:
            runtime["bandwidth"] = self.bandwidth
        if self.device_id:
            runtime["deviceID"] = self.device_id
        return runtime

    def __repr__(self) -> str:
        return f"Selection({self.key}@{self.interface})" if self.interface else (
            f"Selection({self.key})")


def parse_reference(text: str, default_namespace: str) -> Selection:
    """`[namespace/]name[@interface]`, as in the comma form and on the admin command line."""
    text = text.strip()
    namespace, slash, rest = text.partition("/")
    if not slash:
        namespace, rest = default_namespace, text
    name, at, interface = rest.partition("@")
    if "/" in rest or "@" in interface or (at and not interface):
        raise ValueError(f"invalid network reference {text!r}: expected "
                         "[namespace/]name[@interface]")
    selection = Selection(name, namespace, interface)
    _validate(selection)
    return selection


def parse(annotation: str, default_namespace: str) -> list[Selection]:
    """Every selection of a `k8s.v1.cni.cncf.io/networks` annotation, in order."""
    text = annotation.strip()
    if not text:
        return []
    if not text.startswith(("[", "{")):
        return [parse_reference(item, default_namespace)
                for item in text.split(",") if item.strip()]
    try:
        items = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"invalid JSON in {NETWORKS_ANNOTATION}: {exc}") from None
    if not isinstance(items, list):
        raise ValueError(f"{NETWORKS_ANNOTATION} must be a JSON list")
    return [_from_object(item, default_namespace) for item in items]


def _from_object(item: object, default_namespace: str) -> Selection:
    if not isinstance(item, dict):
        raise ValueError(f"network selection {item!r} is not a JSON object")
    unknown = sorted(set(item) - _KEYS)
    if unknown:
        raise ValueError(f"network selection {item.get('name')!r}: unknown key {unknown[0]!r}")
    name = _string(item, "name")
    selection = Selection(
        name=name,
        namespace=_string(item, "namespace") or default_namespace,
        interface=_string(item, "interface"),
        ips=_strings(item, "ips", name),
        mac=_string(item, "mac"),
        gateways=_strings(item, "default-route", name),
        port_mappings=_list_of_objects(item, "portMappings", name),
        bandwidth=_object(item, "bandwidth", name),
        cni_args=_object(item, "cni-args", name),
        device_id=_string(item, "deviceID"),
    )
    _validate(selection)
    return selection


def _string(item: dict[str, Any], key: str) -> str:
    value = item.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"network selection key {key!r} must be a string, not {value!r}")
    return value.strip()


def _strings(item: dict[str, Any], key: str, name: str) -> list[str]:
    value = item.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"network {name!r}: {key!r} must be a list of strings")
    return [v.strip() for v in value]


def _object(item: dict[str, Any], key: str, name: str) -> dict[str, Any] | None:
    value = item.get(key)
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"network {name!r}: {key!r} must be a JSON object")
    return value


def _list_of_objects(item: dict[str, Any], key: str, name: str) -> list[dict[str, Any]] | None:
    value = item.get(key)
    if value is not None and (not isinstance(value, list)
                              or not all(isinstance(v, dict) for v in value)):
        raise ValueError(f"network {name!r}: {key!r} must be a list of JSON objects")
    return value


def _validate(selection: Selection) -> None:
    from pycni.skel import ifname_problem

    if not selection.name:
        raise ValueError("network selection without a name")
    if not _NAME.match(selection.name):
        raise ValueError(f"invalid network name {selection.name!r}")
    if not _NAMESPACE.match(selection.namespace):
        raise ValueError(f"invalid namespace {selection.namespace!r} for network "
                         f"{selection.name!r}")
    if selection.interface:
        problem = ifname_problem(selection.interface)
        if problem:
            raise ValueError(f"network {selection.key!r}: {problem}")
    for address in selection.ips:
        try:
            ipaddress.ip_interface(address)
        except ValueError:
            raise ValueError(f"network {selection.key!r}: invalid IP address {address!r}") from None
    for gateway in selection.gateways:
        try:
            ipaddress.ip_address(gateway)
        except ValueError:
            raise ValueError(f"network {selection.key!r}: invalid default-route gateway "
                             f"{gateway!r}") from None
    if selection.mac and not _MAC.match(selection.mac):
        raise ValueError(f"network {selection.key!r}: invalid MAC address {selection.mac!r}")
