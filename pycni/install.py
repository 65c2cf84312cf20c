"""Install a built tree into a CNI bin directory without a runtime ever seeing a half file.

The bundle is copied into a new versioned directory beside the links, then each
`<type>` link is created under a temporary name and renamed over the old one (rename is
atomic), so a runtime exec'ing `/opt/cni/bin/<type>` gets either the old or the new program.
Bundles two installs old are removed; the previous one stays for processes still running it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys

BUNDLE_PREFIX = ".pycni-"


def bundle_digest(bundle: str) -> str:
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(bundle):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, bundle).encode())
            with open(path, "rb") as f:
                digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()[:12]


def install(source_bin: str, target_bin: str) -> str:
    """Install `source_bin` (dist/bin: a bundle dir plus links) into `target_bin`."""
    from pycni import __version__

    bundle = os.path.join(source_bin, "pycni.bundle")
    if not os.path.isfile(os.path.join(bundle, "pycni")):
        raise SystemExit(f"no bundle at {bundle}: run `make build` first")
    types = sorted(n for n in os.listdir(source_bin)
                   if os.path.islink(os.path.join(source_bin, n)))
    os.makedirs(target_bin, exist_ok=True)
    name = f"{BUNDLE_PREFIX}{__version__}-{bundle_digest(bundle)}"
    in_use = _linked_bundles(target_bin, types) - {name}
    final = os.path.join(target_bin, name)
    if not os.path.isdir(final):
        staging = os.path.join(target_bin, f".staging-{name}-{os.getpid()}")
        shutil.copytree(bundle, staging, symlinks=True)
        os.rename(staging, final)
    for plugin_type in types:
        link = os.path.join(target_bin, plugin_type)
        tmp = os.path.join(target_bin, f".{plugin_type}.{os.getpid()}.new")
        if os.path.lexists(tmp):
            os.unlink(tmp)
        # the same program in the bundle as the source link: the launcher (`cni`)
        program = os.path.basename(os.readlink(os.path.join(source_bin, plugin_type)))
        os.symlink(os.path.join(name, program), tmp)
        os.replace(tmp, link)
    _prune(target_bin, keep={name, *(in_use or {_previous(target_bin, name)})})
    return final


def _linked_bundles(target_bin: str, types: list[str]) -> set[str]:
    """The bundles the links point into before the swap: what running processes use."""
    found: set[str] = set()
    for plugin_type in types:
        try:
            target = os.readlink(os.path.join(target_bin, plugin_type))
        except OSError:
            continue  # no link yet, or a regular file
        head = target.split("/", 1)[0]
        if head.startswith(BUNDLE_PREFIX):
            found.add(head)
    return found


def _previous(target_bin: str, current: str) -> str:
    """The newest other bundle, when no link says which one was in use (the directories'
    times are the build's, copied by copytree, not the install's)."""
    bundles = [n for n in os.listdir(target_bin) if n.startswith(BUNDLE_PREFIX) and n != current]
    bundles.sort(key=lambda n: os.stat(os.path.join(target_bin, n)).st_mtime)
    return bundles[-1] if bundles else ""


def _prune(target_bin: str, keep: set[str]) -> None:
    for entry in os.listdir(target_bin):
        if entry.startswith(BUNDLE_PREFIX) and entry not in keep:
            shutil.rmtree(os.path.join(target_bin, entry), ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pycni-install", description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", default="dist/bin")
    parser.add_argument("--to", dest="target", default="/opt/cni/bin")
    opts = parser.parse_args(argv)
    print(install(opts.source, opts.target), file=sys.stderr)


if __name__ == "__main__":
    main()
