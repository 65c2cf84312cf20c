"""Results: plugins build the newest form; one registry converts it to the config's version.

Parsing accepts every version (a `prevResult` or a delegate's output may be older than ours)
and yields the newest form, so plugins only ever see one shape.
"""

from __future__ import annotations

from pycni import spec
from pycni.errors import DecodeFailure, IncompatibleVersion

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Json = dict[str, Any]


def _drop_none(d: Json) -> Json:
    return {k: v for k, v in d.items() if v is not None}


def _get(d: Json, key: str, kind: type, required: bool = False) -> Any:
    """`d[key]` when it has the JSON type `kind`; absent or null is None unless required.

    A wrong type is a TypeError, which `Result.from_dict` reports as a decode failure, so a
    malformed delegate result is refused when read, not when a plugin trips over it later.
    """
    value = d[key] if required else d.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, kind):
        raise TypeError(f"{key!r} must be {kind.__name__}, not {type(value).__name__}")
    return value


def ip_version(address: str) -> str:
    return "6" if ":" in address else "4"


class Interface:
    __slots__ = ("name", "mac", "sandbox", "mtu", "socket_path", "pci_id")

    def __init__(self, name: str, mac: str = "", sandbox: str = "", mtu: int | None = None,
                 socket_path: str | None = None, pci_id: str | None = None) -> None:
        self.name, self.mac, self.sandbox = name, mac, sandbox
        self.mtu, self.socket_path, self.pci_id = mtu, socket_path, pci_id

    def to_dict(self) -> Json:
        out: Json = {"name": self.name}
        if self.mac:
            out["mac"] = self.mac
        if self.mtu:
            out["mtu"] = self.mtu
        if self.sandbox:
            out["sandbox"] = self.sandbox
        if self.socket_path:
            out["socketPath"] = self.socket_path
        if self.pci_id:
            out["pciID"] = self.pci_id
        return out

    @classmethod
    def from_dict(cls, d: Json) -> Interface:
        return cls(_get(d, "name", str, required=True), _get(d, "mac", str) or "",
                   _get(d, "sandbox", str) or "", _get(d, "mtu", int),
                   _get(d, "socketPath", str), _get(d, "pciID", str))


class IPConfig:
    __slots__ = ("address", "gateway", "interface")

    def __init__(self, address: str, gateway: str | None = None,
                 interface: int | None = None) -> None:
        self.address, self.gateway, self.interface = address, gateway, interface

    @property
    def version(self) -> str:
        return ip_version(self.address)

    def to_dict(self) -> Json:
        return _drop_none({"interface": self.interface, "address": self.address,
                           "gateway": self.gateway})

    @classmethod
    def from_dict(cls, d: Json) -> IPConfig:
        return cls(_get(d, "address", str, required=True), _get(d, "gateway", str),
                   _get(d, "interface", int))


class Route:
    __slots__ = ("dst", "gw", "mtu", "advmss", "priority", "table", "scope")

    def __init__(self, dst: str, gw: str | None = None, mtu: int | None = None,
                 advmss: int | None = None, priority: int | None = None,
                 table: int | None = None, scope: int | None = None) -> None:
        self.dst, self.gw = dst, gw
        self.mtu, self.advmss, self.priority, self.table, self.scope = (
            mtu, advmss, priority, table, scope)

    def to_dict(self, with_v11_fields: bool = True) -> Json:
        out = _drop_none({"dst": self.dst, "gw": self.gw})
        if with_v11_fields:
            out.update(_drop_none({"mtu": self.mtu, "advmss": self.advmss,
                                   "priority": self.priority, "table": self.table,
                                   "scope": self.scope}))
        return out

    @classmethod
    def from_dict(cls, d: Json) -> Route:
        return cls(_get(d, "dst", str, required=True), _get(d, "gw", str), _get(d, "mtu", int),
                   _get(d, "advmss", int), _get(d, "priority", int), _get(d, "table", int),
                   _get(d, "scope", int))


