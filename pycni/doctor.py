"""`pycni doctor`: what the users' troubleshooting scripts check, with the fix for each finding.

    pycni doctor [--cni-conf-dir DIR] [--cni-bin-dir DIR] [--subnet-file FILE]
                 [--store-dir DIR] [--ipam-dir DIR] [--nad-dir DIR]
                 [--pod-annotations FILE] [--json]

Read-only. Each check is a small function returning findings; one line per finding:

    OK|WARN|FAIL <check>: <what> -> fix: <how>

Exit status 0 when nothing FAILs, 1 otherwise. Links, routes, FDB and neighbour entries are
read in the current network namespace. `docs/troubleshooting.md` maps the users' failure table
to what this prints.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

from pycni.plugins.flannel import subnet_env

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from pycni.plugins.flannel.lease import Lease
    from pycni.plugins.flannel.netconf import NetworkConfig

OK, WARN, FAIL = "OK", "WARN", "FAIL"
CONFIG_SUFFIXES = (".conf", ".conflist", ".json")
NAD_SUFFIXES = (".json", ".yaml", ".yml")
NAD_KIND = "NetworkAttachmentDefinition"
VXLAN_OVERHEAD = 50
NUD_PERMANENT = 0x80
ZERO_MAC = "00:00:00:00:00:00"
FLANNEL_BRIDGE = "cni0"
Json = dict[str, Any]


@dataclass(frozen=True)
class Finding:
    severity: str
    check: str
    what: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.severity} {self.check}: {self.what}"
        return f"{text} -> fix: {self.fix}" if self.fix else text


# --- what is read once ------------------------------------------------------------------------

@dataclass
class ConfigFile:
    """One file of the CNI config directory: its data, or why it cannot be used."""

    path: str
    data: Json | None = None
    error: str = ""

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def is_multus(self) -> bool:
        return self.data is not None and self.data.get("type") == "multus"


@dataclass
class Nad:
    """A NetworkAttachmentDefinition from --nad-dir: a NAD object (JSON or YAML), or a bare
    `spec.config` body named by its `name` or its file (`nad-<name>.<type>.json`)."""

    path: str
    name: str
    namespace: str = ""
    config: Json | None = None
    error: str = ""


@dataclass
class Kernel:
    """The links, routes, neighbour and FDB entries of the current network namespace."""

    links: dict[str, Any] = field(default_factory=dict)             # name -> pycni.link.Link
    vxlan: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> VNI, local, link
    routes: list[dict[str, Any]] = field(default_factory=list)      # dst, gateway, oif, onlink
    neighbours: dict[int, list[tuple[str, str, int]]] = field(default_factory=dict)
    fdb: dict[int, list[tuple[str, str]]] = field(default_factory=dict)   # (mac, dst)
    addresses: dict[int, list[str]] = field(default_factory=dict)

    def by_index(self, index: int) -> Any:
        return next((link for link in self.links.values() if link.index == index), None)


def read_kernel() -> Kernel:
    import errno
    import socket

    from pycni import link

    kernel = Kernel()
    with link.socket() as ipr:
        for msg in ipr.get_links():
            found = link.Link(msg)
            kernel.links[found.name] = found
            info = msg.get_attr("IFLA_LINKINFO")
            data = info.get_attr("IFLA_INFO_DATA") if info else None
            if found.kind == "vxlan" and data is not None:
                kernel.vxlan[found.name] = {"vni": data.get_attr("IFLA_VXLAN_ID"),
                                            "local": data.get_attr("IFLA_VXLAN_LOCAL"),
                                            "link": data.get_attr("IFLA_VXLAN_LINK") or 0}
        for route in ipr.get_routes(family=socket.AF_INET, table=254):
            dst = route.get_attr("RTA_DST")
            if dst is None:
                continue
            kernel.routes.append({"dst": ipaddress.IPv4Network(f"{dst}/{route['dst_len']}"),
                                  "gateway": route.get_attr("RTA_GATEWAY"),
                                  "oif": route.get_attr("RTA_OIF"),
                                  "onlink": bool(route["flags"] & 4)})
        for msg in ipr.get_addr(family=socket.AF_INET):
            kernel.addresses.setdefault(msg["index"], []).append(
                f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
        for name in kernel.vxlan:
            index = kernel.links[name].index
            kernel.neighbours[index] = [
                (n.get_attr("NDA_DST"), (n.get_attr("NDA_LLADDR") or "").lower(), n["state"])
                for n in ipr.get_neighbours(family=socket.AF_INET, ifindex=index)]
            try:
                entries = list(ipr.fdb("dump", ifindex=index))
            except Exception as exc:
                if not link.is_error(exc, errno.EOPNOTSUPP):
                    raise
                entries = []
            kernel.fdb[index] = [((e.get_attr("NDA_LLADDR") or "").lower(), e.get_attr("NDA_DST"))
                                 for e in entries
                                 if e["ifindex"] == index and e.get_attr("NDA_DST")]
    return kernel


class Context:
    """The options and everything read from disk and kernel, each read once."""

    def __init__(self, opts: argparse.Namespace) -> None:
        self.conf_dir: str = opts.cni_conf_dir
        self.bin_dir: str = opts.cni_bin_dir
        self.subnet_file: str = opts.subnet_file
        self.store_dir: str | None = opts.store_dir
        self.ipam_dir: str = opts.ipam_dir
        self.nad_dir: str | None = opts.nad_dir
        self.annotations_file: str | None = opts.pod_annotations

    @cached_property
    def configs(self) -> list[ConfigFile]:
        """The config directory's files in lexical order, as runtimes pick them."""
        try:
            names = sorted(n for n in os.listdir(self.conf_dir) if n.endswith(CONFIG_SUFFIXES))
        except OSError:
            return []
        return [load_config(os.path.join(self.conf_dir, name)) for name in names]

    @property
    def in_use(self) -> ConfigFile | None:
        return self.configs[0] if self.configs else None

    @cached_property
    def nads(self) -> list[Nad]:
        return load_nads(self.nad_dir) if self.nad_dir else []

    @cached_property
    def uses_flannel(self) -> bool:
        return any(plugin_type == "flannel" for config in self.configs if config.data
                   for plugin_type, _ in referenced_types(config.data))

    @cached_property
    def subnet(self) -> subnet_env.SubnetEnv | str:
        """The agent's lease, or why it cannot be read."""
        try:
            return subnet_env.read(self.subnet_file)
        except FileNotFoundError:
            return "missing"
        except OSError as exc:
            return f"unreadable: {exc.strerror}"
        except ValueError as exc:
            return f"malformed: {exc}"

    @cached_property
    def store(self) -> tuple[NetworkConfig, list[Lease]] | str:
        """The file store's network config and live leases, or why they cannot be read."""
        if not self.store_dir:
            return "no --store-dir given"
        if not os.path.isdir(os.path.join(self.store_dir, "subnets")):
            return f"{self.store_dir} is not a flannel file store (no subnets/)"
        from pycni.plugins.flannel.store.base import StoreError
        from pycni.plugins.flannel.store.file import FileStore

        try:
            store = FileStore(self.store_dir)
            return store.network_config(), store.leases()
        except StoreError as exc:
            return str(exc)

    @cached_property
    def kernel(self) -> Kernel | str:
        try:
            return read_kernel()
        except Exception as exc:  # netlink unavailable: say so, run the other checks
            return f"cannot read links and routes: {exc}"


