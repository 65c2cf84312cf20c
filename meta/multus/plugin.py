"""multus (CNI type): multi-homed pods. The cluster network on CNI_IFNAME, then one delegate
per network the pod selects, each on its own interface.

Networks come from the config (`delegates`, or `clusterNetwork` and `defaultNetworks` naming
NetworkAttachmentDefinitions or config files) and from the pod's annotations
(`k8s.v1.cni.cncf.io/networks`, and `v1.multus-cni.io/default-network` replacing the cluster
network). What ADD did is cached per (container, interface) with the full delegate configs,
so DEL, CHECK and GC never need the API, the NAD or the pod. The result is the cluster
network's. Keys and behaviour are Multus' (thin plugin); beyond it: STATUS and GC.
"""

from __future__ import annotations

import ipaddress
import os
from contextlib import ExitStack
from typing import Any

from pycni.meta.multus import cache, definitions, delegates, selection
from pycni.meta.multus.delegates import Attachment
from pycni.meta.multus.selection import Selection

from pycni import config
from pycni.config import NetConf
from pycni.errors import CNIError, InvalidConfig, NotReady, TryAgainLater, UnknownContainer
from pycni.result import Result
from pycni.skel import CmdArgs, Plugin, ifname_problem

DEFAULT_CONF_DIR = "/etc/cni/multus/net.d"
DEFAULT_CNI_DIR = "/var/lib/cni/multus"
DEFAULT_BIN_DIR = "/opt/cni/bin"


# --- config ---------------------------------------------------------------------------------

class MultusConf(NetConf):
    delegates: list[dict[str, Any]] = []
    cluster_network: str = ""
    default_networks: list[str] = []
    kubeconfig: str = ""
    conf_dir: str = DEFAULT_CONF_DIR
    cni_dir: str = DEFAULT_CNI_DIR
    bin_dir: str = DEFAULT_BIN_DIR
    log_file: str = ""
    log_level: str = ""
    log_to_stderr: bool = True
    readinessindicatorfile: str = ""
    namespace_isolation: bool = False
    global_namespaces: list[str] | str = ["default"]
    system_namespaces: list[str] = ["kube-system"]
    multus_namespace: str = "kube-system"
    retry_delete_on_error: bool = False


class Pod:
    """The pod from CNI_ARGS, and its object once read from the API."""

    __slots__ = ("namespace", "name", "uid", "object")

    def __init__(self, namespace: str, name: str, uid: str) -> None:
        self.namespace, self.name, self.uid = namespace, name, uid
        self.object: dict[str, Any] | None = None

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    def annotation(self, key: str) -> str:
        metadata = (self.object or {}).get("metadata") or {}
        return str((metadata.get("annotations") or {}).get(key) or "")


def load_conf(args: CmdArgs) -> MultusConf:
    conf = config.load(MultusConf, args)
    if isinstance(conf.global_namespaces, str):
        conf.global_namespaces = [n.strip() for n in conf.global_namespaces.split(",")
                                  if n.strip()]
    if conf.log_file or conf.log_level:
        from pycni import log

        log.setup(level=_log_level(conf.log_level), file=conf.log_file or None)
    if not conf.delegates and not conf.cluster_network:
        raise InvalidConfig("multus: either delegates or clusterNetwork must be set")
    for raw in conf.delegates:
        delegates.as_list(raw)  # each must be a usable config
    return conf


def _log_level(level: str) -> str | None:
    """Multus' names (panic, error, verbose, debug) in logging's terms."""
    return {"panic": "CRITICAL", "verbose": "INFO"}.get(level.lower(), level.upper()) or None


def identify(args: CmdArgs) -> Pod:
    known = config.parse_cni_args(args.args)
    return Pod(known.get("K8S_POD_NAMESPACE", ""), known.get("K8S_POD_NAME", ""),
               known.get("K8S_POD_UID", ""))


def _pod_error(pod: Pod, message: str) -> InvalidConfig:
    return InvalidConfig(f"multus: pod {pod}: {message}")


def delegate_environ(conf: MultusConf, args: CmdArgs) -> tuple[dict[str, str], list[str]]:
    """Delegates look in binDir first, then CNI_PATH, and are told so in CNI_PATH."""
    path = list(dict.fromkeys([conf.bin_dir, *args.path] if conf.bin_dir else args.path))
    environ = dict(args.environ)
    environ["CNI_PATH"] = os.pathsep.join(path)
    return environ, path


