"""Masquerade and MAC spoof-check rules, owned per attachment so DEL and GC remove exactly
their own.

Masquerade has two backends. iptables writes the reference plugins' layout (a `CNI-<hash>`
chain per network and container in the nat table, jumped to from POSTROUTING, commented
`name: "<net>" id: "<container>"`), so rules made by either are removed by either. nftables
keeps one rule per address in `inet pycni_masquerade`, commented `pycni <net> <container>
<ifname>`. DEL and GC clean both backends: what a node switched from is cleaned too.

Spoof check uses the reference's nftables layout: table `bridge nat`, base chain
`PREROUTING`, a chain `cni-br-iface-<container>-<ifname>` (and `...-mac`) per attachment.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
from collections.abc import Iterable

from pycni import faults
from pycni.errors import CNIError

NFT_TABLE = "pycni_masquerade"
SPOOF_TABLE = "nat"
SPOOF_BASE = "PREROUTING"


def run(argv: list[str], stdin: str | None = None, check: bool = True,
        error: type[Exception] = CNIError) -> str:
    """Run a firewall command; its stdout ("" when it failed and `check` is off). `error`
    is raised when the command is missing or, with `check`, fails."""
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise error(f"{argv[0]} not found: install it or choose another backend") from None
    if check and done.returncode != 0:
        raise error(f"{' '.join(argv[:4])}... failed: {done.stderr.strip()}")
    if done.returncode == 0 and changes(argv):
        faults.point(" ".join(argv[:6]))
    return done.stdout if done.returncode == 0 else ""


def changes(argv: list[str]) -> bool:
    """Whether a firewall command changes rules (a point follows it), not only reads."""
    if argv[0] == "nft":
        return "-f" in argv
    if argv[0].endswith("-restore"):
        return True
    return any(flag in argv for flag in ("-A", "-I", "-D", "-N", "-F", "-X", "-R", "-P"))


def detect_backend() -> str:
    """iptables where its command exists (as the reference), nftables otherwise."""
    return "iptables" if shutil.which("iptables") else "nftables"


# --- masquerade: iptables (the reference's chains) --------------------------------------------

def chain_name(network: str, container_id: str) -> str:
    return ("CNI-" + hashlib.sha512((network + container_id).encode()).hexdigest())[:28]


def iptables_comment(network: str, container_id: str) -> str:
    return f'name: "{network}" id: "{container_id}"'


def _iptables(family: str) -> str:
    return "ip6tables" if family == "6" else "iptables"


def ipt(family: str, *args: str, check: bool = True) -> str:
    return run([_iptables(family), "-w", "-t", "nat", *args], check=check)


def ipt_has(family: str, *rule: str) -> bool:
    done = subprocess.run([_iptables(family), "-w", "-t", "nat", "-C", *rule],
                          capture_output=True)
    return done.returncode == 0


def restore_line(*words: str) -> str:
    """One `iptables-restore` line: words with spaces or quotes double-quoted, as
    iptables-save writes them."""
    return " ".join(word if word and not any(c in word for c in ' "\\\'') else
                    '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
                    for word in words)


def iptables_restore(family: str, lines: list[str]) -> None:
    """Apply `lines` to the nat table in one transaction (all or nothing, also when the
    process dies halfway), leaving everything else as it is."""
    if lines:
        run([f"{_iptables(family)}-restore", "-w", "--noflush"],
            stdin="*nat\n" + "".join(f"{line}\n" for line in lines) + "COMMIT\n")


def _iptables_add(network: str, container_id: str, cidr: str) -> None:
    import ipaddress

    iface = ipaddress.ip_interface(cidr)
    family = str(iface.version)
    chain, comment = chain_name(network, container_id), iptables_comment(network, container_id)
    multicast = "ff00::/8" if family == "6" else "224.0.0.0/4"
    lines = [] if chain in iptables_save(family)[0] else [f":{chain} - [0:0]"]
    for rule in ((chain, "-d", str(iface.network), "-j", "ACCEPT", "-m", "comment",
                  "--comment", comment),
                 (chain, "!", "-d", multicast, "-j", "MASQUERADE", "-m", "comment",
                  "--comment", comment),
                 ("POSTROUTING", "-s", str(iface.ip), "-j", chain, "-m", "comment",
                  "--comment", comment)):
        if lines or not ipt_has(family, *rule):
            lines.append(restore_line("-A", *rule))
    iptables_restore(family, lines)


def iptables_save(family: str) -> tuple[set[str], list[list[str]]]:
    """The nat table: its chains, and its rules as `iptables-save` argument lists
    (`-A CHAIN ...`)."""
    if not shutil.which(f"{_iptables(family)}-save"):
        return set(), []
    text = run([f"{_iptables(family)}-save", "-t", "nat"], check=False)
    chains = {line[1:].split(" ", 1)[0] for line in text.splitlines() if line.startswith(":")}
    return chains, [shlex.split(line) for line in text.splitlines() if line.startswith("-A ")]


def iptables_rules(family: str) -> list[list[str]]:
    """The nat table's rules as `iptables-save` argument lists (`-A CHAIN ...`)."""
    return iptables_save(family)[1]


