"""`pycni multus attach|detach`: add or remove one named attachment on a running pod.

What VM workloads do with secondary interfaces: the delegate of one NetworkAttachmentDefinition
runs against the pod's namespace as ADD would have run it, the pod's cache gains (or loses) the
attachment, so its DEL later removes it with the rest, and network-status is written again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pycni.meta.multus import cache, definitions, delegates, plugin, selection

from pycni import spec
from pycni.errors import CNIError
from pycni.skel import CmdArgs, decode_config

DEFAULT_CONFIG = "/etc/cni/net.d/00-multus.conf"
DEFAULT_IFNAME = "eth0"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pycni multus", description="hot-plug secondary networks on a running pod")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, about in (("attach", "add one attachment"), ("detach", "remove one attachment")):
        command = commands.add_parser(name, help=about)
        command.add_argument("--pod", required=True, help="the pod, namespace/name")
        command.add_argument("--network", required=True,
                             help="the NetworkAttachmentDefinition, [namespace/]name[@ifname]")
        command.add_argument("--container-id", required=True,
                             help="the pod sandbox's container ID (CNI_CONTAINERID)")
        command.add_argument("--netns", required=(name == "attach"), default="",
                             help="the pod's network namespace path")
        command.add_argument("--config", default=DEFAULT_CONFIG,
                             help=f"the multus config (default {DEFAULT_CONFIG})")
        command.add_argument("--ifname", default=DEFAULT_IFNAME,
                             help="the cluster network's interface, CNI_IFNAME of the pod's ADD")
        command.add_argument("--cni-path", default=os.environ.get("CNI_PATH", ""),
                             help="where plugins are (default: CNI_PATH, then binDir)")
    return parser


def _args(options: argparse.Namespace) -> CmdArgs:
    """The pod's ADD as the runtime made it, so the plugin's own code serves the command."""
    try:
        with open(options.config, "rb") as handle:
            stdin_data = handle.read()
    except OSError as exc:
        raise CNIError(f"cannot read {options.config}: {exc.strerror}") from None
    conf = decode_config(stdin_data)
    namespace, slash, name = options.pod.partition("/")
    if not slash or not namespace or not name:
        raise CNIError(f"--pod {options.pod!r}: expected namespace/name")
    cni_args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}"
    path = [p for p in options.cni_path.split(os.pathsep) if p]
    environ = dict(os.environ)
    environ.update({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": options.container_id,
                    "CNI_NETNS": options.netns, "CNI_IFNAME": options.ifname,
                    "CNI_ARGS": cni_args, "CNI_PATH": os.pathsep.join(path)})
    return CmdArgs("ADD", options.container_id, options.netns, options.ifname, cni_args, path,
                   stdin_data, conf, spec.config_version(conf), environ)


def _load(conf: plugin.MultusConf, args: CmdArgs) -> cache.PodCache:
    try:
        record = cache.load(conf.cni_dir, args.container_id, args.ifname)
    except cache.CorruptCache as exc:
        raise CNIError(f"multus: cache of {args.container_id} is corrupt: {exc}") from None
    if record is None:
        raise CNIError(f"multus: container {args.container_id!r} ({args.ifname}) has no "
                       f"attachments in {conf.cni_dir}: is the pod running on this node?")
    return record


def _free_ifname(record: cache.PodCache) -> str:
    used = {a.ifname for a in record.attachments}
    position = len(record.attachments)
    while f"net{position}" in used:
        position += 1
    return f"net{position}"


def attach(args: CmdArgs, network: str) -> dict[str, object]:
    conf = plugin.load_conf(args)
    pod = plugin.identify(args)
    chosen = _selection(network, pod)
    source = definitions.open_source(conf.conf_dir, conf.kubeconfig)
    environ, path = plugin.delegate_environ(conf, args)
    with cache.locked(conf.cni_dir, args.container_id):
        record = _load(conf, args)
        if source.api:
            pod.object = source.pod(pod.namespace, pod.name)
        attachment = plugin._selected_attachment(conf, source, pod, chosen, {})
        attachment.ifname = attachment.ifname or _free_ifname(record)
        plugin.name_interfaces(pod, [*record.attachments, attachment])
        try:
            delegates.add(attachment, environ, path)
        except CNIError:
            plugin._undo_attachment(attachment, environ, path)
            raise
        record.attachments.append(attachment)
        try:
            cache.save(conf.cni_dir, record)
        except CNIError:
            plugin._undo_attachment(attachment, environ, path)
            raise
    plugin.publish_status(source, pod.namespace, pod.name, record.attachments)
    return next(entry for entry in plugin.network_status([attachment]))


def detach(args: CmdArgs, network: str) -> dict[str, object]:
    conf = plugin.load_conf(args)
    pod = plugin.identify(args)
    chosen = _selection(network, pod)
    environ, path = plugin.delegate_environ(conf, args)
    with cache.locked(conf.cni_dir, args.container_id):
        record = _load(conf, args)
        found = [a for a in record.attachments if not a.cluster and a.name == chosen.key
                 and (not chosen.interface or a.ifname == chosen.interface)]
        if not found:
            raise CNIError(f"multus: pod {pod} has no attachment of {chosen.key}"
                           + (f" on {chosen.interface}" if chosen.interface else ""))
        attachment = found[-1]
        if not args.netns and record.netns:  # the pod's namespace, as its ADD had it
            environ["CNI_NETNS"] = record.netns
        delegates.delete(attachment, environ, path)
        record.attachments.remove(attachment)
        cache.save(conf.cni_dir, record)
    source = definitions.open_source(conf.conf_dir, conf.kubeconfig)
    plugin.publish_status(source, pod.namespace, pod.name, record.attachments)
    return {"name": attachment.name, "interface": attachment.ifname}


def _selection(network: str, pod: plugin.Pod) -> selection.Selection:
    try:
        return selection.parse_reference(network, pod.namespace)
    except ValueError as exc:
        raise CNIError(f"--network: {exc}") from None


def main(argv: list[str]) -> int:
    options = _parser().parse_args(argv)
    try:
        args = _args(options)
        command = attach if options.command == "attach" else detach
        done = command(args, options.network)
    except CNIError as err:
        print(f"pycni multus {options.command}: {err}", file=sys.stderr)
        return 1
    print(json.dumps(done, indent=2))
    return 0