def load_config(path: str) -> ConfigFile:
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        return ConfigFile(path, error=f"cannot be read: {exc.strerror}")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        return ConfigFile(path, error=f"is not valid JSON: {exc}")
    if not isinstance(data, dict):
        return ConfigFile(path, error="is not a JSON object")
    return ConfigFile(path, data)


def mapping(value: Any) -> Json:
    return value if isinstance(value, dict) else {}


def referenced_types(conf: Json, where: str = "") -> Iterator[tuple[str, str]]:
    """Every plugin type a config runs, with where it is named: its plugins, Multus
    delegates, IPAM, and the delegate flannel builds (bridge + host-local by default)."""
    plugin_type = conf.get("type")
    if isinstance(plugin_type, str) and plugin_type:
        yield plugin_type, where or "type"
    for key in ("plugins", "delegates"):
        items = conf.get(key)
        if isinstance(items, list):
            for number, item in enumerate(items):
                if isinstance(item, dict):
                    yield from referenced_types(item, f"{where}{key}[{number}].")
    ipam = conf.get("ipam")
    if isinstance(ipam, dict) and isinstance(ipam.get("type"), str) and ipam["type"]:
        yield ipam["type"], f"{where}ipam.type"
    if plugin_type == "flannel":
        delegate = mapping(conf.get("delegate"))
        yield str(delegate.get("type") or "bridge"), f"{where}delegate.type (flannel's delegate)"
        yield (str(mapping(ipam).get("type") or "host-local"),
               f"{where}ipam.type (flannel's delegate IPAM)")


def load_nads(directory: str) -> list[Nad]:
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(NAD_SUFFIXES))
    except OSError as exc:
        return [Nad(directory, "", error=f"cannot be listed: {exc.strerror}")]
    nads: list[Nad] = []
    for name in names:
        nads.extend(load_nad_file(os.path.join(directory, name)))
    return nads


def file_network_name(path: str) -> str:
    """`nad-business-network.macvlan.json` -> `business-network`."""
    stem = os.path.basename(path).split(".")[0]
    return stem.removeprefix("nad-")


def load_nad_file(path: str) -> list[Nad]:
    fallback = file_network_name(path)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        return [Nad(path, fallback, error=f"cannot be read: {exc}")]
    if path.endswith(".json"):
        try:
            documents: list[Any] = [json.loads(text)]
        except ValueError as exc:
            return [Nad(path, fallback, error=f"is not valid JSON: {exc}")]
    else:
        import yaml  # type: ignore[import-untyped]

        try:
            documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
        except yaml.YAMLError as exc:
            return [Nad(path, fallback, error=f"is not valid YAML: {exc}")]
    nads: list[Nad] = []
    for document in documents:
        items = document.get("items") if isinstance(document, dict) else None
        for item in items if isinstance(items, list) else [document]:
            nads.append(nad_from_document(path, item, fallback))
    return nads


def nad_from_document(path: str, document: Any, fallback: str) -> Nad:
    if not isinstance(document, dict):
        return Nad(path, fallback, error="is not a JSON object")
    if document.get("kind") != NAD_KIND:
        # A bare spec.config body (the seeds' form).
        return Nad(path, str(document.get("name") or fallback), config=document)
    metadata = mapping(document.get("metadata"))
    name = str(metadata.get("name") or fallback)
    namespace = str(metadata.get("namespace") or "")
    raw = mapping(document.get("spec")).get("config")
    if not isinstance(raw, str) or not raw.strip():
        return Nad(path, name, namespace,
                   error="has no spec.config string (Multus then looks for a file of that "
                         "name in its confDir)")
    try:
        config = json.loads(raw)
    except ValueError as exc:
        return Nad(path, name, namespace, error=f"spec.config is not valid JSON: {exc}")
    if not isinstance(config, dict):
        return Nad(path, name, namespace, error="spec.config is not a JSON object")
    return Nad(path, name, namespace, config)


