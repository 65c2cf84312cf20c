"""A sandbox namespace's kernel state as comparable data, for the differential tests.

`snapshot(ns)` reads, in one process inside the namespace: links (kind, mode, MTU, flags,
master, promiscuity, txqlen), addresses, routes of every table, per-interface and global
sysctls, qdiscs and ingress filters (`tc`), and the firewall (`iptables-save`,
`ip6tables-save`, `nft list ruleset`; empty tables left out). What is random per run is
masked so that two twin runs compare equal when the plugins did the same: veth names the
plugins choose (`veth<8 hex>`), MACs (but the ones a test sets on purpose), link-local IPv6
addresses (from the random MACs), counters and interface indexes.

Plain data and no pytest, so tests of any plugin can use it.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

VETH_NAME = re.compile(r"^veth[0-9a-f]{8}$")
MAC_TEXT = re.compile(r"\b(?:[0-9a-f]{2}:){5}[0-9a-f]{2}\b")

# Per-interface sysctls read for every link, and global ones.
INTERFACE_SYSCTLS = ("ipv4/conf/%s/forwarding", "ipv4/conf/%s/route_localnet",
                     "ipv4/conf/%s/proxy_arp", "ipv4/conf/%s/arp_notify",
                     "ipv4/conf/%s/rp_filter", "ipv6/conf/%s/forwarding",
                     "ipv6/conf/%s/accept_ra", "ipv6/conf/%s/accept_dad",
                     "ipv6/conf/%s/disable_ipv6")
GLOBAL_SYSCTLS = ("ipv4/ip_forward", "ipv6/conf/all/forwarding", "ipv6/conf/all/disable_ipv6",
                  "ipv4/conf/all/route_localnet", "core/somaxconn", "ipv4/ip_local_port_range")

SECTION = "@@pycni-section "
SCRIPT = f"""
section() {{ echo "{SECTION}$1"; }}
section links; ip -j -d link show
section addresses; ip -j addr show
section routes4; ip -j -4 route show table all
section routes6; ip -j -6 route show table all
section qdiscs; tc -j qdisc show
for dev in $(ls /sys/class/net); do
  section "filters $dev"; tc filter show dev "$dev" ingress 2>/dev/null
done
section sysctls
for dev in $(ls /sys/class/net); do
  for key in {" ".join(INTERFACE_SYSCTLS)}; do
    key=$(printf "$key" "$dev")
    [ -e "/proc/sys/net/$key" ] && echo "$key=$(cat "/proc/sys/net/$key")"
  done
done
for key in {" ".join(GLOBAL_SYSCTLS)} $PYCNI_EXTRA_SYSCTLS; do
  [ -e "/proc/sys/net/$key" ] && echo "$key=$(cat "/proc/sys/net/$key")"
done
section iptables; iptables-save
section ip6tables; ip6tables-save
section nft; nft list ruleset
"""


class Masks:
    """How to mask one run's random names and MACs."""

    def __init__(self, keep_macs: Iterable[str] = (), names: dict[str, str] | None = None):
        self.keep_macs = {mac.lower() for mac in keep_macs}
        self.names = dict(names or {})

    def name(self, name: str | None) -> str | None:
        if name is None:
            return None
        if name in self.names:
            return self.names[name]
        return "<veth>" if VETH_NAME.match(name) else name

    def mac(self, mac: str | None) -> str | None:
        if mac is None:
            return None
        return mac if mac.lower() in self.keep_macs else "<mac>"

    def text(self, text: str) -> str:
        text = MAC_TEXT.sub(lambda m: m.group(0) if m.group(0) in self.keep_macs else "<mac>",
                            text)
        text = re.sub(r"\bveth[0-9a-f]{8}\b", "<veth>", text)
        for real, masked in self.names.items():
            text = re.sub(rf"\b{re.escape(real)}\b", masked, text)
        return text


def link_local(address: str) -> bool:
    return address.lower().startswith("fe80:")


def read_sections(namespace: str, extra_sysctls: Iterable[str] = ()) -> dict[str, str]:
    """The raw output of SCRIPT run inside `namespace`, by section."""
    done = subprocess.run(["ip", "netns", "exec", namespace, "sh", "-c", SCRIPT],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                               "PYCNI_EXTRA_SYSCTLS": " ".join(extra_sysctls)})
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in done.stdout.splitlines():
        if line.startswith(SECTION):
            current = sections.setdefault(line[len(SECTION):], [])
        else:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in sections.items()}


