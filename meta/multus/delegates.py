"""Running one attachment's delegate, a config or a config list, as libcni does.

Plugins of a list run in order on ADD and CHECK, each with the previous plugin's result as
`prevResult`, and in reverse on DEL with the attachment's final result. Each plugin gets the
list's `name`, the capability arguments it declares (`runtimeConfig`), the selection's
`cni-args` in `args.cni`, and CNI_IFNAME set to the attachment's interface. A plugin that
refuses the list's cniVersion is asked what it speaks and run at the highest version it
supports below that, instead of failing the pod. Our own types run in-process through
`pycni.invoke` when this program is the frozen bundle.
"""

from __future__ import annotations

import json

from pycni import invoke, spec
from pycni.errors import CNIError, IncompatibleVersion, InvalidConfig
from pycni.result import Result

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Mapping

    from pycni.result import Json

LIST_KEYS = ("cniVersion", "cniVersions", "name", "disableCheck", "disableGC", "plugins")


class Attachment:
    """One network attached to the pod under one interface, and what ADD made of it."""

    __slots__ = ("name", "ifname", "conf", "runtime", "cni_args", "cluster", "gateways",
                 "device_id", "versions", "result")

    def __init__(self, name: str, ifname: str, conf: Json, runtime: Json | None = None,
                 cni_args: Json | None = None, cluster: bool = False,
                 gateways: list[str] | None = None, device_id: str = "",
                 versions: list[str] | None = None, result: Json | None = None) -> None:
        self.name, self.ifname, self.conf = name, ifname, as_list(conf)
        self.runtime, self.cni_args = runtime or {}, cni_args or {}
        self.cluster, self.gateways, self.device_id = cluster, gateways or [], device_id
        self.versions, self.result = versions, result

    def to_json(self) -> Json:
        return {"name": self.name, "ifname": self.ifname, "conf": self.conf,
                "runtimeConfig": self.runtime, "cniArgs": self.cni_args,
                "cluster": self.cluster, "gateways": self.gateways, "deviceID": self.device_id,
                "versions": self.versions, "result": self.result}

    @classmethod
    def from_json(cls, data: Json) -> Attachment:
        """ValueError when `data` is not what `to_json` wrote."""
        try:
            attachment = cls(str(data["name"]), str(data["ifname"]), data["conf"],
                             data.get("runtimeConfig") or {}, data.get("cniArgs") or {},
                             bool(data.get("cluster")), list(data.get("gateways") or []),
                             str(data.get("deviceID") or ""), data.get("versions"),
                             data.get("result"))
        except (KeyError, TypeError, InvalidConfig) as exc:
            raise ValueError(f"not an attachment: {exc}") from None
        if attachment.result is not None and not isinstance(attachment.result, dict):
            raise ValueError("an attachment's result must be an object")
        return attachment

    @property
    def network(self) -> str:
        return str(self.conf.get("name", ""))


def as_list(conf: Json) -> Json:
    """A config in list form: a single plugin config becomes a list of one, its own keys
    staying on the plugin."""
    if not isinstance(conf, dict):
        raise InvalidConfig("a delegate config must be a JSON object")
    if "plugins" in conf:
        plugins = conf["plugins"]
        if not isinstance(plugins, list) or not plugins or not all(
                isinstance(p, dict) and isinstance(p.get("type"), str) and p["type"]
                for p in plugins):
            raise InvalidConfig(f"delegate list {conf.get('name')!r}: plugins must be a "
                                "non-empty list of configs with a type")
        listed = dict(conf)
    else:
        if not isinstance(conf.get("type"), str) or not conf["type"]:
            raise InvalidConfig(f"delegate config {conf.get('name')!r} has no type")
        listed = {key: conf[key] for key in ("cniVersion", "name") if key in conf}
        listed["plugins"] = [dict(conf)]
    if not isinstance(listed.get("name"), str) or not listed["name"]:
        raise InvalidConfig("a delegate config must have a name")
    version = listed.get("cniVersion")
    if not isinstance(version, str) or not version:
        versions = listed.get("cniVersions")
        best = spec.highest_supported(versions) if isinstance(versions, list) else None
        listed["cniVersion"] = best or spec.DEFAULT
    return listed


# --- versions -------------------------------------------------------------------------------

_SUPPORTED: dict[str, tuple[str, ...]] = {}


def supported_versions(plugin_type: str, version: str, environ: Mapping[str, str],
                       path: list[str]) -> tuple[str, ...]:
    """What the plugin's VERSION reports (ours: from the registry, without a process)."""
    executor = invoke.EXECUTOR
    binary = executor.find(plugin_type, path)
    if binary in _SUPPORTED:
        return _SUPPORTED[binary]
    if invoke.is_own(binary):
        from pycni import registry

        found = registry.versions(plugin_type)
    else:
        env = dict(environ)
        env["CNI_COMMAND"] = "VERSION"
        status, stdout = executor.run(binary, json.dumps({"cniVersion": version}).encode(), env)
        try:
            answer = json.loads(stdout)
            found = tuple(str(v) for v in answer["supportedVersions"])
        except (ValueError, KeyError, TypeError):
            raise CNIError(f"plugin {plugin_type!r} gave no usable VERSION answer",
                           f"status {status}") from None
    _SUPPORTED[binary] = found
    return found


def negotiate(wanted: str, supported: tuple[str, ...], plugin_type: str) -> str:
    """`wanted` when supported, else the highest supported version below it."""
    if wanted in supported:
        return wanted
    lower = [v for v in supported if _parses(v) and spec.parse(v) <= spec.parse(wanted)]
    if not lower:
        raise IncompatibleVersion(f"plugin {plugin_type!r} supports none of the versions up "
                                  f"to {wanted}", f"it supports {list(supported)}")
    return max(lower, key=spec.parse)


