"""portmap: forward ports of the node to a pod (chained after the plugin giving it addresses).

The mappings come from the `portMappings` capability (`runtimeConfig.portMappings`). Keys and
the iptables layout are the reference plugin's, so rules made by either are removed by either
(nat table):

    PREROUTING, OUTPUT  -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
    CNI-HOSTPORT-DNAT   -m comment --comment 'dnat name: "<net>" id: "<ctr>"' -m multiport
                        -p <proto> --destination-ports <ports> [conditionsV4/V6] -j CNI-DN-<hash>
    CNI-DN-<hash>       per mapping: hairpin (and IPv4 localhost) -j CNI-HOSTPORT-SETMARK,
                        then -j DNAT --to-destination <pod>:<containerPort>
    CNI-HOSTPORT-SETMARK  -j MARK --set-xmark 0x2000/0x2000   (bit `markMasqBit`, 13)
    POSTROUTING (first) -j CNI-HOSTPORT-MASQ
    CNI-HOSTPORT-MASQ   -m mark --mark 0x2000/0x2000 -j MASQUERADE

The shared chains stay after DEL (a concurrent ADD may be using them); DEL removes the
container's own `CNI-DN-<hash>` chain and the jumps to it, in both families.

nftables keeps every rule in `inet pycni_portmap`, commented `pycni-portmap <net> <ctr>
<ifname>`; DEL and GC remove rules by that comment. DEL and GC clean both backends.

Beyond the reference: CHECK verifies only the families the pod has (the reference looks for
IPv6 rules of an IPv4-only pod and fails), and GC removes the rules of gone attachments.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from pydantic import Field

from pycni import config, link, sysctl
from pycni.errors import CNIError, InvalidConfig, NotReady
from pycni.firewall import (
    chain_name,
    detect_backend,
    ipt,
    ipt_has,
    iptables_restore,
    iptables_rules,
    iptables_save,
    nft_apply,
    nft_delete_handles,
    nft_list_rules,
    restore_line,
)
from pycni.result import Result
from pycni.skel import CmdArgs, Plugin

DNAT_CHAIN = "CNI-HOSTPORT-DNAT"
SETMARK_CHAIN = "CNI-HOSTPORT-SETMARK"
MASQ_CHAIN = "CNI-HOSTPORT-MASQ"
MASQ_COMMENT = "CNI portfwd requiring masquerade"
MARK_COMMENT = "CNI portfwd masquerade mark"
NFT_TABLE = "pycni_portmap"
NFT_CHAINS = {  # chain -> its base chain definition
    "prerouting": "type nat hook prerouting priority dstnat; policy accept;",
    "output": "type nat hook output priority -100; policy accept;",
    "postrouting": "type nat hook postrouting priority srcnat; policy accept;",
}
PROTOCOLS = ("tcp", "udp", "sctp")
LOCK_FILE = "/run/pycni/portmap.lock"
MULTIPORT_MAX = 15  # ports one `-m multiport` match takes
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# A pod address with its prefix: the address is DNAT's target, the subnet the hairpin source
# (the reference marks connections from the pod's whole subnet, so pods beside it reach it
# through the node's port too).
PodAddress = ipaddress.IPv4Interface | ipaddress.IPv6Interface


# --- config ---------------------------------------------------------------------------------

class PortMapping(config.Section):
    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = Field(default="", alias="hostIP")


class PortMapConf(config.NetConf):
    snat: bool | None = None  # default true
    masq_all: bool = False
    mark_masq_bit: int | None = None
    external_set_mark_chain: str | None = None
    conditions_v4: list[str] | None = None
    conditions_v6: list[str] | None = None
    backend: str | None = None
    port_mappings: list[PortMapping] = []

    @property
    def set_mark_chain(self) -> str:
        return self.external_set_mark_chain or SETMARK_CHAIN

    @property
    def mark(self) -> str:
        value = 1 << (13 if self.mark_masq_bit is None else self.mark_masq_bit)
        return f"{value:#x}/{value:#x}"


SOURCES = {"port_mappings": config.Override(runtime="portMappings")}


def load_conf(args: CmdArgs) -> PortMapConf:
    conf = config.load(PortMapConf, args, SOURCES)
    if conf.snat is None:
        conf.snat = True
    if conf.mark_masq_bit is not None:
        if conf.external_set_mark_chain:
            raise InvalidConfig("cannot specify externalSetMarkChain and markMasqBit")
        if not 0 <= conf.mark_masq_bit <= 31:
            raise InvalidConfig(f"invalid markMasqBit {conf.mark_masq_bit} "
                                "(must be between 0 and 31)")
    if conf.backend not in (None, "iptables", "nftables"):
        raise InvalidConfig(f"invalid backend {conf.backend!r}: iptables or nftables")
    if conf.backend is None:
        conf.backend = detect_backend()
    if conf.backend == "nftables" and (conf.conditions_v4 or conf.conditions_v6
                                       or conf.external_set_mark_chain):
        raise InvalidConfig("conditionsV4, conditionsV6 and externalSetMarkChain are "
                            "iptables matches: they need backend iptables")
    for mapping in conf.port_mappings:
        mapping.protocol = mapping.protocol.lower()
        if not 0 < mapping.host_port <= 65535:
            raise InvalidConfig(f"invalid host port number: {mapping.host_port}")
        if not 0 < mapping.container_port <= 65535:
            raise InvalidConfig(f"invalid container port number: {mapping.container_port}")
        if mapping.protocol not in PROTOCOLS:
            raise InvalidConfig(f"invalid protocol {mapping.protocol!r}: tcp, udp or sctp")
        if mapping.host_ip:
            try:
                ipaddress.ip_address(mapping.host_ip)
            except ValueError:
                raise InvalidConfig(f"invalid hostIP {mapping.host_ip!r}") from None
    return conf


def pod_addresses(result: Result, ifname: str) -> list[PodAddress]:
    """The first address of each family on the pod's interface, as the reference picks them:
    IPs whose interface index names `ifname` in a sandbox, or that carry no index."""
    found: dict[int, PodAddress] = {}
    for ip in result.ips:
        address = ipaddress.ip_interface(ip.address)
        if address.version in found:
            continue
        if ip.interface is not None and 0 <= ip.interface < len(result.interfaces):
            entry = result.interfaces[ip.interface]
            if entry.name != ifname or not entry.sandbox:
                continue
        found[address.version] = address
    return [found[v] for v in sorted(found)]


def mappings_for(conf: PortMapConf, version: int) -> list[PortMapping]:
    """The mappings that apply to a pod address of `version` (a hostIP limits its family)."""
    return [m for m in conf.port_mappings
            if not m.host_ip or ipaddress.ip_address(m.host_ip).version == version]


def _destination(mapping: PortMapping) -> str | None:
    """The hostIP a rule matches, None for any (unset or unspecified)."""
    if mapping.host_ip and not ipaddress.ip_address(mapping.host_ip).is_unspecified:
        return mapping.host_ip
    return None


def _to(address: Address, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


@contextmanager
def node_lock() -> Iterator[None]:
    """Serialise changes to the shared chains between concurrent ADDs and DELs."""
    from pycni import store

    try:
        store.make_dirs(os.path.dirname(LOCK_FILE))
    except OSError as exc:
        raise CNIError(f"failed to create {os.path.dirname(LOCK_FILE)}: {exc.strerror}") from None
    with store.flock(LOCK_FILE):
        yield


# --- iptables (the reference's chains) ------------------------------------------------------

def dnat_chain(conf: PortMapConf, container_id: str) -> str:
    return chain_name(conf.name, container_id).replace("CNI-", "CNI-DN-", 1)[:28]


def dnat_comment(network: str, container_id: str) -> str:
    return f'dnat name: "{network}" id: "{container_id}"'[:256]


def _family(address: Address | PodAddress) -> str:
    return str(address.version)


def toplevel_rules(conf: PortMapConf) -> list[tuple[str, ...]]:
    """The shared rules: (chain, match..., -j target), in the order they are made."""
    rules: list[tuple[str, ...]] = []
    if conf.snat and not conf.external_set_mark_chain:
        rules += [(SETMARK_CHAIN, "-m", "comment", "--comment", MARK_COMMENT,
                   "-j", "MARK", "--set-xmark", conf.mark),
                  (MASQ_CHAIN, "-m", "mark", "--mark", conf.mark, "-j", "MASQUERADE"),
                  ("POSTROUTING", "-m", "comment", "--comment", MASQ_COMMENT,
                   "-j", MASQ_CHAIN)]
    rules += [(entry, "-m", "addrtype", "--dst-type", "LOCAL", "-j", DNAT_CHAIN)
              for entry in ("PREROUTING", "OUTPUT")]
    return rules


def container_rules(conf: PortMapConf, container_id: str,
                    address: PodAddress,
                    ) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """The container's rules in its own chain, and the jumps to it from CNI-HOSTPORT-DNAT."""
    chain, mappings = dnat_chain(conf, container_id), mappings_for(conf, address.version)
    conditions = (conf.conditions_v6 if address.version == 6 else conf.conditions_v4) or []
    jumps: list[tuple[str, ...]] = []
    for protocol in sorted({m.protocol for m in mappings}):
        ports = sorted({m.host_port for m in mappings if m.protocol == protocol})
        for start in range(0, len(ports), MULTIPORT_MAX):
            group = ",".join(map(str, ports[start:start + MULTIPORT_MAX]))
            jumps.append((DNAT_CHAIN, "-m", "comment", "--comment",
                          dnat_comment(conf.name, container_id), "-m", "multiport",
                          "-p", protocol, "--destination-ports", group, *conditions,
                          "-j", chain))
    rules: list[tuple[str, ...]] = []
    subnet = str(address.network)
    for mapping in mappings:
        base: tuple[str, ...] = (chain, "-p", mapping.protocol, "--dport",
                                 str(mapping.host_port))
        destination = _destination(mapping)
        if destination:
            base += ("-d", destination)
        if conf.snat:  # the mark rules come before the DNAT
            if conf.masq_all:
                rules.append((*base, "-j", conf.set_mark_chain))
            else:
                rules.append((*base, "-s", subnet, "-j", conf.set_mark_chain))  # hairpin
                if address.version == 4:
                    rules.append((*base, "-s", "127.0.0.1", "-j", conf.set_mark_chain))
        rules.append((*base, "-j", "DNAT", "--to-destination",
                      _to(address.ip, mapping.container_port)))
    return rules, jumps