def _warn(message: str, *values: object) -> None:
    from pycni import log

    log.get().warning(message, *values)


# --- which networks -------------------------------------------------------------------------

def _allowed(conf: MultusConf, pod: Pod, namespace: str) -> bool:
    return (not conf.namespace_isolation or namespace == pod.namespace
            or namespace in conf.global_namespaces)


def _nad_config(conf: MultusConf, source: definitions.Source, pod: Pod, namespace: str,
                name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The NAD and its CNI config; unknown networks are a config error naming the pod."""
    nad = source.nad(namespace, name)
    if nad is None:
        where = "the Kubernetes API" if source.api else conf.conf_dir
        raise _pod_error(pod, f"NetworkAttachmentDefinition {namespace}/{name} not found "
                              f"in {where}")
    return nad, definitions.nad_config(nad, conf.conf_dir)


def _named_network(conf: MultusConf, source: definitions.Source, pod: Pod,
                   reference: str) -> tuple[str, dict[str, Any]]:
    """`clusterNetwork` and `defaultNetworks` entries: a file or directory path, or a NAD
    (`[namespace/]name`, in multusNamespace by default)."""
    if reference.startswith("/"):
        found = definitions.config_from_path(reference)
        if found is None:
            raise InvalidConfig(f"multus: network config {reference} does not exist")
        return str(found.get("name", reference)), found
    namespace, slash, name = reference.partition("/")
    if not slash:
        namespace, name = conf.multus_namespace, reference
    _, found = _nad_config(conf, source, pod, namespace, name)
    return f"{namespace}/{name}", found


def _cluster_attachment(conf: MultusConf, args: CmdArgs, source: definitions.Source,
                        pod: Pod) -> Attachment:
    runtime = dict(args.conf.get("runtimeConfig") or {})
    override = pod.annotation(selection.DEFAULT_NETWORK_ANNOTATION)
    if override:
        try:
            chosen = selection.parse_reference(override, pod.namespace)
        except ValueError as exc:
            raise _pod_error(pod, f"invalid {selection.DEFAULT_NETWORK_ANNOTATION} "
                                  f"annotation: {exc}") from None
        if not _allowed(conf, pod, chosen.namespace) and chosen.namespace != (
                conf.multus_namespace):
            raise _isolation_error(pod, chosen)
        _, found = _nad_config(conf, source, pod, chosen.namespace, chosen.name)
        return Attachment(chosen.key, args.ifname, found, runtime, cluster=True)
    if conf.cluster_network:
        name, found = _named_network(conf, source, pod, conf.cluster_network)
        return Attachment(name, args.ifname, found, runtime, cluster=True)
    first = delegates.as_list(conf.delegates[0])
    return Attachment(str(first["name"]), args.ifname, first, runtime, cluster=True)


def _isolation_error(pod: Pod, chosen: Selection) -> InvalidConfig:
    return _pod_error(pod, f"namespace isolation violation: NetworkAttachmentDefinition "
                           f"{chosen.key} is not in the pod's namespace {pod.namespace}")


def _selected_attachment(conf: MultusConf, source: definitions.Source, pod: Pod,
                         chosen: Selection, devices: dict[str, list[str]]) -> Attachment:
    if not _allowed(conf, pod, chosen.namespace):
        raise _isolation_error(pod, chosen)
    nad, found = _nad_config(conf, source, pod, chosen.namespace, chosen.name)
    device_id = chosen.device_id
    resource = definitions.resource_name(nad)
    if not device_id and resource:
        if resource not in devices:
            devices[resource] = definitions.allocated_devices(pod.uid, resource)
        if devices[resource]:
            device_id = devices[resource].pop(0)  # one device per attachment, in order
    runtime = chosen.runtime_config()
    if device_id:
        runtime["deviceID"] = device_id
    return Attachment(chosen.key, chosen.interface, found, runtime, chosen.cni_args or {},
                      gateways=chosen.gateways, device_id=device_id)


def selections(pod: Pod) -> list[Selection]:
    try:
        return selection.parse(pod.annotation(selection.NETWORKS_ANNOTATION), pod.namespace)
    except ValueError as exc:
        raise _pod_error(pod, f"invalid {selection.NETWORKS_ANNOTATION} annotation: "
                              f"{exc}") from None


def plan(conf: MultusConf, args: CmdArgs, source: definitions.Source,
         pod: Pod) -> list[Attachment]:
    """Every attachment ADD makes, in order, each with its interface name."""
    if source.api and pod.name:
        pod.object = source.pod(pod.namespace, pod.name)
        if pod.object is None:
            raise UnknownContainer(f"multus: pod {pod} not found in the Kubernetes API")
    attachments = [_cluster_attachment(conf, args, source, pod)]
    attachments += [Attachment(str(extra.get("name", "")), "", extra)
                    for extra in conf.delegates[1:]]
    if pod.namespace not in conf.system_namespaces:
        for reference in conf.default_networks:
            name, found = _named_network(conf, source, pod, reference)
            attachments.append(Attachment(name, "", found))
    devices: dict[str, list[str]] = {}
    attachments += [_selected_attachment(conf, source, pod, chosen, devices)
                    for chosen in selections(pod)]
    name_interfaces(pod, attachments)
    return attachments


def name_interfaces(pod: Pod, attachments: list[Attachment]) -> None:
    """`net<position>` unless the selection names the interface; names must be usable
    and distinct."""
    seen: set[str] = set()
    for position, attachment in enumerate(attachments):
        attachment.ifname = attachment.ifname or f"net{position}"
        problem = ifname_problem(attachment.ifname)
        if problem:
            raise _pod_error(pod, f"network {attachment.name}: {problem}")
        if attachment.ifname in seen:
            raise _pod_error(pod, f"network {attachment.name}: interface "
                                  f"{attachment.ifname!r} is used twice")
        seen.add(attachment.ifname)


# --- default route and network-status --------------------------------------------------------

def move_default_route(netns: str, attachments: list[Attachment]) -> None:
    """`default-route` on a selection: the cluster network's default route goes, one via the
    given gateway on that attachment's interface comes (Multus' gateway request)."""
    wanted = [a for a in attachments if a.gateways and not a.cluster]
    if not wanted:
        return
    import socket

    from pycni import link

    families = {ipaddress.ip_address(gw).version for a in wanted for gw in a.gateways}
    cluster = next(a for a in attachments if a.cluster)
    with link.socket(netns) as ipr:
        found = ipr.link_lookup(ifname=cluster.ifname)
        for version in families if found else ():
            family = socket.AF_INET if version == 4 else socket.AF_INET6
            for route in ipr.get_routes(family=family, oif=found[0], table=254):
                if route["dst_len"] == 0:
                    ipr.route("del", family=family, dst_len=0, oif=found[0], table=254,
                              gateway=route.get_attr("RTA_GATEWAY"))
        for attachment in wanted:
            index = ipr.link_lookup(ifname=attachment.ifname)
            if not index:
                raise CNIError(f"multus: interface {attachment.ifname} of network "
                               f"{attachment.name} is missing for its default route")
            for gateway in attachment.gateways:
                version = ipaddress.ip_address(gateway).version
                ipr.route("replace", family=socket.AF_INET if version == 4 else socket.AF_INET6,
                          dst="0.0.0.0/0" if version == 4 else "::/0", gateway=gateway,
                          oif=index[0])


def network_status(attachments: list[Attachment]) -> list[dict[str, Any]]:
    """The `k8s.v1.cni.cncf.io/network-status` entries of the attachments made."""
    moved = any(a.gateways for a in attachments if not a.cluster)
    status = []
    for attachment in attachments:
        if attachment.result is None:
            continue
        result = Result.from_dict(attachment.result)
        index = next((i for i, iface in enumerate(result.interfaces)
                      if iface.name == attachment.ifname and iface.sandbox), None)
        entry: dict[str, Any] = {"name": attachment.name, "interface": attachment.ifname}
        ips = [ip.address.split("/")[0] for ip in result.ips
               if index is None or ip.interface is None or ip.interface == index]
        if ips:
            entry["ips"] = ips
        if index is not None and result.interfaces[index].mac:
            entry["mac"] = result.interfaces[index].mac
        entry["default"] = bool(attachment.gateways) if moved else attachment.cluster
        entry["dns"] = {k: v for k, v in result.dns.items() if v}
        if attachment.device_id:
            entry["device-info"] = {"type": "pci", "version": "1.1.0",
                                    "pci": {"pci-address": attachment.device_id}}
        status.append(entry)
    return status


def publish_status(source: definitions.Source, namespace: str, name: str,
                   attachments: list[Attachment]) -> None:
    """Best effort: the pod runs whether or not its annotation could be written."""
    if not source.api or not name:
        return
    try:
        source.patch_network_status(namespace, name, network_status(attachments))
    except CNIError as err:
        _warn("multus: pod %s/%s: failed to write network-status: %s", namespace, name, err)


# --- ADD, DEL, CHECK, STATUS, GC -------------------------------------------------------------

def _undo_attachment(attachment: Attachment, environ: dict[str, str], path: list[str]) -> None:
    try:
        delegates.delete(attachment, environ, path)
    except CNIError as err:
        _warn("multus: undoing network %s (%s) failed: %s", attachment.name, attachment.ifname,
              err)


def cmd_add(args: CmdArgs) -> Result:
    conf = load_conf(args)
    check_readiness(conf)
    pod = identify(args)
    source = definitions.open_source(conf.conf_dir, conf.kubeconfig)
    attachments = plan(conf, args, source, pod)
    environ, path = delegate_environ(conf, args)
    record = cache.PodCache(args.container_id, args.ifname, args.netns, pod.namespace,
                            pod.name, pod.uid, attachments)
    cluster_result: Result | None = None
    with cache.locked(conf.cni_dir, args.container_id), ExitStack() as undo:
        cache.save(conf.cni_dir, record)
        undo.callback(cache.remove, conf.cni_dir, args.container_id, args.ifname)
        for attachment in attachments:
            # armed first: a delegate failing half-way is DEL'd too, as Multus does
            undo.callback(_undo_attachment, attachment, environ, path)
            try:
                result = delegates.add(attachment, environ, path)
            except CNIError as err:
                raise type(err)(f"multus: pod {pod}: network {attachment.name} "
                                f"({attachment.ifname}): {err.msg}", err.details,
                                code=err.code) from None
            if attachment.cluster:
                cluster_result = result
            cache.save(conf.cni_dir, record)
        move_default_route(args.netns, attachments)
        undo.pop_all()
    publish_status(source, pod.namespace, pod.name, attachments)
    assert cluster_result is not None
    return cluster_result


def check_readiness(conf: MultusConf, error: type[CNIError] = TryAgainLater) -> None:
    """The cluster network's agent writes the readiness file once it can serve pods."""
    if conf.readinessindicatorfile and not os.path.exists(conf.readinessindicatorfile):
        raise error(f"multus: the cluster network is not ready: "
                    f"{conf.readinessindicatorfile} does not exist")