# --- checks: configuration files --------------------------------------------------------------

def check_config_dir(ctx: Context) -> list[Finding]:
    check = "config"
    if not os.path.isdir(ctx.conf_dir):
        return [Finding(FAIL, check, f"{ctx.conf_dir} does not exist: the runtime has no "
                        "network, the node stays NotReady",
                        "install the network's config (e.g. 10-flannel.conflist) there")]
    if not ctx.configs:
        return [Finding(FAIL, check, f"{ctx.conf_dir} holds no .conf, .conflist or .json "
                        "file: the runtime has no network, the node stays NotReady",
                        "install the network's config, or start the agent that writes it")]
    findings = []
    for config in ctx.configs:
        if config.data is None:
            findings.append(Finding(FAIL, check, f"{config.path} {config.error}: the runtime "
                                    "cannot load it",
                                    f"fix the file (python3 -m json.tool {config.path} "
                                    "shows where)"))
            continue
        findings.extend(config_problems(check, config.path, config.data))
    first = ctx.configs[0]
    others = len(ctx.configs) - 1
    findings.append(Finding(OK, check, f"{first.name} is the config in use (first in lexical "
                            f"order{f'; {others} other(s) ignored' if others else ''})"))
    multus = next((c for c in ctx.configs[1:] if c.is_multus), None)
    if multus is not None and not first.is_multus:
        findings.append(Finding(FAIL, check, f"Multus config {multus.name} is not the first "
                                f"file: the runtime uses {first.name}, so pods get only eth0",
                                f"rename it to sort first (e.g. 00-multus.conf) or remove "
                                f"{first.path}"))
    return findings


def config_problems(check: str, path: str, data: Json) -> list[Finding]:
    findings = []
    plugins = data.get("plugins")
    if plugins is not None:
        if not isinstance(plugins, list) or not plugins:
            findings.append(Finding(FAIL, check, f"{path}: `plugins` must be a non-empty list",
                                    "list the chain's plugin configs under `plugins`"))
        else:
            for number, plugin in enumerate(plugins):
                if not isinstance(plugin, dict) or not plugin.get("type"):
                    findings.append(Finding(FAIL, check, f"{path}: plugins[{number}] has no "
                                            "`type`", "give every plugin of the list a type"))
    elif not data.get("type"):
        findings.append(Finding(FAIL, check, f"{path} has neither `type` nor `plugins`: not a "
                                "CNI config", "add the plugin's `type` or a `plugins` list"))
    if not data.get("name"):
        findings.append(Finding(FAIL, check, f"{path} has no `name`: the runtime refuses it",
                                'add a network name, e.g. "name": "cbr0"'))
    if not data.get("cniVersion"):
        findings.append(Finding(WARN, check, f"{path} has no `cniVersion` (taken as 0.1.0 or "
                                "refused, depending on the runtime)",
                                'add "cniVersion": "0.3.1" or newer'))
    return findings


def check_permissions(ctx: Context) -> list[Finding]:
    check = "permissions"
    findings = []
    if os.path.isdir(ctx.conf_dir):
        mode = os.stat(ctx.conf_dir).st_mode
        if mode & stat.S_IWOTH:
            findings.append(Finding(WARN, check, f"{ctx.conf_dir} is world-writable "
                                    f"({stat.S_IMODE(mode):04o}): any user can change the "
                                    "node's networks", f"chmod 0755 {ctx.conf_dir}"))
    for config in ctx.configs:
        findings.extend(file_permissions(check, config.path, config.is_multus or (
            config.data is None and "multus" in config.name)))
    if not findings:
        findings.append(Finding(OK, check, f"{len(ctx.configs)} config file(s) readable, "
                                "owned by us, not world-writable"))
    return findings


def file_permissions(check: str, path: str, multus: bool) -> list[Finding]:
    """World-writable, unreadable, or owned by another user. An unreadable Multus config is
    the users' crash-looping meta plugin: its daemon re-reads it on every start."""
    try:
        info = os.stat(path)
    except OSError as exc:
        return [Finding(FAIL, check, f"{path}: {exc.strerror}", f"check {path}")]
    mode = stat.S_IMODE(info.st_mode)
    findings = []
    # Root reads any file; a plugin or daemon without CAP_DAC_OVERRIDE needs a read bit.
    unreadable = not os.access(path, os.R_OK) or not mode & 0o444
    if unreadable:
        consequence = ("the meta plugin (Multus) will crash-loop" if multus
                       else "the runtime cannot load it")
        findings.append(Finding(FAIL, check, f"{path} is not readable (mode {mode:04o}): "
                                f"{consequence}", f"chmod 0644 {path}"))
    if mode & stat.S_IWOTH:
        findings.append(Finding(WARN, check, f"{path} is world-writable (mode {mode:04o}): "
                                "any user can change the node's networks",
                                f"chmod 0644 {path}"))
    if info.st_uid != os.geteuid():
        findings.append(Finding(WARN, check, f"{path} is owned by uid {info.st_uid}, not by "
                                f"uid {os.geteuid()} (the runtime's user)",
                                f"chown root:root {path}"))
    return findings