def iptables_add(conf: PortMapConf, container_id: str,
                 address: PodAddress) -> None:
    """The shared chains and rules where missing, and the container's chain (replacing an
    earlier ADD's) with its jumps, in one iptables-restore transaction: a process killed
    halfway leaves all of it or nothing."""
    family = _family(address)
    with node_lock():
        chain = dnat_chain(conf, container_id)
        chains, present = iptables_save(family)
        shared = [DNAT_CHAIN] + ([SETMARK_CHAIN, MASQ_CHAIN]
                                 if conf.snat and not conf.external_set_mark_chain else [])
        lines = [f":{name} - [0:0]" for name in (*shared, chain) if name not in chains]
        if chain in chains:
            lines.append(f":{chain} - [0:0]")  # declared again: flushed
        for rule in toplevel_rules(conf):
            if not ipt_has(family, *rule):
                # POSTROUTING first: the bridge's and ptp's masquerade rules follow it.
                lines.append(restore_line("-I" if rule[0] == "POSTROUTING" else "-A", *rule))
        lines += [restore_line("-D", *rule[1:]) for rule in present
                  if rule[1] == DNAT_CHAIN and rule[-2:] == ["-j", chain]]
        rules, jumps = container_rules(conf, container_id, address)
        lines += [restore_line("-A", *rule) for rule in (*rules, *jumps)]
        iptables_restore(family, lines)


