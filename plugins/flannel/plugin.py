"""flannel (CNI type): every pod of the default network, delegated to bridge + host-local.

The node agent writes `subnet.env` once it holds a lease; this plugin turns the lease into a
delegate config (bridge by default, host-local over the node's subnet, routes to the cluster
network), saves it, and runs the delegate. DEL and CHECK use the saved config, never
`subnet.env`: a pod outlives the lease it was made under, and DEL must work while the agent is
down. Keys and the delegate built are the reference plugin's; beyond it: CHECK really checks,
STATUS and GC, the saved config is per interface and removed when ADD fails.

Runs at every pod start: it imports no pydantic and nothing of the agent.
"""

from __future__ import annotations

import ipaddress
import json
import os
from contextlib import ExitStack

from pycni.plugins.flannel import subnet_env

from pycni import invoke
from pycni.errors import CNIError, InvalidConfig, IOFailure, NotReady, TryAgainLater
from pycni.result import Result
from pycni.skel import CmdArgs, Plugin
from pycni.store import Store

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from pycni.result import Json

DEFAULT_DATA_DIR = "/var/lib/cni/flannel"
DEFAULT_DELEGATE = "bridge"
AGENT = "the flannel agent (flanneld)"
# Keys of the flannel config handed to the delegate as they are.
PASSED_THROUGH = ("runtimeConfig", "capabilities")


# --- config ---------------------------------------------------------------------------------

class FlannelConf:
    """The flannel keys; the rest of the config only matters to the delegate."""

    __slots__ = ("name", "subnet_file", "data_dir", "delegate", "ipam", "raw")

    def __init__(self, name: str, subnet_file: str, data_dir: str, delegate: Json,
                 ipam: Json, raw: Json) -> None:
        self.name, self.subnet_file, self.data_dir = name, subnet_file, data_dir
        self.delegate, self.ipam, self.raw = delegate, ipam, raw


def _path(conf: Json, key: str, default: str) -> str:
    value = conf.get(key)
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        raise InvalidConfig(f"{key} must be a string (a path), not {value!r}")
    return value


def _section(conf: Json, key: str) -> Json:
    value = conf.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidConfig(f"{key} must be a JSON object, not {type(value).__name__}")
    return dict(value)


def load_conf(args: CmdArgs) -> FlannelConf:
    """The flannel keys with their defaults. The delegate is validated where it is built:
    DEL and CHECK use the saved one, whatever the config says now."""
    conf = args.conf
    return FlannelConf(
        name=str(conf.get("name") or ""),
        subnet_file=_path(conf, "subnetFile", subnet_env.DEFAULT_PATH),
        data_dir=_path(conf, "dataDir", DEFAULT_DATA_DIR),
        delegate=_section(conf, "delegate"),
        ipam=_section(conf, "ipam"),
        raw=conf,
    )


def read_subnet_env(conf: FlannelConf) -> subnet_env.SubnetEnv:
    """The lease; a missing file means the agent has not started yet (try again later)."""
    try:
        return subnet_env.read(conf.subnet_file)
    except FileNotFoundError:
        raise TryAgainLater(f"{AGENT} is not ready: {conf.subnet_file} does not exist",
                            "the agent writes it once it holds a lease for this node; "
                            "check that it runs") from None
    except OSError as exc:
        raise IOFailure(f"failed to read {conf.subnet_file}: {exc.strerror}") from None
    except ValueError as exc:
        raise InvalidConfig(f"malformed {conf.subnet_file} (written by {AGENT}): {exc}") from None


def _user_routes(ipam: Json) -> list[Json]:
    """ipam.routes as given, refused (like the reference) when it is not a list of routes."""
    routes = ipam.get("routes")
    if routes is None:
        return []
    if not isinstance(routes, list):
        raise InvalidConfig("failed to parse ipam.routes: expected a list of routes")
    for route in routes:
        if not isinstance(route, dict) or not isinstance(route.get("dst"), str):
            raise InvalidConfig(f"failed to parse ipam.routes: {route!r} has no dst")
        try:
            ipaddress.ip_network(route["dst"], strict=False)
            if route.get("gw") is not None:
                ipaddress.ip_address(route["gw"])
        except (TypeError, ValueError) as exc:
            raise InvalidConfig(f"failed to parse ipam.routes: {exc}") from None
    return [dict(route) for route in routes]