def _iptables_remove_chain(family: str, chain: str, rules: list[list[str]]) -> None:
    for rule in rules:
        if rule[1] == "POSTROUTING" and rule[-2:] == ["-j", chain]:
            ipt(family, "-D", *rule[1:], check=False)
    ipt(family, "-F", chain, check=False)
    ipt(family, "-X", chain, check=False)


def _iptables_owners(family: str) -> dict[str, tuple[str, str]]:
    """CNI chains by name, with the (network, container) their comments name."""
    owners = {}
    for rule in iptables_rules(family):
        if rule[1].startswith("CNI-") and "--comment" in rule:
            text = rule[rule.index("--comment") + 1]
            if text.startswith('name: "') and '" id: "' in text and text.endswith('"'):
                network, _, container = text[len('name: "'):-1].partition('" id: "')
                owners[rule[1]] = (network, container)
    return owners


# --- masquerade: nftables -------------------------------------------------------------------

def nft_comment(network: str, container_id: str, ifname: str) -> str:
    return f"pycni {network} {container_id} {ifname}"


def nft_apply(script: str) -> None:
    run(["nft", "-f", "-"], stdin=script)


def nft_list_rules(family: str, table: str, chain: str) -> list[dict[str, object]]:
    if not shutil.which("nft"):
        return []
    text = run(["nft", "-j", "-a", "list", "chain", family, table, chain], check=False)
    if not text:
        return []
    return [item["rule"] for item in json.loads(text).get("nftables", []) if "rule" in item]


def _nft_add(network: str, container_id: str, ifname: str, cidr: str) -> None:
    import ipaddress

    iface = ipaddress.ip_interface(cidr)
    ip = "ip6" if iface.version == 6 else "ip"
    multicast = "ff00::/8" if iface.version == 6 else "224.0.0.0/4"
    comment = nft_comment(network, container_id, ifname)
    nft_apply(f"add table inet {NFT_TABLE}\n"
         f"add chain inet {NFT_TABLE} postrouting "
         "{ type nat hook postrouting priority srcnat; policy accept; }\n"
         f"add rule inet {NFT_TABLE} postrouting {ip} saddr {iface.ip} "
         f"{ip} daddr != {iface.network} {ip} daddr != {multicast} masquerade "
         f'comment "{comment}"\n')


def nft_delete_handles(family: str, table: str, chain: str, handles: Iterable[object]) -> None:
    script = "".join(f"delete rule {family} {table} {chain} handle {h}\n" for h in handles)
    if script:
        run(["nft", "-f", "-"], stdin=script, check=False)


# --- masquerade: the interface plugins use ---------------------------------------------------

def masquerade_add(backend: str, network: str, container_id: str, ifname: str,
                   cidrs: Iterable[str]) -> None:
    for cidr in cidrs:
        if backend == "nftables":
            _nft_add(network, container_id, ifname, cidr)
        else:
            _iptables_add(network, container_id, cidr)


def masquerade_del(network: str, container_id: str, ifname: str) -> None:
    """Remove the attachment's masquerade rules from both backends; none is fine."""
    chain = chain_name(network, container_id)
    for family in ("4", "6"):
        chains, rules = iptables_save(family)
        if chain in chains or any(rule[-2:] == ["-j", chain] for rule in rules):
            _iptables_remove_chain(family, chain, rules)
    comment = nft_comment(network, container_id, ifname)
    nft_delete_handles("inet", NFT_TABLE, "postrouting",
                        [r["handle"] for r in nft_list_rules("inet", NFT_TABLE, "postrouting")
                         if r.get("comment") == comment])