def _iptables_remove(family: str, chain: str) -> None:
    """Drop a container chain and every jump to it; none is fine."""
    chains, rules = iptables_save(family)
    if chain not in chains and not any(rule[-2:] == ["-j", chain] for rule in rules):
        return
    for rule in rules:
        if rule[1] == DNAT_CHAIN and rule[-2:] == ["-j", chain]:
            ipt(family, "-D", *rule[1:], check=False)
    ipt(family, "-F", chain, check=False)
    ipt(family, "-X", chain, check=False)


def iptables_check(conf: PortMapConf, container_id: str,
                   address: PodAddress) -> None:
    family = _family(address)
    rules, jumps = container_rules(conf, container_id, address)
    for rule in (*toplevel_rules(conf), *rules, *jumps):
        if not ipt_has(family, *rule):
            raise CNIError(f"IPv{family} port forwarding rule missing in chain {rule[0]}: "
                           f"{' '.join(rule[1:])}")


def _iptables_owners(family: str) -> dict[str, tuple[str, str]]:
    """Container chains by name, with the (network, container) their jumps' comments name."""
    owners = {}
    for rule in iptables_rules(family):
        if rule[1] == DNAT_CHAIN and "--comment" in rule and rule[-2] == "-j":
            text = rule[rule.index("--comment") + 1]
            prefix = 'dnat name: "'
            if text.startswith(prefix) and '" id: "' in text and text.endswith('"'):
                network, _, container = text[len(prefix):-1].partition('" id: "')
                owners[rule[-1]] = (network, container)
    return owners