def delete_attachments(conf: MultusConf, record: cache.PodCache, environ: dict[str, str],
                       path: list[str]) -> None:
    """DEL in reverse; the cache keeps what could not be deleted, so DEL can be retried."""
    failure: CNIError | None = None
    for attachment in reversed(list(record.attachments)):
        try:
            delegates.delete(attachment, environ, path)
        except CNIError as err:
            failure = failure or err
            continue
        record.attachments.remove(attachment)
    if failure is None:
        cache.remove(conf.cni_dir, record.container_id, record.ifname)
        return
    cache.save(conf.cni_dir, record)
    raise type(failure)(f"multus: pod {record.pod}: {failure.msg}", failure.details,
                        code=failure.code)


def cmd_del(args: CmdArgs) -> None:
    conf = load_conf(args)
    environ, path = delegate_environ(conf, args)
    with cache.locked(conf.cni_dir, args.container_id):
        try:
            record = cache.load(conf.cni_dir, args.container_id, args.ifname)
        except cache.CorruptCache as exc:
            _warn("multus: cache of %s (%s) is corrupt (%s): removed after a best-effort DEL "
                  "of the cluster network", args.container_id, args.ifname, exc)
            _delete_without_cache(conf, args, environ, path, use_api=False)
            cache.remove(conf.cni_dir, args.container_id, args.ifname)
            return
        if record is None:
            _delete_without_cache(conf, args, environ, path, use_api=True)
            return
        delete_attachments(conf, record, environ, path)