def delegate_ipam(conf: FlannelConf, env: subnet_env.SubnetEnv) -> Json:
    """The user's ipam keys, with one range set per leased subnet and a route to each
    cluster network after the user's routes (any `ranges` given are replaced)."""
    ipam = dict(conf.ipam)
    ipam.setdefault("type", "host-local")
    routes = _user_routes(ipam)
    ipam["ranges"] = [[{"subnet": str(subnet.network)}] for subnet in env.subnets]
    ipam["routes"] = routes + [{"dst": str(network)} for network in env.networks]
    return ipam


def build_delegate(conf: FlannelConf, env: subnet_env.SubnetEnv, cni_version: str) -> Json:
    """The delegate's config: the `delegate` object with the lease filled in."""
    delegate = dict(conf.delegate)
    if "type" in delegate and not (isinstance(delegate["type"], str) and delegate["type"]):
        raise InvalidConfig("'delegate' dictionary, if present, must have (string) 'type' field")
    for key in ("name", "ipam"):
        if key in delegate:
            raise InvalidConfig(f"'delegate' dictionary must not have '{key}' field, "
                                "it'll be set by flannel")
    delegate["name"] = conf.name
    delegate.setdefault("type", DEFAULT_DELEGATE)
    delegate.setdefault("ipMasq", not env.ipmasq)  # the agent masquerades, or the delegate
    if env.mtu:
        delegate.setdefault("mtu", env.mtu)
    if delegate["type"] == "bridge":
        delegate.setdefault("isGateway", True)
    delegate["cniVersion"] = cni_version
    delegate["ipam"] = delegate_ipam(conf, env)
    for key in PASSED_THROUGH:
        if key in conf.raw:
            delegate[key] = conf.raw[key]
    return delegate


def _encode(delegate: Json) -> bytes:
    return json.dumps(delegate, indent=2).encode()


# --- the saved delegate ---------------------------------------------------------------------

def saved_key(args: CmdArgs) -> str:
    """One file per attachment. Container IDs hold no ':', so the key splits back in GC."""
    return f"{args.container_id}:{args.ifname}"


def attachment_of(key: str) -> tuple[str, str] | None:
    container_id, sep, ifname = key.partition(":")
    return (container_id, ifname) if sep and container_id and ifname else None


def find_saved(conf: FlannelConf, args: CmdArgs) -> tuple[str, bytes] | None:
    """The saved delegate's path and bytes. A node upgraded from the reference plugin still
    has its files, one per container directly in dataDir: those are found too."""
    store = Store(conf.data_dir, conf.name)
    try:
        data = store.read(saved_key(args))
    except InvalidConfig:  # an interface name no file can be named after: ADD refused it
        data = None
    if data is not None:
        return store.path(saved_key(args)), data
    legacy = os.path.join(conf.data_dir, args.container_id)
    if os.path.isfile(legacy):
        try:
            with open(legacy, "rb") as handle:
                return legacy, handle.read()
        except OSError as exc:
            raise IOFailure(f"failed to read {legacy}: {exc.strerror}") from None
    return None


def _decode_saved(data: bytes) -> Json | None:
    try:
        delegate = json.loads(data)
    except ValueError:
        return None
    if not isinstance(delegate, dict) or not isinstance(delegate.get("type"), str):
        return None
    return delegate


def _with_current(delegate: Json, args: CmdArgs) -> Json:
    """The saved delegate with what this call brings: its version, runtimeConfig and
    prevResult (which is written at this call's version)."""
    delegate = dict(delegate)
    delegate["cniVersion"] = args.cni_version
    for key in ("runtimeConfig", "prevResult"):
        if key in args.conf:
            delegate[key] = args.conf[key]
    return delegate


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise IOFailure(f"failed to remove {path}: {exc.strerror}") from None