class Result:
    """The newest result form (spec 1.1.0)."""

    __slots__ = ("interfaces", "ips", "routes", "dns")

    def __init__(self, interfaces: list[Interface] | None = None,
                 ips: list[IPConfig] | None = None, routes: list[Route] | None = None,
                 dns: Json | None = None) -> None:
        self.interfaces = interfaces or []
        self.ips = ips or []
        self.routes = routes or []
        self.dns = dns or {}

    def to_version(self, version: str) -> Json:
        """This result as JSON at `version`, through the converter registry."""
        convert = CONVERTERS.get(version)
        if convert is None:
            raise IncompatibleVersion(f"cannot print a result at version {version!r}")
        return convert(self, version)

    @classmethod
    def from_dict(cls, d: object) -> Result:
        """Parse a result of any version into the newest form."""
        if not isinstance(d, dict):
            raise DecodeFailure("result must be a JSON object")
        # Decide by shape first: a result without cniVersion (0.1.0 by default) that has
        # `ips` or `interfaces` is the current form, and parsing it as legacy would lose them.
        current = spec.at_least(d.get("cniVersion") or spec.DEFAULT, "0.3.0")
        try:
            if "ip4" in d or "ip6" in d or not (current or "ips" in d or "interfaces" in d):
                return _from_legacy(d)
            return cls(
                [Interface.from_dict(i) for i in _get(d, "interfaces", list) or []],
                [IPConfig.from_dict(i) for i in _get(d, "ips", list) or []],
                [Route.from_dict(r) for r in _get(d, "routes", list) or []],
                _get(d, "dns", dict) or {},
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise DecodeFailure("malformed result", f"{type(exc).__name__}: {exc}") from exc


def _from_legacy(d: Json) -> Result:
    result = Result(dns=_get(d, "dns", dict) or {})
    for key in ("ip4", "ip6"):
        block = _get(d, key, dict)
        if not block:
            continue
        result.ips.append(IPConfig(_get(block, "ip", str, required=True),
                                   _get(block, "gateway", str)))
        result.routes.extend(Route.from_dict(r) for r in _get(block, "routes", list) or [])
    return result


def _dns(result: Result) -> Json | None:
    return {k: v for k, v in result.dns.items() if v} or None


def _to_current(result: Result, version: str) -> Json:
    v11 = spec.at_least(version, "1.1.0")
    with_version = not spec.at_least(version, "1.0.0")
    out: Json = {"cniVersion": version}
    if result.interfaces:
        ifaces = [i.to_dict() for i in result.interfaces]
        if not v11:
            for i in ifaces:
                for key in ("mtu", "socketPath", "pciID"):
                    i.pop(key, None)
        out["interfaces"] = ifaces
    if result.ips:
        ips = []
        for ip in result.ips:
            entry = ip.to_dict()
            if with_version:
                entry = {"version": ip.version, **entry}
            ips.append(entry)
        out["ips"] = ips
    if result.routes:
        out["routes"] = [r.to_dict(with_v11_fields=v11) for r in result.routes]
    dns = _dns(result)
    if dns:
        out["dns"] = dns
    return out


def _to_legacy(result: Result, version: str) -> Json:
    """0.1.0/0.2.0 hold one address per family and the routes of that family."""
    out: Json = {"cniVersion": version}
    for family, key in (("4", "ip4"), ("6", "ip6")):
        first = next((ip for ip in result.ips if ip.version == family), None)
        if first is None:
            continue
        block: Json = {"ip": first.address}
        if first.gateway:
            block["gateway"] = first.gateway
        routes = [r.to_dict(with_v11_fields=False) for r in result.routes
                  if ip_version(r.dst) == family]
        if routes:
            block["routes"] = routes
        out[key] = block
    if "ip4" not in out and "ip6" not in out:
        raise IncompatibleVersion(f"cannot convert result to {version}: it has no IP addresses")
    dns = _dns(result)
    if dns:
        out["dns"] = dns
    return out


CONVERTERS: dict[str, Callable[[Result, str], Json]] = {  # keyed by target version
    "0.1.0": _to_legacy,
    "0.2.0": _to_legacy,
    "0.3.0": _to_current,
    "0.3.1": _to_current,
    "0.4.0": _to_current,
    "1.0.0": _to_current,
    "1.1.0": _to_current,
}