# --- nftables (our own table) -----------------------------------------------------------------

def nft_comment(network: str, container_id: str, ifname: str) -> str:
    return f"pycni-portmap {network} {container_id} {ifname}"


def nft_rules(conf: PortMapConf, address: PodAddress,
              comment: str) -> list[tuple[str, str]]:
    """(chain, rule text) for a pod address: DNAT in prerouting and output, masquerade of
    hairpin, localhost (IPv4) or all (masqAll) forwarded connections in postrouting."""
    ip = "ip6" if address.version == 6 else "ip"
    nfproto = "ipv6" if address.version == 6 else "ipv4"
    found: list[tuple[str, str]] = []
    for mapping in mappings_for(conf, address.version):
        destination = _destination(mapping)
        match = (f"meta nfproto {nfproto} fib daddr type local "
                 + (f"{ip} daddr {destination} " if destination else "")
                 + f"{mapping.protocol} dport {mapping.host_port}")
        dnat = f"{match} dnat {ip} to {_to(address.ip, mapping.container_port)}"
        found += [("prerouting", dnat), ("output", dnat)]
        if conf.snat:
            forwarded = (f"{ip} daddr {address.ip} {mapping.protocol} dport "
                         f"{mapping.container_port} ct status dnat "
                         f"ct original proto-dst {mapping.host_port}")
            sources = [""] if conf.masq_all else (
                [f"{ip} saddr {address.network} "]
                + ([f"{ip} saddr 127.0.0.1 "] if address.version == 4 else []))
            found += [("postrouting", f"{source}{forwarded} masquerade")
                      for source in sources]
    return [(chain, f'{rule} comment "{comment}"') for chain, rule in found]


def nft_add(conf: PortMapConf, container_id: str, ifname: str,
            addresses: list[PodAddress]) -> None:
    comment = nft_comment(conf.name, container_id, ifname)
    nft_del(comment)  # a repeated ADD replaces the attachment's rules
    script = f"add table inet {NFT_TABLE}\n" + "".join(
        f"add chain inet {NFT_TABLE} {chain} {{ {hook} }}\n"
        for chain, hook in NFT_CHAINS.items())
    for address in addresses:
        script += "".join(f"add rule inet {NFT_TABLE} {chain} {rule}\n"
                          for chain, rule in nft_rules(conf, address, comment))
    nft_apply(script)


def nft_del(comment: str) -> None:
    for chain in NFT_CHAINS:
        nft_delete_handles("inet", NFT_TABLE, chain,
                            [r["handle"] for r in nft_list_rules("inet", NFT_TABLE, chain)
                             if r.get("comment") == comment])


def nft_check(conf: PortMapConf, container_id: str, ifname: str,
              addresses: list[PodAddress]) -> None:
    comment = nft_comment(conf.name, container_id, ifname)
    for chain in NFT_CHAINS:
        expected = sum(1 for address in addresses
                       for owner, _ in nft_rules(conf, address, comment) if owner == chain)
        present = sum(1 for r in nft_list_rules("inet", NFT_TABLE, chain)
                      if r.get("comment") == comment)
        if present != expected:
            raise CNIError(f"nftables chain inet {NFT_TABLE} {chain} holds {present} port "
                           f"forwarding rule(s) of this attachment, expected {expected}")


# --- node side helpers ----------------------------------------------------------------------