def links(raw: str, masks: Masks) -> list[dict[str, Any]]:
    found = []
    for link in json.loads(raw or "[]"):
        info = link.get("linkinfo", {})
        data = info.get("info_data", {})
        found.append({
            "name": masks.name(link["ifname"]), "kind": info.get("info_kind"),
            "mode": data.get("mode"), "vlan_id": data.get("id"), "mtu": link["mtu"],
            "flags": sorted(link["flags"]), "operstate": link.get("operstate"),
            "master": masks.name(link.get("master")),
            "promiscuity": link.get("promiscuity"), "allmulti": link.get("allmulti"),
            "txqlen": link.get("txqlen"), "mac": masks.mac(link.get("address")),
            "alias": link.get("ifalias"), "slave_kind": info.get("info_slave_kind")})
    return sorted(found, key=json.dumps)


def addresses(raw: str, masks: Masks) -> list[dict[str, Any]]:
    """Addresses without lifetimes; link-local ones reduced to their presence."""
    found = []
    for entry in json.loads(raw or "[]"):
        for addr in entry.get("addr_info", []):
            if "local" not in addr:
                continue
            local = "fe80::<from mac>" if link_local(addr["local"]) else addr["local"]
            found.append({"dev": masks.name(entry["ifname"]), "family": addr["family"],
                          "local": local, "prefixlen": addr["prefixlen"],
                          "broadcast": addr.get("broadcast"), "scope": addr["scope"]})
    return sorted(found, key=json.dumps)


def routes(raw4: str, raw6: str, masks: Masks) -> list[dict[str, Any]]:
    """Routes of every table, kernel flags (`linkdown`) left out. Not the local routes of
    link-local addresses: the kernel adds them when duplicate address detection ends."""
    found = []
    for raw in (raw4, raw6):
        for route in json.loads(raw or "[]"):
            if route.get("type") == "local" and link_local(str(route.get("dst", ""))):
                continue
            route = {k: v for k, v in route.items() if k != "flags"}
            for key in ("dst", "prefsrc", "gateway"):
                if key in route and link_local(str(route[key])):
                    route[key] = "fe80::<from mac>"
            if "dev" in route:
                route["dev"] = masks.name(route["dev"])
            found.append(route)
    return sorted(found, key=json.dumps)


def qdiscs(raw: str, masks: Masks) -> list[dict[str, Any]]:
    found = []
    for qdisc in json.loads(raw or "[]"):
        found.append({"dev": masks.name(qdisc.get("dev")), "kind": qdisc.get("kind"),
                      "handle": qdisc.get("handle"), "parent": qdisc.get("parent"),
                      "root": qdisc.get("root"), "options": qdisc.get("options")})
    return sorted(found, key=json.dumps)


def filters(sections: dict[str, str], masks: Masks) -> dict[str, list[str]]:
    found = {}
    for name, text in sections.items():
        if name.startswith("filters ") and text.strip():
            lines = [masks.text(line.strip()) for line in text.splitlines()]
            found[str(masks.name(name[len("filters "):]))] = lines
    return dict(sorted(found.items()))


def sysctls(raw: str, masks: Masks) -> dict[str, str]:
    found = {}
    for line in raw.splitlines():
        key, _, value = line.partition("=")
        parts = key.split("/")
        if len(parts) > 2 and parts[1] == "conf":
            parts[2] = str(masks.name(parts[2]))
        found["/".join(parts)] = " ".join(value.split())
    return dict(sorted(found.items()))


def firewall(raw: str, masks: Masks) -> list[str]:
    """iptables-save output without comments and counters; tables holding nothing (no rule,
    no chain of their own: a family's table a plugin only looked at) left out."""
    lines, table = [], []
    for line in raw.splitlines():
        if line.startswith("#"):
            continue
        table.append(masks.text(re.sub(r"\[\d+:\d+\]", "[-:-]", line)))
        if line == "COMMIT":
            if any(entry.startswith("-A ") or (entry.startswith(":") and " - " in entry)
                   for entry in table):
                lines += table
            table = []
    return lines + table


def empty_tables(raw: str) -> list[str]:
    """The tables `firewall` leaves out of iptables-save output: present, holding nothing."""
    names, table = [], []
    for line in raw.splitlines():
        if line.startswith("#"):
            continue
        table.append(line)
        if line == "COMMIT":
            if not any(entry.startswith("-A ") or (entry.startswith(":") and " - " in entry)
                       for entry in table):
                names.append(table[0].lstrip("*"))
            table = []
    return names


def nft_ruleset(raw: str, masks: Masks) -> list[str]:
    """`nft list ruleset` with counters and handles masked, the chains of each table sorted
    by name (nft lists them in creation order, which says nothing about what they do), and
    tables without chains left out."""
    tables: list[tuple[str, list[list[str]]]] = []
    chain: list[str] | None = None
    for line in raw.splitlines():
        line = masks.text(re.sub(r"counter packets \d+ bytes \d+", "counter", line))
        line = re.sub(r" # handle \d+", "", line)
        stripped = line.strip()
        if line.startswith("table "):
            tables.append((line, []))
        elif stripped.startswith(("chain ", "set ", "map ", "flowtable ")) and tables:
            chain = [stripped]
            tables[-1][1].append(chain)
        elif stripped == "}" and chain is not None:
            chain.append("}")
            chain = None
        elif stripped and chain is not None:
            chain.append(stripped)
    lines = []
    for header, chains in tables:
        if chains:
            lines.append(header)
            for block in sorted(chains):
                lines += block
    return lines