def _parses(version: str) -> bool:
    try:
        spec.parse(version)
    except IncompatibleVersion:
        return False
    return True


# --- one plugin -----------------------------------------------------------------------------

def plugin_config(attachment: Attachment, index: int, version: str,
                  prev: Result | None) -> bytes:
    """The config plugin `index` of the list receives, as libcni builds it."""
    plugin = dict(attachment.conf["plugins"][index])
    plugin["name"] = attachment.network
    plugin["cniVersion"] = version
    declared = plugin.get("capabilities") or {}
    runtime = {key: value for key, value in attachment.runtime.items()
               if isinstance(declared, dict) and declared.get(key)}
    if runtime:
        plugin["runtimeConfig"] = runtime
    else:
        plugin.pop("runtimeConfig", None)
    if attachment.cni_args:
        args = dict(plugin.get("args") or {})
        args["cni"] = {**(args.get("cni") or {}), **attachment.cni_args}
        plugin["args"] = args
    if attachment.device_id and index == 0:
        # as Multus does for device plugins (sriov, host-device): the device in the config
        plugin["deviceID"] = attachment.device_id
        plugin["pciBusID"] = attachment.device_id
    if prev is not None:
        plugin["prevResult"] = prev.to_version(version)
    else:
        plugin.pop("prevResult", None)
    return json.dumps(plugin).encode()


def _run(command: str, attachment: Attachment, index: int, version: str, prev: Result | None,
         environ: Mapping[str, str], path: list[str]) -> Json | None:
    plugin_type = str(attachment.conf["plugins"][index]["type"])
    data = plugin_config(attachment, index, version, prev)
    return invoke.delegate(command, plugin_type, data, environ, path,
                           CNI_IFNAME=attachment.ifname)


def _run_negotiating(command: str, attachment: Attachment, index: int, prev: Result | None,
                     environ: Mapping[str, str], path: list[str]) -> tuple[Json | None, str]:
    """Run at the list's version; if the plugin refuses it, at the best it supports."""
    wanted = str(attachment.conf["cniVersion"])
    try:
        return _run(command, attachment, index, wanted, prev, environ, path), wanted
    except IncompatibleVersion:
        plugin_type = str(attachment.conf["plugins"][index]["type"])
        version = negotiate(wanted, supported_versions(plugin_type, wanted, environ, path),
                            plugin_type)
        if version == wanted:
            raise
        return _run(command, attachment, index, version, prev, environ, path), version


def _version_of(attachment: Attachment, index: int) -> str:
    versions = attachment.versions or []
    if index < len(versions) and isinstance(versions[index], str):
        return versions[index]
    return str(attachment.conf["cniVersion"])


# --- the verbs ------------------------------------------------------------------------------

def add(attachment: Attachment, environ: Mapping[str, str], path: list[str]) -> Result:
    """ADD every plugin in order. On failure the caller DELs the attachment."""
    prev: Result | None = None
    attachment.versions = []
    for index in range(len(attachment.conf["plugins"])):
        output, version = _run_negotiating("ADD", attachment, index, prev, environ, path)
        attachment.versions.append(version)
        prev = Result.from_dict(output)
    assert prev is not None
    attachment.result = prev.to_version(spec.LATEST)
    return prev


def delete(attachment: Attachment, environ: Mapping[str, str], path: list[str]) -> None:
    """DEL every plugin in reverse with the final result; all are tried, the first error
    is raised after."""
    prev = Result.from_dict(attachment.result) if attachment.result else None
    failure: CNIError | None = None
    for index in reversed(range(len(attachment.conf["plugins"]))):
        version = _version_of(attachment, index)
        try:
            if attachment.versions is None:
                _run_negotiating("DEL", attachment, index, prev, environ, path)
            else:
                _run("DEL", attachment, index, version, prev, environ, path)
        except CNIError as err:
            failure = failure or err
    if failure is not None:
        raise failure


def check(attachment: Attachment, environ: Mapping[str, str], path: list[str]) -> None:
    """CHECK in order with the cached result; plugins below 0.4.0 cannot be checked."""
    if attachment.conf.get("disableCheck") is True:
        return
    if attachment.result is None:
        raise CNIError(f"no result cached for network {attachment.name!r} "
                       f"({attachment.ifname}): its ADD did not finish")
    prev = Result.from_dict(attachment.result)
    for index in range(len(attachment.conf["plugins"])):
        version = _version_of(attachment, index)
        if spec.at_least(version, "0.4.0"):
            _run("CHECK", attachment, index, version, prev, environ, path)


def status(attachment: Attachment, environ: Mapping[str, str], path: list[str]) -> None:
    """STATUS of each plugin; before 1.1.0 there is no STATUS, so nothing to ask."""
    for index in range(len(attachment.conf["plugins"])):
        version = _version_of(attachment, index)
        if spec.at_least(version, "1.1.0"):
            _run("STATUS", attachment, index, version, None, environ, path)


def gc(attachment: Attachment, valid: list[tuple[str, str]], environ: Mapping[str, str],
       path: list[str]) -> None:
    """GC of each plugin with the attachments of this network that are still live."""
    if attachment.conf.get("disableGC") is True:
        return
    items = [{"containerID": cid, "ifname": ifname} for cid, ifname in sorted(set(valid))]
    for index in range(len(attachment.conf["plugins"])):
        version = _version_of(attachment, index)
        if not spec.at_least(version, "1.1.0"):
            continue
        data = json.loads(plugin_config(attachment, index, version, None))
        data["cni.dev/valid-attachments"] = items
        plugin_type = str(data["type"])
        invoke.delegate("GC", plugin_type, json.dumps(data).encode(), environ, path)