def masquerade_gc(network: str, valid: set[tuple[str, str]]) -> None:
    """Remove the network's masquerade rules of attachments not in `valid`."""
    containers = {container for container, _ in valid}
    for family in ("4", "6"):
        for chain, (owner_net, container) in _iptables_owners(family).items():
            if owner_net == network and container not in containers:
                _iptables_remove_chain(family, chain, iptables_rules(family))
    stale = []
    for rule in nft_list_rules("inet", NFT_TABLE, "postrouting"):
        words = str(rule.get("comment", "")).split(" ")
        if len(words) == 4 and words[0] == "pycni" and words[1] == network and (
                (words[2], words[3]) not in valid):
            stale.append(rule["handle"])
    nft_delete_handles("inet", NFT_TABLE, "postrouting", stale)


# --- MAC spoof check (nftables, bridge family) -----------------------------------------------

def spoof_ref(container_id: str, ifname: str) -> str:
    return f"{container_id}-{ifname}"


def _spoof_chain(ref: str) -> str:
    return f"cni-br-iface-{ref}"


def spoofcheck_add(network: str, host_iface: str, mac: str, ref: str) -> None:
    """Drop frames entering from `host_iface` whose source MAC is not `mac`."""
    chain, comment = _spoof_chain(ref), f"macspoofchk-{ref}"
    nft_apply(f"add table bridge {SPOOF_TABLE}\n"
         f"add chain bridge {SPOOF_TABLE} {SPOOF_BASE} "
         "{ type filter hook prerouting priority -300; policy accept; }\n"
         f"add chain bridge {SPOOF_TABLE} {chain}\n"
         f"add chain bridge {SPOOF_TABLE} {chain}-mac\n"
         f"flush chain bridge {SPOOF_TABLE} {chain}\n"
         f"flush chain bridge {SPOOF_TABLE} {chain}-mac\n"
         f'add rule bridge {SPOOF_TABLE} {SPOOF_BASE} iifname "{host_iface}" jump {chain} '
         f'comment "{comment}"\n'
         # Our mark of the owning network, for GC (the reference's teardown ignores it).
         f'add rule bridge {SPOOF_TABLE} {chain} jump {chain}-mac '
         f'comment "{comment} network {network}"\n'
         f'add rule bridge {SPOOF_TABLE} {chain}-mac ether saddr {mac} return '
         f'comment "{comment}"\n'
         f'add rule bridge {SPOOF_TABLE} {chain}-mac drop comment "{comment}"\n')


def spoofcheck_del(ref: str) -> None:
    chain, comment = _spoof_chain(ref), f"macspoofchk-{ref}"
    nft_delete_handles("bridge", SPOOF_TABLE, SPOOF_BASE,
                        [r["handle"] for r in nft_list_rules("bridge", SPOOF_TABLE, SPOOF_BASE)
                         if r.get("comment") == comment])
    if nft_list_rules("bridge", SPOOF_TABLE, chain) or nft_list_rules("bridge", SPOOF_TABLE,
                                                               f"{chain}-mac"):
        run(["nft", "-f", "-"], check=False,
             stdin=f"delete chain bridge {SPOOF_TABLE} {chain}\n"
                   f"delete chain bridge {SPOOF_TABLE} {chain}-mac\n")


def spoofcheck_gc(network: str, valid_refs: set[str]) -> None:
    """Remove the network's spoof checks whose attachment is not in `valid_refs`."""
    if not shutil.which("nft"):
        return
    text = run(["nft", "-j", "list", "table", "bridge", SPOOF_TABLE], check=False)
    if not text:
        return
    mark = f" network {network}"
    for item in json.loads(text).get("nftables", []):
        comment = str(item.get("rule", {}).get("comment", ""))
        if comment.startswith("macspoofchk-") and comment.endswith(mark):
            ref = comment[len("macspoofchk-"):-len(mark)]
            if ref not in valid_refs:
                spoofcheck_del(ref)
