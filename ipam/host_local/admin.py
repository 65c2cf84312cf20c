"""`pycni ipam ls|gc`: the node's host-local allocations, for people.

    pycni ipam ls [--data-dir DIR] [NETWORK ...]
    pycni ipam gc [--data-dir DIR] NETWORK [--valid CONTAINER/IFNAME ...] [--dry-run]

`gc` frees allocations made before this boot (their pods died with the boot); when
`--valid` lists the attachments that exist, it frees instead every allocation not listed.
The lock and last_reserved_ip files stay.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TextIO

from pycni.ipam.host_local.disk import Allocation, Allocations, boot_time, current_boot
from pycni.ipam.host_local.plugin import DEFAULT_DATA_DIR, collect


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def _boot_label(allocation: Allocation, boot: str, booted_at: float) -> str:
    return "earlier" if allocation.from_earlier_boot(boot, booted_at) else "current"


def networks(data_dir: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(data_dir)
                      if os.path.isdir(os.path.join(data_dir, n)) and not n.startswith("."))
    except FileNotFoundError:
        return []


def list_allocations(data_dir: str, names: list[str], out: TextIO | None = None) -> int:
    stream = out or sys.stdout
    boot, booted_at, now = current_boot(), boot_time(), time.time()
    rows = [("NETWORK", "ADDRESS", "CONTAINER", "IFNAME", "BOOT", "AGE")]
    for network in names or networks(data_dir):
        allocations = Allocations(data_dir, network)
        with allocations.store.locked():
            held = allocations.scan()
        for address in sorted(held, key=lambda a: (a.version, int(a))):
            a = held[address]
            rows.append((network, str(address), a.container_id, a.ifname or "-",
                         _boot_label(a, boot, booted_at), _age(now - a.created)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip(), file=stream)
    return 0


def gc(data_dir: str, network: str, valid: list[str] | None, dry_run: bool) -> int:
    keep = None
    if valid is not None:
        keep = set()
        for item in valid:
            container, sep, ifname = item.partition("/")
            if not sep or not container or not ifname:
                print(f"pycni ipam gc: --valid takes CONTAINER/IFNAME, not {item!r}",
                      file=sys.stderr)
                return 2
            keep.add((container, ifname))
    allocations = Allocations(data_dir, network)
    with allocations.store.locked():
        gone = collect(allocations, keep, earlier_boots=True, dry_run=dry_run)
    verb = "would free" if dry_run else "freed"
    for a in gone:
        print(f"{verb} {network} {a.address} ({a.container_id}/{a.ifname or '-'})")
    print(f"{verb} {len(gone)} allocation(s) in {network}", file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pycni ipam", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    commands = parser.add_subparsers(dest="command", required=True)
    ls = commands.add_parser("ls", help="list allocations")
    ls.add_argument("networks", nargs="*")
    collect_parser = commands.add_parser("gc", help="free leaked allocations")
    collect_parser.add_argument("network")
    collect_parser.add_argument("--valid", nargs="*", metavar="CONTAINER/IFNAME")
    collect_parser.add_argument("--dry-run", action="store_true")
    opts = parser.parse_args(argv)
    if opts.command == "ls":
        return list_allocations(opts.data_dir, opts.networks)
    return gc(opts.data_dir, opts.network, opts.valid, opts.dry_run)
