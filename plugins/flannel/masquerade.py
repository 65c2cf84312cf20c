"""The agent's firewall rules: masquerade pod traffic leaving the cluster network, accept
forwarding of pod traffic.

iptables (flanneld's chains): nat `FLANNEL-POSTRTG` jumped to from POSTROUTING, filter
`FLANNEL-FWD` jumped to from FORWARD; each chain is rewritten whole by one
`iptables-restore --noflush`, so a resync never leaves a half-written chain. nftables
(net-conf `EnableNFTables: true`): table `<family> flannel-ipv4|ipv6` replaced in one `nft -f`.
Traffic kube-proxy marked (0x4000) and traffic between pod subnets is not masqueraded.
"""

from __future__ import annotations

import ipaddress
import subprocess

from pycni import firewall

POSTROUTING_CHAIN = "FLANNEL-POSTRTG"
FORWARD_CHAIN = "FLANNEL-FWD"
COMMENT = "flanneld masq"
FORWARD_COMMENT = "flanneld forward"
KUBE_MARK = "0x4000/0x4000"
MULTICAST = {4: "224.0.0.0/4", 6: "ff00::/8"}

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


class FirewallError(Exception):
    pass


def _run(argv: list[str], stdin: str | None = None) -> None:
    firewall.run(argv, stdin, error=FirewallError)


def _succeeds(argv: list[str]) -> bool:
    return subprocess.run(argv, capture_output=True).returncode == 0


def iptables_script(network: Net, subnet: Net, masquerade: bool) -> str:
    comment = f'-m comment --comment "{COMMENT}"'
    lines = ["*nat", f":{POSTROUTING_CHAIN} - [0:0]"]
    if masquerade:
        multicast = MULTICAST[network.version]
        lines += [
            f"-A {POSTROUTING_CHAIN} -m mark --mark {KUBE_MARK} {comment} -j RETURN",
            f"-A {POSTROUTING_CHAIN} -s {subnet} -d {network} {comment} -j RETURN",
            f"-A {POSTROUTING_CHAIN} -s {network} -d {subnet} {comment} -j RETURN",
            f"-A {POSTROUTING_CHAIN} ! -s {network} -d {subnet} {comment} -j RETURN",
            f"-A {POSTROUTING_CHAIN} -s {network} ! -d {multicast} {comment} "
            f"-j MASQUERADE --random-fully",
            f"-A {POSTROUTING_CHAIN} ! -s {network} -d {network} {comment} "
            f"-j MASQUERADE --random-fully",
        ]
    forward = f'-m comment --comment "{FORWARD_COMMENT}"'
    lines += ["COMMIT", "*filter", f":{FORWARD_CHAIN} - [0:0]",
              f"-A {FORWARD_CHAIN} -s {network} {forward} -j ACCEPT",
              f"-A {FORWARD_CHAIN} -d {network} {forward} -j ACCEPT", "COMMIT"]
    return "\n".join(lines) + "\n"


def apply_iptables(network: Net, subnet: Net, masquerade: bool) -> None:
    tool = "ip6tables" if network.version == 6 else "iptables"
    _run([f"{tool}-restore", "-w", "--noflush"], iptables_script(network, subnet, masquerade))
    for table, hook, chain, text in (("nat", "POSTROUTING", POSTROUTING_CHAIN, COMMENT),
                                     ("filter", "FORWARD", FORWARD_CHAIN, FORWARD_COMMENT)):
        jump = [hook, "-m", "comment", "--comment", text, "-j", chain]
        if not _succeeds([tool, "-w", "-t", table, "-C", *jump]):
            _run([tool, "-w", "-t", table, "-I", *jump])


def nftables_script(network: Net, subnet: Net, masquerade: bool) -> str:
    family = "ip" if network.version == 4 else "ip6"
    table = f"flannel-ipv{network.version}"
    rules = []
    if masquerade:
        multicast = MULTICAST[network.version]
        rules = [
            "meta mark & 0x4000 == 0x4000 return",
            f"{family} saddr {subnet} {family} daddr {network} return",
            f"{family} saddr {network} {family} daddr {subnet} return",
            f"{family} saddr != {network} {family} daddr {subnet} return",
            f"{family} saddr {network} {family} daddr != {multicast} masquerade fully-random",
            f"{family} saddr != {network} {family} daddr {network} masquerade fully-random",
        ]
    body = "\n".join(f"    {rule}" for rule in rules)
    return (f"add table {family} {table}\ndelete table {family} {table}\n"
            f"table {family} {table} {{\n"
            f"  chain postrtg {{\n    type nat hook postrouting priority srcnat; policy accept;\n"
            f"{body}\n  }}\n"
            f"  chain forward {{\n    type filter hook forward priority filter; policy accept;\n"
            f"    {family} saddr {network} accept\n    {family} daddr {network} accept\n  }}\n}}\n")


def apply_nftables(network: Net, subnet: Net, masquerade: bool) -> None:
    _run(["nft", "-f", "-"], nftables_script(network, subnet, masquerade))


def apply(network: Net, subnet: Net, masquerade: bool, use_nftables: bool) -> None:
    """Write the rules for one address family (idempotent: safe to repeat on resync)."""
    if use_nftables:
        apply_nftables(network, subnet, masquerade)
    else:
        apply_iptables(network, subnet, masquerade)
