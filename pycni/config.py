"""Network configuration: the pydantic base model, CNI_ARGS, and the override order.

Overrides apply in the spec's order, later winning: the config file, then `CNI_ARGS`, then
`args.cni`, then `runtimeConfig` (capability arguments the runtime filled in).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from pycni.errors import InvalidConfig, InvalidEnvironment, UnsupportedField
from pycni.skel import CmdArgs

MAC = re.compile(r"^([0-9a-fA-F]{2}[:-]){5}[0-9a-fA-F]{2}$")   # a MAC address key's value

# Keys kubelet passes in CNI_ARGS; every plugin accepts them.
K8S_ARGS = frozenset({"K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_INFRA_CONTAINER_ID",
                      "K8S_POD_UID", "IgnoreUnknown"})


class NetConf(BaseModel):
    """Keys every plugin config has. Unknown keys are kept (`model_extra`)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    cni_version: str = "0.1.0"
    name: str = ""
    type: str = ""
    capabilities: dict[str, bool] = {}
    ipam: dict[str, Any] | None = None
    dns: dict[str, Any] | None = None
    args: dict[str, Any] | None = None
    runtime_config: dict[str, Any] = {}
    prev_result: dict[str, Any] | None = None

    @property
    def ipam_type(self) -> str:
        """The IPAM plugin's type ('' when the attachment has no IPAM: L2 only)."""
        return str((self.ipam or {}).get("type") or "")


class Override(NamedTuple):
    """Where a config field may also come from (None: not from there)."""

    cni_args: str | None = None  # key in CNI_ARGS
    args_cni: str | None = None  # key in the config's args.cni
    runtime: str | None = None  # key in runtimeConfig


def parse_cni_args(raw: str, known: frozenset[str] | set[str] = frozenset()) -> dict[str, str]:
    """`K=V;K=V` into a dict. Unknown keys are refused unless `IgnoreUnknown` is true."""
    pairs: dict[str, str] = {}
    for item in raw.split(";"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidEnvironment(f"CNI_ARGS: invalid pair {item!r}, expected KEY=VALUE")
        pairs[key] = value
    ignore_unknown = pairs.get("IgnoreUnknown", "").lower() in ("1", "true")
    if not ignore_unknown:
        unknown = sorted(set(pairs) - K8S_ARGS - set(known))
        if unknown:
            raise UnsupportedField(f"CNI_ARGS: unknown argument {unknown[0]!r}",
                                   "set IgnoreUnknown=1 to ignore arguments a plugin does not use")
    return pairs


M = TypeVar("M", bound=NetConf)


def load(model: type[M], args: CmdArgs, overrides: dict[str, Override] | None = None,
         known_args: frozenset[str] = frozenset()) -> M:
    """Validate the config into `model`, after applying overrides in the spec's order.

    `known_args`: CNI_ARGS keys the plugin reads itself (besides the overrides' keys).
    """
    data: dict[str, Any] = dict(args.conf)
    overrides = overrides or {}
    cni_args = parse_cni_args(
        args.args, {o.cni_args for o in overrides.values() if o.cni_args} | known_args)
    args_section = data.get("args") or {}
    if not isinstance(args_section, dict):
        raise InvalidConfig("args must be a JSON object")
    args_cni = args_section.get("cni") or {}
    runtime = data.get("runtimeConfig") or {}
    if not isinstance(args_cni, dict) or not isinstance(runtime, dict):
        raise InvalidConfig("args.cni and runtimeConfig must be JSON objects")
    for field, source in overrides.items():
        known = model.model_fields.get(field)
        key = (known.alias or field) if known else field  # unknown: kept as an extra key
        for layer, name in ((cni_args, source.cni_args), (args_cni, source.args_cni),
                            (runtime, source.runtime)):
            if name and name in layer:
                data[key] = layer[name]  # later layers win
    data["cniVersion"] = args.cni_version
    return parse(model, data)


B = TypeVar("B", bound=BaseModel)


def parse(model: type[B], data: object, where: str = "") -> B:
    """Validate `data` (a config or a section of one, at `where`) into `model`; code 7."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join([where] * bool(where) + [str(p) for p in first["loc"]]) or "config"
        raise InvalidConfig(f"invalid network config: {path}: {first['msg']}",
                            f"{exc.error_count()} problem(s)") from None


class Section(BaseModel):
    """A nested config section (e.g. `ipam`): camelCase keys, unknown keys kept."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")


def valid_attachments(args: CmdArgs) -> set[tuple[str, str]]:
    """GC's list of live attachments, (containerID, ifname) pairs; the older key too."""
    raw = args.conf.get("cni.dev/valid-attachments", args.conf.get("cni.dev/attachments"))
    if raw is None:
        raise InvalidConfig("GC needs cni.dev/valid-attachments")
    try:
        return {(str(item["containerID"]), str(item["ifname"])) for item in raw}
    except (TypeError, KeyError):
        raise InvalidConfig("cni.dev/valid-attachments must be a list of "
                            '{"containerID", "ifname"} objects') from None