def _delete_without_cache(conf: MultusConf, args: CmdArgs, environ: dict[str, str],
                          path: list[str], use_api: bool) -> None:
    """No cache (ADD never ran here, or ran before this node had one): the pod's attachments
    as far as the API still tells them, then the cluster network from the config."""
    pod = identify(args)
    attachments: list[Attachment] = []
    try:
        source = (definitions.open_source(conf.conf_dir, conf.kubeconfig) if use_api
                  else definitions.Source(conf.conf_dir))
        attachments = plan(conf, args, source, pod)
    except CNIError as err:
        _warn("multus: DEL of %s without a cache: only the cluster network (%s)",
              args.container_id, err)
        try:
            attachments = [_cluster_attachment(conf, args, definitions.Source(conf.conf_dir),
                                               Pod(pod.namespace, pod.name, pod.uid))]
            name_interfaces(pod, attachments)
        except CNIError as again:
            _warn("multus: DEL of %s: no cluster network to delete: %s", args.container_id,
                  again)
            return
    for attachment in reversed(attachments):
        try:
            delegates.delete(attachment, environ, path)
        except CNIError as err:
            if attachment.cluster:
                raise
            _warn("multus: DEL of network %s (%s) failed: %s", attachment.name,
                  attachment.ifname, err)


def cmd_check(args: CmdArgs) -> None:
    conf = load_conf(args)
    environ, path = delegate_environ(conf, args)
    try:
        record = cache.load(conf.cni_dir, args.container_id, args.ifname)
    except cache.CorruptCache as exc:
        where = cache.path(conf.cni_dir, args.container_id, args.ifname)
        raise CNIError(f"multus: cache {where} of container {args.container_id!r} interface "
                       f"{args.ifname!r} is corrupt ({exc}): DEL and ADD the pod again"
                       ) from None
    if record is None:
        raise CNIError(f"multus: no cache for container {args.container_id!r} interface "
                       f"{args.ifname!r}: was ADD run with this cniDir?")
    for attachment in record.attachments:
        try:
            delegates.check(attachment, environ, path)
        except CNIError as err:
            raise type(err)(f"multus: pod {record.pod}: network {attachment.name} "
                            f"({attachment.ifname}): {err.msg}", err.details,
                            code=err.code) from None