def enable_localnet_routing(address: ipaddress.IPv4Address) -> None:
    """127.0.0.1:hostPort reaches the pod only if the interface towards it routes localnet."""
    with link.socket() as host:
        try:
            route = host.route("get", dst=str(address))[0]
            name = link.get(host, route.get_attr("RTA_OIF")).name
        except Exception:  # noqa: BLE001 - no route: nothing to enable
            return
    sysctl.write_quietly(f"net/ipv4/conf/{name}/route_localnet", "1")


def flush_udp_conntrack(conf: PortMapConf) -> None:
    """Drop conntrack entries of mapped UDP ports: packets sent before the mapping existed
    would keep their old (unmapped) entry. Quietly skipped without `conntrack`."""
    if not shutil.which("conntrack"):
        return
    for mapping in conf.port_mappings:
        if mapping.protocol == "udp":
            for family in ("ipv4", "ipv6"):
                subprocess.run(["conntrack", "-D", "-f", family, "-p", "udp",
                                "--orig-port-dst", str(mapping.host_port)],
                               capture_output=True, check=False)


# --- the verbs ------------------------------------------------------------------------------

def cmd_add(args: CmdArgs) -> Result:
    conf = load_conf(args)
    prev = args.require_prev_result()
    if not conf.port_mappings:
        return prev
    addresses = pod_addresses(prev, args.ifname)
    if not addresses:
        raise CNIError(f"prevResult holds no address of {args.ifname!r} to forward ports to")
    with ExitStack() as undo:
        if conf.backend == "nftables":
            undo.callback(nft_del, nft_comment(conf.name, args.container_id, args.ifname))
            nft_add(conf, args.container_id, args.ifname, addresses)
        else:
            for address in addresses:
                undo.callback(_iptables_remove, _family(address),
                              dnat_chain(conf, args.container_id))
                iptables_add(conf, args.container_id, address)
        if conf.snat:
            for address in addresses:
                if isinstance(address, ipaddress.IPv4Interface):
                    enable_localnet_routing(address.ip)
        flush_udp_conntrack(conf)
        undo.pop_all()
    return prev


def cmd_del(args: CmdArgs) -> None:
    """Remove the attachment's rules from both backends, whatever the config says now."""
    conf = load_conf(args)
    chain = dnat_chain(conf, args.container_id)
    with node_lock():
        for family in ("4", "6"):
            if shutil.which("ip6tables" if family == "6" else "iptables"):
                _iptables_remove(family, chain)
    nft_del(nft_comment(conf.name, args.container_id, args.ifname))


def cmd_check(args: CmdArgs) -> None:
    conf = load_conf(args)
    prev = args.require_prev_result()
    if not conf.port_mappings:
        return
    addresses = pod_addresses(prev, args.ifname)
    if conf.backend == "nftables":
        nft_check(conf, args.container_id, args.ifname, addresses)
    else:
        for address in addresses:  # only the pod's families
            iptables_check(conf, args.container_id, address)


def cmd_gc(args: CmdArgs) -> None:
    from pycni.config import valid_attachments

    conf = load_conf(args)
    valid = valid_attachments(args)
    containers = {container for container, _ in valid}
    with node_lock():
        for family in ("4", "6"):
            if not shutil.which("ip6tables" if family == "6" else "iptables"):
                continue
            for chain, (network, container) in _iptables_owners(family).items():
                if network == conf.name and container not in containers:
                    _iptables_remove(family, chain)
    if not shutil.which("nft"):
        return
    for chain in NFT_CHAINS:
        stale = []
        for rule in nft_list_rules("inet", NFT_TABLE, chain):
            words = str(rule.get("comment", "")).split(" ")
            if len(words) == 4 and words[0] == "pycni-portmap" and words[1] == conf.name and (
                    (words[2], words[3]) not in valid):
                stale.append(rule["handle"])
        nft_delete_handles("inet", NFT_TABLE, chain, stale)


def cmd_status(args: CmdArgs) -> None:
    conf = load_conf(args)
    tool = "iptables" if conf.backend == "iptables" else "nft"
    if not shutil.which(tool):
        raise NotReady(f"{tool} not found: portmap cannot forward ports")


PLUGIN = Plugin("pycni portmap plugin", add=cmd_add, delete=cmd_del, check=cmd_check,
                status=cmd_status, gc=cmd_gc)