def snapshot(namespace: str, masks: Masks | None = None,
             extra_sysctls: Iterable[str] = ()) -> dict[str, Any]:
    """Everything above, of one namespace. `extra_sysctls` are keys under /proc/sys/net
    (`core/somaxconn`) read besides the usual ones."""
    masks = masks or Masks()
    raw = read_sections(namespace, extra_sysctls)
    return {"links": links(raw.get("links", ""), masks),
            "addresses": addresses(raw.get("addresses", ""), masks),
            "routes": routes(raw.get("routes4", ""), raw.get("routes6", ""), masks),
            "qdiscs": qdiscs(raw.get("qdiscs", ""), masks),
            "filters": filters(raw, masks),
            "sysctls": sysctls(raw.get("sysctls", ""), masks),
            "iptables": firewall(raw.get("iptables", ""), masks),
            "ip6tables": firewall(raw.get("ip6tables", ""), masks),
            "nft": nft_ruleset(raw.get("nft", ""), masks),
            "empty_tables": {family: empty_tables(raw.get(family, ""))
                             for family in ("iptables", "ip6tables")}}


def settle_dad(*namespaces: str, patience: float = 10.0) -> None:
    """Wait (at most `patience` seconds) until no IPv6 address but link-local ones is
    tentative: the kernel adds an address's local route when its duplicate address detection
    ends, so what both sides leave would depend on how fast each ran. Link-local addresses
    are not waited for: their routes are left out of `routes`, and they are reduced to their
    presence in `addresses`."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        tentative = False
        for namespace in namespaces:
            done = subprocess.run(["ip", "-n", namespace, "-j", "-6", "addr", "show",
                                   "tentative"], capture_output=True, text=True)
            for entry in json.loads(done.stdout or "[]"):
                if any("local" in addr and not link_local(addr["local"])
                       for addr in entry.get("addr_info", [])):
                    tentative = True
        if not tentative:
            return
        time.sleep(0.1)


def differences(ours: Any, reference: Any, path: str = "") -> list[str]:
    """Where two JSON-like values differ, one line per place."""
    if isinstance(ours, dict) and isinstance(reference, dict):
        found = []
        for key in sorted(set(ours) | set(reference), key=str):
            if key not in ours:
                found.append(f"{path}/{key}: ours has none, reference {reference[key]!r}")
            elif key not in reference:
                found.append(f"{path}/{key}: ours {ours[key]!r}, reference has none")
            else:
                found += differences(ours[key], reference[key], f"{path}/{key}")
        return found
    if (isinstance(ours, list) and isinstance(reference, list) and len(ours) == len(reference)
            and not all(isinstance(x, str) for x in ours)):
        return [line for index, (a, b) in enumerate(zip(ours, reference, strict=True))
                for line in differences(a, b, f"{path}[{index}]")]
    if ours != reference:
        return [f"{path or '/'}: ours {ours!r}, reference {reference!r}"]
    return []


# Differential runs at these versions are `make stress`'s: the same plugin code as 1.0.0 with
# an older result form, which the libcni conformance tests cover at every version.
STRESS_VERSIONS = frozenset({"0.4.0"})


def version_marks(version: str) -> list[Any]:
    import pytest

    return [pytest.mark.stress] if version in STRESS_VERSIONS else []


def version_params(versions: Iterable[str]) -> list[Any]:
    """pytest params of a differential test's versions, marked as `version_marks` says."""
    import pytest

    return [pytest.param(version, marks=version_marks(version), id=version)
            for version in versions]


def aspect_params(aspects: Iterable[str], cases: Iterable[str], versions: Iterable[str],
                  deliberate: set[tuple[str, str]], known_bugs: dict[tuple[str, str], str],
                  applies: Callable[[str, str], bool] = lambda aspect, case: True,
                  ) -> Iterator[Any]:
    """pytest params (aspect, case, version) of a differential test: the pairs compared by
    their own tests (`deliberate`) left out, a known bug of ours an xfail(strict) naming it."""
    import pytest

    for aspect in aspects:
        for case in cases:
            if (aspect, case) in deliberate or not applies(aspect, case):
                continue
            for version in versions:
                reason = known_bugs.get((aspect, case))
                marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
                marks += version_marks(version)
                yield pytest.param(aspect, case, version, marks=marks,
                                   id=f"{aspect}-{case}-{version}")
