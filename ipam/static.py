"""static IPAM: the addresses, routes and DNS the configuration names, nothing allocated.

Keys as the reference: `addresses` ([{address (CIDR), gateway}]), `routes`, `dns`. CNI_ARGS
`IP=` (comma-separated CIDRs) adds addresses and `GATEWAY=` sets the gateway of the addresses
containing it; `args.cni.ips`, then `runtimeConfig.ips`, replace the configured addresses.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from pycni import config, spec
from pycni.errors import CNIError, IncompatibleVersion, InvalidConfig
from pycni.result import IPConfig, Result
from pycni.skel import CmdArgs, Plugin


class DNSConf(config.Section):
    """The result's `dns`: typed, so a malformed section is refused rather than passed on."""

    nameservers: list[str] = []
    domain: str = ""
    search: list[str] = []
    options: list[str] = []


class IPAMConf(config.Section):
    type: str = "static"
    addresses: list[dict[str, Any]] = []
    routes: list[dict[str, Any]] = []
    dns: DNSConf | None = None


def _interface(text: object, source: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    if not isinstance(text, str) or "/" not in text:
        raise InvalidConfig(f"{source}: {text!r} is not an address in CIDR notation")
    try:
        return ipaddress.ip_interface(text.strip())
    except ValueError:
        raise InvalidConfig(f"{source}: {text!r} is not an address in CIDR notation") from None


def _gateway(text: object, source: str) -> str:
    try:
        return str(ipaddress.ip_address(str(text).strip()))
    except ValueError:
        raise InvalidConfig(f"{source}: invalid gateway address {text!r}") from None


def load_conf(args: CmdArgs) -> tuple[IPAMConf, list[IPConfig]]:
    net = config.load(config.NetConf, args, known_args=frozenset({"IP", "GATEWAY"}))
    if net.ipam is None:
        raise InvalidConfig("IPAM config missing 'ipam' key")
    ipam = config.parse(IPAMConf, net.ipam, "ipam")
    entries = [(_interface(a.get("address"), "ipam.addresses"),
                _gateway(a["gateway"], "ipam.addresses") if a.get("gateway") else None)
               for a in ipam.addresses]
    cni_args = config.parse_cni_args(args.args, {"IP", "GATEWAY"})
    for item in filter(str.strip, cni_args.get("IP", "").split(",")):
        entries.append((_interface(item, "CNI_ARGS IP"), None))
    for item in filter(str.strip, cni_args.get("GATEWAY", "").split(",")):
        gateway = ipaddress.ip_address(_gateway(item, "CNI_ARGS GATEWAY"))
        entries = [(iface, str(gateway) if gateway in iface.network else gw)
                   for iface, gw in entries]
    for source, value in (("args.cni.ips", ((net.args or {}).get("cni") or {}).get("ips")),
                          ("runtimeConfig.ips", net.runtime_config.get("ips"))):
        if value:  # replaces what came before, as in the reference
            if not isinstance(value, list):
                raise InvalidConfig(f"{source} must be a list of addresses in CIDR notation")
            entries = [(_interface(item, source), None) for item in value]
    if not entries:
        raise InvalidConfig("static IPAM has no addresses: set ipam.addresses or pass ips")
    versions = [iface.version for iface, _ in entries]
    if max(versions.count(4), versions.count(6)) > 1 and not spec.at_least(
            args.cni_version, "0.3.0"):
        raise IncompatibleVersion(
            f"CNI version {args.cni_version} does not support more than 1 address per family")
    return ipam, [IPConfig(str(iface), gateway) for iface, gateway in entries]


def cmd_add(args: CmdArgs) -> Result:
    from pycni.ipam.host_local.plugin import parse_route

    ipam, ips = load_conf(args)
    dns = ipam.dns.model_dump(include=set(DNSConf.model_fields)) if ipam.dns else {}
    return Result(ips=ips, routes=[parse_route(r) for r in ipam.routes], dns=dns)


def cmd_del(args: CmdArgs) -> None:
    """Nothing was allocated, nothing to release."""


def cmd_check(args: CmdArgs) -> None:
    """Every configured address must be in the result the main plugin reported."""
    _, ips = load_conf(args)
    prev = args.prev_result
    if prev is None:
        raise InvalidConfig("static CHECK needs prevResult")
    reported = {ip.address: ip.gateway for ip in prev.ips}
    for ip in ips:
        if ip.address not in reported:
            raise CNIError(f"static: address {ip.address} missing from prevResult")
        if ip.gateway and reported[ip.address] != ip.gateway:
            raise CNIError(f"static: address {ip.address} has gateway "
                           f"{reported[ip.address]}, expected {ip.gateway}")


def cmd_status(args: CmdArgs) -> None:
    """Nothing on the node can run out: always ready."""


def cmd_gc(args: CmdArgs) -> None:
    """Nothing allocated, nothing to collect."""


PLUGIN = Plugin("pycni static IPAM plugin", add=cmd_add, delete=cmd_del, check=cmd_check,
                status=cmd_status, gc=cmd_gc, check_netns=False)