def _warn(message: str, *values: object) -> None:
    from pycni import log

    log.get().warning(message, *values)


def _undo_add(delegate_type: str, data: bytes, args: CmdArgs) -> None:
    """Best effort: a failure here is logged, the error reported is the one that undid ADD."""
    try:
        invoke.delegate("DEL", delegate_type, data, args.environ, args.path)
    except CNIError as err:
        _warn("flannel: undoing %s ADD of %s failed: %s", delegate_type, args.container_id, err)


# --- the verbs ------------------------------------------------------------------------------

def cmd_add(args: CmdArgs) -> Result:
    conf = load_conf(args)
    env = read_subnet_env(conf)
    delegate = build_delegate(conf, env, args.cni_version)
    data, delegate_type = _encode(delegate), str(delegate["type"])
    store, key = Store(conf.data_dir, conf.name), saved_key(args)
    with ExitStack() as undo:
        store.write(key, data)
        undo.callback(store.discard, key)
        output = invoke.delegate("ADD", delegate_type, data, args.environ, args.path)
        undo.callback(_undo_add, delegate_type, data, args)
        result = Result.from_dict(output)
        undo.pop_all()
    return result


def cmd_del(args: CmdArgs) -> None:
    """DEL with the saved delegate, then forget it. Nothing saved: nothing to undo."""
    conf = load_conf(args)
    found = find_saved(conf, args)
    if found is None:
        return
    path, data = found
    delegate = _decode_saved(data)
    if delegate is None:
        _warn("flannel: %s is not a delegate config; removed without a delegate DEL", path)
        _remove(path)
        return
    invoke.delegate("DEL", delegate["type"], _encode(_with_current(delegate, args)),
                    args.environ, args.path)
    _remove(path)  # only now: a failed DEL is retried with the same delegate


def cmd_check(args: CmdArgs) -> None:
    conf = load_conf(args)
    found = find_saved(conf, args)
    if found is None:
        raise CNIError(f"no saved delegate config for container {args.container_id!r} "
                       f"interface {args.ifname!r}",
                       f"{Store(conf.data_dir, conf.name).path(saved_key(args))} is missing: "
                       "was ADD run with this network name and dataDir?")
    path, data = found
    delegate = _decode_saved(data)
    if delegate is None:
        raise CNIError(f"saved delegate config {path} is not a delegate config")
    invoke.delegate("CHECK", delegate["type"], _encode(_with_current(delegate, args)),
                    args.environ, args.path)


def cmd_status(args: CmdArgs) -> None:
    conf = load_conf(args)
    try:
        env = read_subnet_env(conf)
    except (TryAgainLater, IOFailure, InvalidConfig) as err:
        raise NotReady(f"{AGENT} is not ready", str(err)) from None
    delegate = build_delegate(conf, env, args.cni_version)
    invoke.delegate("STATUS", str(delegate["type"]), _encode(delegate), args.environ, args.path)


def cmd_gc(args: CmdArgs) -> None:
    """GC through the delegate (when the lease tells what it is), then forget the saved
    configs of attachments the runtime no longer lists."""
    from pycni.config import valid_attachments

    conf = load_conf(args)
    valid = valid_attachments(args)
    try:
        env = read_subnet_env(conf)
    except (TryAgainLater, IOFailure, InvalidConfig) as err:
        _warn("flannel: GC without the delegate: %s", err)
    else:
        delegate = build_delegate(conf, env, args.cni_version)
        for key in ("cni.dev/valid-attachments", "cni.dev/attachments"):
            if key in args.conf:
                delegate[key] = args.conf[key]
        invoke.delegate("GC", str(delegate["type"]), _encode(delegate), args.environ,
                        args.path)
    store = Store(conf.data_dir, conf.name)
    for key in store.names():
        attachment = attachment_of(key)
        if attachment is not None and attachment not in valid:
            store.delete(key)


PLUGIN = Plugin("pycni flannel plugin", add=cmd_add, delete=cmd_del, check=cmd_check,
                status=cmd_status, gc=cmd_gc)