def check_binaries(ctx: Context) -> list[Finding]:
    check = "binaries"
    sources = [(c.name, c.data) for c in ctx.configs if c.data is not None]
    sources += [(f"NAD {n.name}", n.config) for n in ctx.nads if n.config is not None]
    wanted: dict[str, list[str]] = {}
    for source, data in sources:
        for plugin_type, where in referenced_types(data):
            wanted.setdefault(plugin_type, []).append(f"{source} {where}")
    if not wanted:
        return []
    if not os.path.isdir(ctx.bin_dir):
        return [Finding(FAIL, check, f"{ctx.bin_dir} does not exist: every pod fails "
                        "(failed to find plugin)", "install the plugins there (make install)")]
    findings = []
    for plugin_type, places in sorted(wanted.items()):
        path = os.path.join(ctx.bin_dir, plugin_type)
        more = f" and {len(places) - 2} more" if len(places) > 2 else ""
        named = f"type {plugin_type!r} (named in {', '.join(places[:2])}{more})"
        if os.path.islink(path) and not os.path.exists(path):
            findings.append(Finding(FAIL, check, f"{path} is a dangling symlink (to "
                                    f"{os.readlink(path)}): {named} cannot run",
                                    f"reinstall the plugins (make install), or ln -sf the "
                                    f"launcher to {path}"))
        elif not os.path.exists(path):
            findings.append(Finding(FAIL, check, f"no {path}: {named} fails with "
                                    f"'failed to find plugin \"{plugin_type}\"'",
                                    f"install the {plugin_type} plugin in {ctx.bin_dir} "
                                    "(make install, or the vendor's package)"))
        elif not os.path.isfile(path) or not os.stat(path).st_mode & 0o111:
            findings.append(Finding(FAIL, check, f"{path} is not executable: {named} cannot "
                                    "run", f"chmod 0755 {path}"))
    if not findings:
        findings.append(Finding(OK, check, f"all {len(wanted)} referenced type(s) present in "
                                f"{ctx.bin_dir}: {', '.join(sorted(wanted))}"))
    return findings


def check_multus(ctx: Context) -> list[Finding]:
    check = "multus"
    findings = []
    for config in ctx.configs:
        if config.data is not None and config.is_multus:
            findings.extend(multus_problems(check, config.name, config.data))
    return findings


def multus_problems(check: str, name: str, data: Json) -> list[Finding]:
    """A Multus config: its kubeconfig readable, its delegates valid."""
    findings = []
    kubeconfig = data.get("kubeconfig")
    if isinstance(kubeconfig, str) and kubeconfig:
        if not os.path.exists(kubeconfig):
            findings.append(Finding(WARN, check, f"{name}: kubeconfig {kubeconfig} does not "
                                    "exist: no API, so no pod annotations and NADs only from "
                                    "confDir", "restore the Multus service account's "
                                    "kubeconfig (the Multus DaemonSet writes it)"))
        else:
            findings.extend(file_permissions(check, kubeconfig, multus=True))
    delegates = data.get("delegates")
    if not isinstance(delegates, list) or not delegates:
        if not data.get("clusterNetwork"):
            findings.append(Finding(FAIL, check, f"{name} has no delegates and no "
                                    "clusterNetwork: pods get no eth0",
                                    "add the cluster network (flannel + portmap list) under "
                                    "`delegates`"))
        return findings
    for number, delegate in enumerate(delegates):
        where = f"{name} delegates[{number}]"
        if isinstance(delegate, dict):
            findings.extend(config_problems(check, where, delegate))
        else:
            findings.append(Finding(FAIL, check, f"{where} is not a JSON object",
                                    "give a CNI config or config list"))
    if not findings:
        findings.append(Finding(OK, check, f"{name}: kubeconfig and {len(delegates)} "
                                "delegate(s) valid"))
    return findings


def check_nads(ctx: Context) -> list[Finding]:
    check = "nad"
    if not ctx.nad_dir:
        return []
    if not os.path.isdir(ctx.nad_dir):
        return [Finding(FAIL, check, f"--nad-dir {ctx.nad_dir} does not exist",
                        "export the definitions: kubectl get net-attach-def -A -o yaml")]
    findings = []
    for nad in ctx.nads:
        label = f"NAD {nad.name} ({nad.path})"
        if nad.config is None:
            findings.append(Finding(FAIL, check, f"{label} {nad.error}: pod creation fails "
                                    "for pods selecting it",
                                    "validate spec.config: echo \"$CONFIG\" | python3 -m "
                                    "json.tool, then kubectl apply the fixed definition"))
            continue
        missing = [key for key in ("cniVersion",) if not nad.config.get(key)]
        if not nad.config.get("type") and not nad.config.get("plugins"):
            missing.append("type")
        if missing:
            findings.append(Finding(FAIL, check, f"{label}: spec.config lacks "
                                    f"{' and '.join(missing)}: pod creation fails for pods "
                                    "selecting it",
                                    f"add {' and '.join(missing)} to spec.config "
                                    '(e.g. "cniVersion": "0.3.1", "type": "macvlan")'))
    if not findings:
        findings.append(Finding(OK, check, f"{len(ctx.nads)} definition(s) in {ctx.nad_dir} "
                                "valid"))
    return findings


