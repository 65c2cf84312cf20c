"""`pycni status`: what this node runs, in a few lines (read-only; `pycni doctor` judges it).

    pycni status [--cni-conf-dir DIR] [--cni-bin-dir DIR] [--subnet-file FILE]
                 [--ipam-dir DIR] [--socket PATH] [--json]

The installed bundle (where the links point), the CNI config runtimes use (the first file),
whether `pycni daemon` answers, the flannel agent's lease from subnet.env, and host-local's
allocations per network.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from pycni import __version__, launch, registry, spec


def bundle(bin_dir: str) -> dict[str, Any]:
    """Which bundle the type links point to, and how many types are linked."""
    targets = set()
    linked = []
    for plugin_type in sorted(registry.PLUGINS):
        path = os.path.join(bin_dir, plugin_type)
        if os.path.islink(path):
            linked.append(plugin_type)
            targets.add(os.path.dirname(os.readlink(path)))
    return {"dir": bin_dir, "bundles": sorted(targets), "types": linked}


def config_in_use(conf_dir: str) -> dict[str, Any]:
    from pycni.doctor import CONFIG_SUFFIXES, load_config, referenced_types

    try:
        names = sorted(n for n in os.listdir(conf_dir) if n.endswith(CONFIG_SUFFIXES))
    except OSError as exc:
        return {"dir": conf_dir, "file": None, "error": exc.strerror}
    if not names:
        return {"dir": conf_dir, "file": None, "error": "no configuration"}
    config = load_config(os.path.join(conf_dir, names[0]))
    if config.data is None:
        return {"dir": conf_dir, "file": config.path, "error": config.error}
    return {"dir": conf_dir, "file": config.path, "network": config.data.get("name"),
            "types": sorted({t for t, _ in referenced_types(config.data)}),
            "others": names[1:]}


def daemon(path: str) -> dict[str, Any]:
    """Whether a server accepts connections on `path` (nothing is sent: it sees a caller
    leave and goes on)."""
    import socket

    if not path:
        return {"socket": "", "answering": False, "why": "turned off (PYCNI_DAEMON_SOCKET='')"}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError as exc:
            return {"socket": path, "answering": False, "why": exc.strerror}
    return {"socket": path, "answering": True}


def flannel(subnet_file: str) -> dict[str, Any]:
    from pycni.plugins.flannel import subnet_env

    try:
        env = subnet_env.read(subnet_file)
    except FileNotFoundError:
        return {"file": subnet_file, "error": "missing (is the agent running?)"}
    except (OSError, ValueError) as exc:
        return {"file": subnet_file, "error": str(exc)}
    return {"file": subnet_file, "network": str(env.network) if env.network else None,
            "subnet": str(env.subnet) if env.subnet else None, "mtu": env.mtu,
            "ipmasq": env.ipmasq}


def allocations(ipam_dir: str) -> dict[str, int]:
    from pycni.ipam.host_local.admin import networks
    from pycni.ipam.host_local.disk import Allocations

    counts = {}
    for network in networks(ipam_dir):
        held = Allocations(ipam_dir, network)
        with held.store.locked():
            counts[network] = len(held.scan())
    return counts


def collect(opts: argparse.Namespace) -> dict[str, Any]:
    return {"version": __version__, "cni_versions": list(spec.ALL),
            "bundle": bundle(opts.cni_bin_dir), "config": config_in_use(opts.cni_conf_dir),
            "daemon": daemon(opts.socket), "flannel": flannel(opts.subnet_file),
            "allocations": allocations(opts.ipam_dir)}


def render(found: dict[str, Any]) -> list[str]:
    lines = [f"pycni {found['version']} (CNI {', '.join(found['cni_versions'])})"]
    linked = found["bundle"]
    lines.append(f"bundle: {linked['dir']}: {len(linked['types'])} types linked to "
                 f"{', '.join(linked['bundles']) or 'nothing'}")
    config = found["config"]
    if config.get("error"):
        lines.append(f"config: {config['file'] or config['dir']}: {config['error']}")
    else:
        lines.append(f"config in use: {config['file']} (network {config['network']!r}: "
                     f"{', '.join(config['types'])})")
    server = found["daemon"]
    lines.append(f"daemon: answering on {server['socket']}" if server["answering"] else
                 f"daemon: not answering ({server['why']}): plugins start cold")
    lease = found["flannel"]
    lines.append(f"flannel: {lease['file']}: {lease['error']}" if lease.get("error") else
                 f"flannel: subnet {lease['subnet']} of {lease['network']}, MTU {lease['mtu']}, "
                 f"ipmasq {str(lease['ipmasq']).lower()}")
    held = found["allocations"]
    lines.append("allocations: " + (", ".join(f"{network} {count}"
                                             for network, count in held.items()) or "none"))
    return lines


def main(args: list[str]) -> int:
    from pycni.plugins.flannel import subnet_env

    parser = argparse.ArgumentParser(prog="pycni status", description=__doc__.splitlines()[0])
    parser.add_argument("--cni-conf-dir", default="/etc/cni/net.d")
    parser.add_argument("--cni-bin-dir", default="/opt/cni/bin")
    parser.add_argument("--subnet-file", default=subnet_env.DEFAULT_PATH)
    parser.add_argument("--ipam-dir", default="/var/lib/cni/networks")
    parser.add_argument("--socket", default=launch.socket_path(),
                        help="pycni daemon's socket (default: $PYCNI_DAEMON_SOCKET or "
                             f"{launch.DEFAULT_SOCKET})")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    opts = parser.parse_args(args)
    found = collect(opts)
    print(json.dumps(found, indent=1) if opts.json else "\n".join(render(found)))
    return 0