def configured_networks(conf: MultusConf, source: definitions.Source) -> list[Attachment]:
    """The networks every pod outside the system namespaces gets: the cluster network, the
    other `delegates` and `defaultNetworks`."""
    pod = Pod("", "", "")
    if conf.cluster_network:
        name, found = _named_network(conf, source, pod, conf.cluster_network)
        networks = [Attachment(name, "", found, cluster=True)]
    else:
        networks = [Attachment("", "", conf.delegates[0], cluster=True)]
    networks += [Attachment("", "", extra) for extra in conf.delegates[1:]]
    for reference in conf.default_networks:
        name, found = _named_network(conf, source, pod, reference)
        networks.append(Attachment(name, "", found))
    return networks


def cmd_status(args: CmdArgs) -> None:
    """The readiness file, then STATUS of every configured network: ADD needs them all."""
    conf = load_conf(args)
    check_readiness(conf, NotReady)
    environ, path = delegate_environ(conf, args)
    needs_api = conf.cluster_network or conf.default_networks
    source = (definitions.open_source(conf.conf_dir, conf.kubeconfig) if needs_api
              else definitions.Source(conf.conf_dir))
    for network in configured_networks(conf, source):
        try:
            delegates.status(network, environ, path)
        except CNIError as err:
            raise type(err)(f"multus: network {network.network}: {err.msg}", err.details,
                            code=err.code) from None


def _cached_environ(environ: dict[str, str], record: cache.PodCache) -> dict[str, str]:
    """The environment of the pod's ADD, from its cache (GC has no container of its own)."""
    cached = dict(environ)
    cached.update({"CNI_CONTAINERID": record.container_id, "CNI_IFNAME": record.ifname,
                   "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={record.pod_namespace};"
                               f"K8S_POD_NAME={record.pod_name}"})
    cached.pop("CNI_NETNS", None)
    if record.netns and os.path.exists(record.netns):
        cached["CNI_NETNS"] = record.netns
    return cached