def selections(value: Any) -> list[Json]:
    """The networks a pod annotation selects: a JSON list of objects or the short form
    `[namespace/]name[@interface]`, comma separated."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            return selections(json.loads(stripped))
        found = []
        for item in filter(None, (part.strip() for part in stripped.split(","))):
            name, _, interface = item.partition("@")
            namespace, _, network = name.rpartition("/")
            found.append({"name": network, "namespace": namespace, "interface": interface})
        return found
    if isinstance(value, list):
        return [item if isinstance(item, dict) else {"name": str(item)} for item in value]
    raise ValueError(f"not a network selection: {value!r}")


def check_annotations(ctx: Context) -> list[Finding]:
    """--pod-annotations: {pod: selection} as in the seeds' pod-annotations.json; every
    selected network needs a definition, else Multus attaches nothing and only eth0 appears."""
    check = "annotations"
    path = ctx.annotations_file
    if not path:
        return []
    try:
        with open(path, encoding="utf-8") as handle:
            pods = json.load(handle)
        if not isinstance(pods, dict):
            raise ValueError("not a JSON object of pod -> networks")
        selected = {pod: selections(value) for pod, value in pods.items()}
    except (OSError, ValueError) as exc:
        return [Finding(FAIL, check, f"{path}: {exc}",
                        "give a JSON object of pod name -> k8s.v1.cni.cncf.io/networks value")]
    findings = []
    for pod, chosen in selected.items():
        interfaces: set[str] = set()
        for selection in chosen:
            name = str(selection.get("name") or "")
            namespace = str(selection.get("namespace") or "")
            interface = str(selection.get("interface") or "")
            known = any(nad.name == name and namespace in ("", nad.namespace or namespace)
                        for nad in ctx.nads if nad.config is not None or nad.error)
            if not known:
                where = f" in {ctx.nad_dir}" if ctx.nad_dir else " (no --nad-dir given)"
                findings.append(Finding(FAIL, check, f"pod {pod} selects network "
                                        f"{(namespace + '/') if namespace else ''}{name!r} but no "
                                        f"NetworkAttachmentDefinition of that name exists{where}: "
                                        "the attachment is missing, only eth0 appears",
                                        f"create the NAD {name!r} in the pod's namespace, or "
                                        "correct the name in the pod's "
                                        "k8s.v1.cni.cncf.io/networks annotation"))
            if interface and interface in interfaces:
                findings.append(Finding(FAIL, check, f"pod {pod} asks twice for interface "
                                        f"{interface!r}: the pod fails to start",
                                        "give each selection its own interface name"))
            if len(interface) > 15:
                findings.append(Finding(FAIL, check, f"pod {pod}: interface name {interface!r} "
                                        "is longer than 15 characters",
                                        "use a name of at most 15 characters"))
            interfaces.add(interface)
    if not findings:
        findings.append(Finding(OK, check, f"every network selected by {len(selected)} pod(s) "
                                "has a definition"))
    return findings


# --- checks: flannel and the kernel -----------------------------------------------------------

def check_subnet_file(ctx: Context) -> list[Finding]:
    check = "flannel"
    env = ctx.subnet
    if isinstance(env, str):
        if env == "missing" and not ctx.uses_flannel:
            return [Finding(OK, check, f"{ctx.subnet_file} absent; no config uses flannel")]
        if env == "missing":
            return [Finding(FAIL, check, f"{ctx.subnet_file} is missing: the flannel agent has "
                            "not leased this node a subnet, pods fail with code 11",
                            "start the agent (pycni flanneld) and read its log")]
        return [Finding(FAIL, check, f"{ctx.subnet_file} is {env}: flannel pods fail with "
                        "code 7", "restart the agent (pycni flanneld): it rewrites the file")]
    findings = [Finding(OK, check, f"{ctx.subnet_file}: subnet "
                        f"{', '.join(map(str, env.subnets))}, MTU {env.mtu or 'unset'}")]
    if env.subnet is not None and env.network is not None and env.subnet not in env.network:
        findings.append(Finding(FAIL, check, f"FLANNEL_SUBNET {env.subnet} is outside "
                                f"FLANNEL_NETWORK {env.network}",
                                "restart the agent (pycni flanneld) to lease a new subnet"))
    store = ctx.store
    if not isinstance(store, str):
        config, leases = store
        if config.network is not None and env.network not in (None, config.network):
            findings.append(Finding(FAIL, check, f"FLANNEL_NETWORK {env.network} differs from "
                                    f"the store's Network {config.network}",
                                    "restart the agent: subnet.env is from an older network"))
        own = env.subnet.network if env.subnet is not None else None
        if own is not None and not any(lease.subnet == own for lease in leases):
            findings.append(Finding(FAIL, check, f"no live lease for this node's subnet {own} "
                                    f"in {ctx.store_dir}: peers have no path to its pods",
                                    "restart the agent (pycni flanneld): it renews or takes "
                                    "a new lease"))
    return findings


def flannel_device(ctx: Context, kernel: Kernel) -> str | None:
    """The VXLAN device flannel should use: `flannel.<VNI>` of the store's config, or the one
    present."""
    store = ctx.store
    if not isinstance(store, str):
        config = store[0]
        return f"flannel.{config.backend.vni}" if config.backend.type == "vxlan" else None
    present = sorted(name for name in kernel.links if name.startswith("flannel."))
    return present[0] if present else "flannel.1"


def check_mtu(ctx: Context) -> list[Finding]:
    """The users' "high latency": packets bigger than the tunnel carries are fragmented or
    dropped. FLANNEL_MTU against flannel.<VNI>, the underlay minus 50, cni0 and its ports."""
    check = "mtu"
    env = ctx.subnet
    if isinstance(env, str) or not env.mtu:
        return []
    kernel = ctx.kernel
    if isinstance(kernel, str):
        return [Finding(WARN, check, kernel, "run pycni doctor as root on the node")]
    findings = []
    lease_mtu = env.mtu
    device = flannel_device(ctx, kernel)
    vxlan = kernel.links.get(device) if device else None
    if vxlan is not None:
        if vxlan.kind != "vxlan":
            findings.append(Finding(FAIL, check, f"{device} is a {vxlan.kind or 'plain'} link, "
                                    "not vxlan", f"ip link del {device}; restart the agent "
                                    "(pycni flanneld) to recreate it"))
        if vxlan.mtu != lease_mtu:
            severity = FAIL if lease_mtu > vxlan.mtu else WARN
            findings.append(Finding(severity, check, f"FLANNEL_MTU {lease_mtu} differs from "
                                    f"{device} MTU {vxlan.mtu}: pods' packets above "
                                    f"{vxlan.mtu} are fragmented or dropped (high latency)"
                                    if severity == FAIL else
                                    f"FLANNEL_MTU {lease_mtu} is below {device} MTU "
                                    f"{vxlan.mtu}: pods use smaller packets than needed",
                                    "restart the agent (pycni flanneld): it rewrites "
                                    f"{ctx.subnet_file} from {device}; then recreate the pods"))
        underlay = kernel.by_index(kernel.vxlan.get(vxlan.name, {}).get("link", 0))
        if underlay is not None and vxlan.mtu > underlay.mtu - VXLAN_OVERHEAD:
            findings.append(Finding(FAIL, check, f"{device} MTU {vxlan.mtu} exceeds underlay "
                                    f"{underlay.name} MTU {underlay.mtu} - {VXLAN_OVERHEAD}: "
                                    "encapsulated packets are fragmented (high latency)",
                                    f"ip link set {device} mtu "
                                    f"{underlay.mtu - VXLAN_OVERHEAD} (or Backend.MTU in "
                                    "net-conf.json) and restart the agent"))
    bridge = kernel.links.get(FLANNEL_BRIDGE)
    if bridge is not None:
        if bridge.kind != "bridge":
            findings.append(Finding(FAIL, check, f"{FLANNEL_BRIDGE} is a {bridge.kind or 'plain'} "
                                    "link, not a bridge: pods cannot attach to it",
                                    f"ip link del {FLANNEL_BRIDGE}; the next pod recreates it"))
        if bridge.mtu > lease_mtu:
            findings.append(Finding(FAIL, check, f"{FLANNEL_BRIDGE} MTU {bridge.mtu} is above "
                                    f"FLANNEL_MTU {lease_mtu}: pods' packets above {lease_mtu} "
                                    "are fragmented or dropped on the tunnel (high latency)",
                                    f"ip link set {FLANNEL_BRIDGE} mtu {lease_mtu}; remove any "
                                    "`mtu` from the flannel delegate config and recreate the "
                                    "pods so they get the lease's MTU"))
        for port in kernel.links.values():
            if port.master != bridge.index:
                continue
            if port.kind != "veth":
                findings.append(Finding(WARN, check, f"{port.name} on {FLANNEL_BRIDGE} is a "
                                        f"{port.kind or 'plain'} link, not a pod's veth",
                                        f"ip link set {port.name} nomaster"))
            if port.mtu > lease_mtu:
                findings.append(Finding(FAIL, check, f"pod port {port.name} on "
                                        f"{FLANNEL_BRIDGE} has MTU {port.mtu} above FLANNEL_MTU "
                                        f"{lease_mtu} (high latency)",
                                        "recreate the pod: bridge gives it the lease's MTU"))
    for config in ctx.configs[:1]:
        for delegate_mtu, where in flannel_delegate_mtus(config):
            if delegate_mtu > lease_mtu:
                findings.append(Finding(FAIL, check, f"{config.name} {where} sets mtu "
                                        f"{delegate_mtu} above FLANNEL_MTU {lease_mtu}: every "
                                        "pod gets it (high latency)",
                                        f"remove `mtu` from {where}: flannel passes the "
                                        "lease's"))
    if not findings:
        findings.append(Finding(OK, check, f"FLANNEL_MTU {lease_mtu} matches "
                                f"{device if vxlan is not None else 'the node'}"
                                f"{' and ' + FLANNEL_BRIDGE if bridge is not None else ''}"))
    return findings


def flannel_delegate_mtus(config: ConfigFile) -> Iterator[tuple[int, str]]:
    def walk(conf: Json, where: str) -> Iterator[tuple[int, str]]:
        delegate = conf.get("delegate")
        if conf.get("type") == "flannel" and isinstance(delegate, dict):
            mtu = delegate.get("mtu")
            if isinstance(mtu, int) and mtu:
                yield mtu, f"{where}delegate"
        for key in ("plugins", "delegates"):
            items = conf.get(key)
            for number, item in enumerate(items if isinstance(items, list) else []):
                if isinstance(item, dict):
                    yield from walk(item, f"{where}{key}[{number}].")
    if config.data is not None:
        yield from walk(config.data, "")


def check_flannel_peers(ctx: Context) -> list[Finding]:
    """flannel.<VNI> and its VTEP, then per peer lease a route, an FDB and a neighbour entry
    (vxlan) or a route via its node address (host-gw, DirectRouting); strays reported."""
    check = "flannel"
    env, store, kernel = ctx.subnet, ctx.store, ctx.kernel
    if isinstance(env, str):
        return []
    if isinstance(store, str):
        return [Finding(OK, check, f"peers not checked: {store}")] if ctx.store_dir else []
    if isinstance(kernel, str):
        return [Finding(WARN, check, kernel, "run pycni doctor as root on the node")]
    config, leases = store
    own_subnet = env.subnet.network if env.subnet is not None else None
    own = next((lease for lease in leases if lease.subnet == own_subnet), None)
    peers = [lease for lease in leases if lease.subnet is not None and lease.subnet != own_subnet]
    findings: list[Finding] = []
    device = flannel_device(ctx, kernel)
    vxlan = kernel.links.get(device) if device else None
    if device is not None:
        if vxlan is None:
            return [Finding(FAIL, check, f"no {device} device: traffic to other nodes' pods "
                            "has no tunnel", "restart the agent (pycni flanneld): it creates "
                            f"{device}; check its log if it does not")]
        findings.extend(vtep_problems(check, device, vxlan, kernel, config, own))
    restart = "restart the agent (pycni flanneld): it reprograms every peer at start"
    wanted_routes: set[tuple[ipaddress.IPv4Network, str]] = set()
    wanted_neighbours: set[str] = set()
    wanted_fdb: set[tuple[str, str]] = set()
    underlay = underlay_networks(kernel, device)
    for lease in peers:
        assert lease.subnet is not None
        peer = f"peer {lease.attrs.public_ip} ({lease.subnet})"
        mac = str(lease.attrs.backend_data.get("VtepMAC") or "").lower()
        direct = config.backend.type == "host-gw" or (
            config.backend.direct_routing
            and any(ipaddress.IPv4Address(lease.attrs.public_ip) in n for n in underlay))
        if lease.attrs.backend_type != config.backend.type:
            findings.append(Finding(WARN, check, f"{peer} runs backend "
                                    f"{lease.attrs.backend_type!r}, this network "
                                    f"{config.backend.type!r}: the agent ignores it",
                                    "run one backend type on every node"))
            continue
        if direct or vxlan is None:
            gateway = lease.attrs.public_ip
            wanted_routes.add((lease.subnet, gateway))
            if not has_route(kernel, lease.subnet, gateway, None):
                findings.append(Finding(FAIL, check, f"no route to {peer} via {gateway}: its "
                                        "pods are unreachable from here",
                                        f"{restart}; or ip route replace {lease.subnet} via "
                                        f"{gateway}"))
            continue
        gateway = str(lease.subnet.network_address)
        wanted_routes.add((lease.subnet, gateway))
        if not has_route(kernel, lease.subnet, gateway, vxlan.index):
            findings.append(Finding(FAIL, check, f"no route to {peer} via {gateway} dev "
                                    f"{device}: its pods are unreachable from here",
                                    f"{restart}; or ip route replace {lease.subnet} via "
                                    f"{gateway} dev {device} onlink"))
        if not mac:
            findings.append(Finding(WARN, check, f"{peer}'s lease has no VtepMAC",
                                    "restart the agent on that node"))
            continue
        wanted_neighbours.add(gateway)
        wanted_fdb.add((mac, lease.attrs.public_ip))
        neighbours = kernel.neighbours.get(vxlan.index, [])
        if not any(dst == gateway and lladdr == mac for dst, lladdr, _ in neighbours):
            findings.append(Finding(FAIL, check, f"no neighbour entry {gateway} -> {mac} on "
                                    f"{device} for {peer}: packets to its pods stall in ARP",
                                    f"{restart}; or ip neigh replace {gateway} lladdr {mac} "
                                    f"dev {device} nud permanent"))
        if (mac, lease.attrs.public_ip) not in kernel.fdb.get(vxlan.index, []):
            findings.append(Finding(FAIL, check, f"no FDB entry {mac} -> "
                                    f"{lease.attrs.public_ip} on {device} for {peer}: "
                                    "encapsulated packets have no destination",
                                    f"{restart}; or bridge fdb append {mac} dev {device} dst "
                                    f"{lease.attrs.public_ip}"))
    findings.extend(strays(check, kernel, config, own_subnet, vxlan, device,
                           wanted_routes, wanted_neighbours, wanted_fdb))
    if not [f for f in findings if f.severity != OK]:
        findings.append(Finding(OK, check, f"{len(peers)} peer(s) programmed as the store's "
                                f"leases say ({config.backend.type})"))
    return findings


def vtep_problems(check: str, device: str, vxlan: Any, kernel: Kernel, config: NetworkConfig,
                  own: Lease | None) -> list[Finding]:
    findings = []
    info = kernel.vxlan.get(device)
    restart = f"ip link del {device} and restart the agent (pycni flanneld)"
    if info is None:
        return [Finding(FAIL, check, f"{device} is not a VXLAN device", restart)]
    if info["vni"] != config.backend.vni:
        findings.append(Finding(FAIL, check, f"{device} has VNI {info['vni']}, the network "
                                f"{config.backend.vni}", restart))
    if own is None:
        return findings
    mac = str(own.attrs.backend_data.get("VtepMAC") or "").lower()
    if mac and vxlan.mac.lower() != mac:
        findings.append(Finding(FAIL, check, f"{device} MAC {vxlan.mac} differs from the "
                                f"VtepMAC {mac} this node's lease advertises: peers' packets "
                                "to its pods are dropped",
                                "restart the agent (pycni flanneld): it re-advertises the "
                                "device's MAC"))
    if info["local"] and info["local"] != own.attrs.public_ip:
        findings.append(Finding(FAIL, check, f"{device} sends from {info['local']}, the lease "
                                f"advertises {own.attrs.public_ip}", restart))
    return findings


def underlay_networks(kernel: Kernel, device: str | None) -> list[ipaddress.IPv4Network]:
    index = kernel.vxlan.get(device or "", {}).get("link", 0)
    return [ipaddress.IPv4Interface(a).network for a in kernel.addresses.get(index, [])]


def has_route(kernel: Kernel, subnet: ipaddress.IPv4Network, gateway: str,
              oif: int | None) -> bool:
    return any(route["dst"] == subnet and route["gateway"] == gateway
               and (oif is None or route["oif"] == oif) for route in kernel.routes)


def strays(check: str, kernel: Kernel, config: NetworkConfig,
           own_subnet: ipaddress.IPv4Network | None, vxlan: Any, device: str | None,
           wanted_routes: set[tuple[ipaddress.IPv4Network, str]], wanted_neighbours: set[str],
           wanted_fdb: set[tuple[str, str]]) -> list[Finding]:
    """Entries no live lease wants: a peer that left while the agent was down."""
    findings = []
    fix = "restart the agent (pycni flanneld): it removes entries of gone peers at start"
    network = config.network
    for route in kernel.routes:
        dst = route["dst"]
        if (network is None or route["gateway"] is None or dst.prefixlen != config.subnet_len
                or not dst.subnet_of(network) or dst == own_subnet):
            continue
        if (dst, route["gateway"]) not in wanted_routes:
            findings.append(Finding(WARN, check, f"stray route {dst} via {route['gateway']}: "
                                    "no live lease holds that subnet",
                                    f"{fix}; or ip route del {dst}"))
    if vxlan is None:
        return findings
    for dst, lladdr, state in kernel.neighbours.get(vxlan.index, []):
        if state & NUD_PERMANENT and dst not in wanted_neighbours:
            findings.append(Finding(WARN, check, f"stray neighbour entry {dst} -> {lladdr} on "
                                    f"{device}", f"{fix}; or ip neigh del {dst} dev {device}"))
    for mac, dst in kernel.fdb.get(vxlan.index, []):
        if mac and mac != ZERO_MAC and (mac, dst) not in wanted_fdb:
            findings.append(Finding(WARN, check, f"stray FDB entry {mac} -> {dst} on {device}",
                                    f"{fix}; or bridge fdb del {mac} dev {device} dst {dst}"))
    return findings


# --- checks: IPAM -----------------------------------------------------------------------------

def check_allocations(ctx: Context) -> list[Finding]:
    """host-local allocations from an earlier boot: their pods died with it (`pycni ipam ls`
    shows them as BOOT earlier); they shrink the range until `pycni ipam gc` frees them."""
    from pycni.ipam.host_local.admin import networks
    from pycni.ipam.host_local.disk import Allocations, boot_time, current_boot
    from pycni.ipam.host_local.plugin import DEFAULT_DATA_DIR

    check = "ipam"
    names = networks(ctx.ipam_dir)
    if not names:
        return []
    boot, booted_at = current_boot(), boot_time()
    data_dir = "" if ctx.ipam_dir == DEFAULT_DATA_DIR else f" --data-dir {ctx.ipam_dir}"
    findings = []
    total = 0
    for network in names:
        try:
            allocations = Allocations(ctx.ipam_dir, network)
            with allocations.store.locked():
                held = allocations.scan()
        except Exception as exc:
            findings.append(Finding(WARN, check, f"cannot read the allocations of {network}: "
                                    f"{exc}", f"pycni ipam{data_dir} ls {network}"))
            continue
        total += len(held)
        leaked = sorted((a for a in held.values() if a.from_earlier_boot(boot, booted_at)),
                        key=lambda a: (a.address.version, int(a.address)))
        if leaked:
            shown = ", ".join(f"{a.address} ({a.container_id}/{a.ifname or '-'})"
                              for a in leaked[:5])
            more = f" and {len(leaked) - 5} more" if len(leaked) > 5 else ""
            findings.append(Finding(WARN, check, f"network {network}: {len(leaked)} "
                                    f"allocation(s) from an earlier boot leaked: {shown}{more}",
                                    f"pycni ipam{data_dir} gc {network}"))
    if not findings:
        findings.append(Finding(OK, check, f"{total} allocation(s) in {len(names)} network(s), "
                                "none from an earlier boot"))
    return findings


CHECKS: list[Callable[[Context], list[Finding]]] = [
    check_config_dir, check_permissions, check_binaries, check_multus, check_nads,
    check_annotations, check_subnet_file, check_mtu, check_flannel_peers, check_allocations,
]


def run(ctx: Context) -> list[Finding]:
    findings = []
    for check in CHECKS:
        findings.extend(check(ctx))
    return findings


def main(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pycni doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--cni-conf-dir", default="/etc/cni/net.d")
    parser.add_argument("--cni-bin-dir", default="/opt/cni/bin")
    parser.add_argument("--subnet-file", default=subnet_env.DEFAULT_PATH)
    parser.add_argument("--store-dir", help="the flannel agent's file store (peers checked)")
    parser.add_argument("--ipam-dir", default="/var/lib/cni/networks")
    parser.add_argument("--nad-dir", help="NetworkAttachmentDefinitions as JSON or YAML files")
    parser.add_argument("--pod-annotations", metavar="FILE",
                        help="JSON object: pod name -> its k8s.v1.cni.cncf.io/networks value")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    opts = parser.parse_args(args)
    findings = run(Context(opts))
    failed = any(f.severity == FAIL for f in findings)
    if opts.json:
        print(json.dumps({"ok": not failed, "findings": [asdict(f) for f in findings]},
                         indent=1))
    else:
        for finding in findings:
            print(finding.line())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