def _configured_offline(conf: MultusConf) -> list[Attachment]:
    """The configured networks known without the API: `delegates`, and `clusterNetwork` and
    `defaultNetworks` given as paths or as files in confDir (a NAD only the API knows is
    reached through the caches of the pods on it)."""
    found = [Attachment("", "", raw) for raw in conf.delegates]
    source = definitions.Source(conf.conf_dir)
    for reference in filter(None, [conf.cluster_network, *conf.default_networks]):
        try:
            found.append(Attachment("", "", _named_network(conf, source, Pod("", "", ""),
                                                          reference)[1]))
        except CNIError:
            continue
    return found


def _delete_corrupt(conf: MultusConf, args: CmdArgs, environ: dict[str, str],
                    path: list[str], container_id: str, ifname: str) -> bool:
    """What DEL does with a corrupt cache, for GC: the networks known without the API (the
    cluster network at least) DEL'd in the attachment's names, then the file removed; kept
    for the next GC when the cluster network's DEL fails. The file name gives the container
    and interface; the pod and its namespace are unknown."""
    stale = CmdArgs("DEL", container_id, "", ifname, "", args.path, args.stdin_data, args.conf,
                    args.cni_version, args.environ)
    stale_environ = dict(environ)
    stale_environ.update({"CNI_CONTAINERID": container_id, "CNI_IFNAME": ifname})
    for unknown in ("CNI_NETNS", "CNI_ARGS"):
        stale_environ.pop(unknown, None)
    try:
        _delete_without_cache(conf, stale, stale_environ, path, use_api=False)
    except CNIError as err:
        _warn("multus: GC: DEL of %s (%s) with a corrupt cache failed: %s", container_id,
              ifname, err)
        return False
    cache.remove(conf.cni_dir, container_id, ifname)
    return True


def cmd_gc(args: CmdArgs) -> None:
    """Attachments the runtime no longer lists are DEL'd and forgotten; then GC goes to every
    delegate network with the attachments still live on it, in its own interface names."""
    from pycni.config import valid_attachments

    conf = load_conf(args)
    valid = valid_attachments(args)
    environ, path = delegate_environ(conf, args)
    networks: dict[str, Attachment] = {}
    live: dict[str, list[tuple[str, str]]] = {}
    live_containers: set[str] = set()
    unreadable: list[tuple[str, str]] = []  # live attachments whose cache is corrupt
    for container_id, ifname in list(cache.names(conf.cni_dir)):
        try:
            record = cache.load(conf.cni_dir, container_id, ifname)
        except cache.CorruptCache as exc:
            if (container_id, ifname) in valid:
                _warn("multus: GC: cache of live %s (%s) is corrupt (%s): kept for its DEL",
                      container_id, ifname, exc)
                unreadable.append((container_id, ifname))
                live_containers.add(container_id)
                continue
            _warn("multus: GC: cache of %s (%s) is corrupt (%s): removed after a best-effort "
                  "DEL of the cluster network", container_id, ifname, exc)
            if not _delete_corrupt(conf, args, environ, path, container_id, ifname):
                live_containers.add(container_id)
            continue
        if record is None:
            continue
        if (container_id, ifname) not in valid:
            for attachment in record.attachments:  # GC'd below, with what is still live
                networks.setdefault(attachment.network, attachment)
            try:
                delete_attachments(conf, record, _cached_environ(environ, record), path)
            except CNIError as err:
                _warn("multus: GC: DEL of stale %s (%s) failed: %s", container_id, ifname, err)
                live_containers.add(container_id)
            continue
        live_containers.add(container_id)
        for attachment in record.attachments:
            networks.setdefault(attachment.network, attachment)
            live.setdefault(attachment.network, []).append((container_id, attachment.ifname))
    for configured in _configured_offline(conf):
        networks.setdefault(configured.network, configured)
    for network, attachment in networks.items():
        # the networks of a live pod whose cache is corrupt are unknown: its runtime
        # attachment (the cluster network's interface) is kept on every one
        kept = [*live.get(network, []), *unreadable]
        try:
            delegates.gc(attachment, kept, environ, path)
        except CNIError as err:
            _warn("multus: GC of network %s failed: %s", network, err)
    cache.remove_stale_locks(conf.cni_dir, live_containers)


PLUGIN = Plugin("pycni multus meta plugin", add=cmd_add, delete=cmd_del, check=cmd_check,
                status=cmd_status, gc=cmd_gc)
