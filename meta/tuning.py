"""tuning: a chained plugin that sets net sysctls and link attributes of the pod interface.

Keys are the reference plugin's: `sysctl` (net.* only; `IFNAME` in a key stands for
CNI_IFNAME), `mac`, `mtu`, `promisc`, `allmulti`, `txQLen`, `dataDir`; also from `args.cni`
(same keys, its `sysctl` merged over the config's), the MAC from CNI_ARGS `MAC` and
`runtimeConfig.mac`. When `/etc/cni/tuning/allowlist.conf` exists (path overridable with the
environment variable PYCNI_TUNING_ALLOWLIST) every sysctl key must match one of its regexes.
Beyond the reference: original sysctl values and txqlen are restored on DEL as well, DEL
without the namespace drops the saved state, GC drops the state of vanished attachments.
"""

from __future__ import annotations

import json
import re
from contextlib import ExitStack
from typing import Any

from pycni import config, link, netns, store, sysctl
from pycni.errors import CNIError, InvalidConfig
from pycni.skel import CmdArgs, Plugin

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from pyroute2 import IPRoute

    from pycni.result import Result

DEFAULT_DATA_DIR = "/var/lib/cni/tuning"
DEFAULT_ALLOWLIST = "/etc/cni/tuning/allowlist.conf"
ALLOWLIST_ENV = "PYCNI_TUNING_ALLOWLIST"
MAC = config.MAC
IFF_ALLMULTI = 0x200


# --- config ---------------------------------------------------------------------------------

class TuningConf(config.NetConf):
    sysctl: dict[str, str] = {}
    mac: str = ""
    mtu: int = 0
    promisc: bool | None = None  # None: leave as it is
    allmulti: bool | None = None
    tx_q_len: int | None = None  # txQLen
    data_dir: str = ""

    def changes_link(self) -> bool:
        return bool(self.mac or self.mtu or self.promisc is not None
                    or self.allmulti is not None or self.tx_q_len is not None)


OVERRIDES = {
    "mac": config.Override(cni_args="MAC", args_cni="mac", runtime="mac"),
    "mtu": config.Override(args_cni="mtu"),
    "promisc": config.Override(args_cni="promisc"),
    "allmulti": config.Override(args_cni="allmulti"),
    "tx_q_len": config.Override(args_cni="txQLen"),
}


class _Duplicated(dict[str, Any]):
    """A JSON object that named a key twice (json.loads would keep the last silently)."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    return _Duplicated(found) if len(found) < len(pairs) else found


def _refuse_duplicate_sysctls(stdin_data: bytes) -> None:
    """The reference refuses a sysctl named twice: which value wins would be a guess."""
    raw = json.loads(stdin_data, object_pairs_hook=_object)
    args_cni = (raw.get("args") or {}).get("cni") or {} if isinstance(raw, dict) else {}
    for section in (raw, args_cni if isinstance(args_cni, dict) else {}):
        if isinstance(section.get("sysctl"), _Duplicated):
            raise InvalidConfig("duplicated sysctl keys are not allowed")


def sysctl_path(key: str, ifname: str) -> str:
    """The key as a path under /proc/sys (`net/ipv4/conf/eth0/arp_filter`), `IFNAME`
    replaced; refused unless it stays inside /proc/sys/net."""
    relative = key.strip("/") if "/" in key else key.replace(".", "/")
    relative = relative.replace("IFNAME", ifname, 1)  # after: an ifname may hold dots
    parts = relative.split("/")
    if parts[0] != "net" or len(parts) < 2 or any(p in ("", ".", "..") for p in parts):
        raise InvalidConfig(f"invalid net sysctl key: {key!r}",
                            "only keys under net. (/proc/sys/net) are allowed")
    return relative


def read_allowlist(path: str) -> list[re.Pattern[str]] | None:
    """The allowlist's regexes; None when the file does not exist (everything allowed)."""
    try:
        with open(path) as f:
            lines = [line.strip() for line in f]
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CNIError(f"failed to read sysctl allowlist {path}: {exc.strerror}") from None
    patterns = []
    for line in filter(None, lines):
        try:
            patterns.append(re.compile(line))
        except re.error as exc:
            raise InvalidConfig(f"invalid regex {line!r} in sysctl allowlist {path}: {exc}") \
                from None
    return patterns


def load_conf(args: CmdArgs, validate: bool = True) -> TuningConf:
    """The config with its overrides; `validate`: also the checks that guard ADD and CHECK
    (DEL, STATUS and GC must work whatever the allowlist says today)."""
    conf = config.load(TuningConf, args, OVERRIDES)
    extra = ((conf.args or {}).get("cni") or {}).get("sysctl")
    if extra is not None:
        if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
            raise InvalidConfig("args.cni.sysctl must map sysctl keys to string values")
        conf.sysctl = {**conf.sysctl, **extra}
    if not validate:
        return conf
    _refuse_duplicate_sysctls(args.stdin_data)
    if conf.mac:
        if not MAC.match(conf.mac):
            raise InvalidConfig(f"invalid MAC address {conf.mac!r}")
        conf.mac = conf.mac.lower().replace("-", ":")
        if int(conf.mac[:2], 16) & 1:
            raise InvalidConfig(f"invalid MAC address {conf.mac!r}: a multicast address")
    if conf.mtu < 0:
        raise InvalidConfig(f"invalid MTU {conf.mtu}")
    if conf.tx_q_len is not None and conf.tx_q_len < 0:
        raise InvalidConfig(f"invalid txQLen {conf.tx_q_len}")
    for key in conf.sysctl:
        sysctl_path(key, args.ifname)
    allowlist_path = args.environ.get(ALLOWLIST_ENV) or DEFAULT_ALLOWLIST
    allowed = read_allowlist(allowlist_path)
    if allowed is not None:
        for key in conf.sysctl:
            if not any(p.search(key) for p in allowed):
                raise InvalidConfig(f"sysctl {key!r} is not allowed",
                                    f"it matches no regex in {allowlist_path}")
    return conf


# --- state: the original values -------------------------------------------------------------

def state_store(conf: TuningConf) -> store.Store:
    return store.Store(conf.data_dir or DEFAULT_DATA_DIR, conf.name)


def state_key(args: CmdArgs) -> str:
    """`<containerID>_<ifname>`; an ifname with characters a file name may not hold is
    written in hex."""
    name = args.ifname if all(c.isalnum() or c in "_.-" for c in args.ifname) \
        else "x" + args.ifname.encode().hex()
    return f"{args.container_id}_{name}"


def read_state(saved: store.Store, key: str) -> dict[str, Any] | None:
    raw = saved.read(key)
    if raw is None:
        return None
    try:
        state = json.loads(raw)
    except ValueError:
        state = None
    if not isinstance(state, dict):
        raise CNIError(f"corrupt tuning state {saved.path(key)}")
    return state


# --- the pod interface ----------------------------------------------------------------------

def read_link(pod: IPRoute, ifname: str) -> dict[str, Any]:
    """What tuning may change on the link, under the state file's names."""
    found = pod.link_lookup(ifname=ifname)
    if not found:
        raise CNIError(f"failed to find {ifname!r} in the pod namespace")
    msg = pod.get_links(found[0])[0]
    return {"index": msg["index"], "mac": msg.get_attr("IFLA_ADDRESS") or "",
            "mtu": msg.get_attr("IFLA_MTU") or 0,
            "promisc": bool(msg["flags"] & link.IFF_PROMISC),
            "allmulti": bool(msg["flags"] & IFF_ALLMULTI),
            "txQLen": msg.get_attr("IFLA_TXQLEN") or 0}


def wanted_link(conf: TuningConf) -> dict[str, Any]:
    """The link attributes the config sets, in the order they are applied."""
    wanted = {"mac": conf.mac or None, "promisc": conf.promisc, "mtu": conf.mtu or None,
              "allmulti": conf.allmulti, "txQLen": conf.tx_q_len}
    return {name: value for name, value in wanted.items() if value is not None}


def set_link(pod: IPRoute, index: int, name: str, value: Any) -> None:
    if name in ("promisc", "allmulti"):
        flag = link.IFF_PROMISC if name == "promisc" else IFF_ALLMULTI
        pod.link("set", index=index, flags=flag if value else 0, change=flag)
    else:
        pod.link("set", index=index, **{{"mac": "address", "txQLen": "txqlen"}.get(name, name):
                                        value})


def apply_link(pod: IPRoute, ifname: str, values: dict[str, Any]) -> None:
    index = read_link(pod, ifname)["index"]
    for name, value in values.items():
        try:
            set_link(pod, index, name, value)
        except Exception as exc:  # NetlinkError
            raise CNIError(f"failed to set {name} {value} on {ifname!r}: {exc}") from None


def apply_sysctls(values: dict[str, str]) -> None:
    """Write the sysctls (keys as paths); call inside the pod namespace."""
    for key, value in values.items():
        try:
            sysctl.write(key, value)
        except OSError as exc:
            raise CNIError(f"failed to set sysctl {key!r} to {value!r}: {exc.strerror}") \
                from None


def restore(args: CmdArgs, state: dict[str, Any]) -> list[str]:
    """Put the saved values back (in the reverse order of ADD); the failures. A link or
    sysctl that is gone is nothing to restore."""
    failures = []
    with link.socket(args.netns) as pod:
        if pod.link_lookup(ifname=args.ifname):
            index = read_link(pod, args.ifname)["index"]
            for name, value in reversed(list((state.get("link") or {}).items())):
                try:
                    set_link(pod, index, name, value)
                except Exception as exc:  # NetlinkError
                    failures.append(f"failed to restore {name} {value} on {args.ifname!r}: "
                                    f"{exc}")
    with netns.entered(args.netns):
        for key, value in reversed(list((state.get("sysctl") or {}).items())):
            try:
                sysctl.write(key, value)
            except FileNotFoundError:
                pass  # an interface's sysctl, gone with the interface
            except OSError as exc:
                failures.append(f"failed to restore sysctl {key!r} to {value!r}: "
                                f"{exc.strerror}")
    return failures


# --- the verbs ------------------------------------------------------------------------------

def cmd_add(args: CmdArgs) -> Result:
    conf = load_conf(args)
    prev = args.require_prev_result()
    sysctls = {sysctl_path(key, args.ifname): value for key, value in conf.sysctl.items()}
    wanted = wanted_link(conf)

    # Read every original value before changing anything: an unknown sysctl or a missing
    # interface fails here, with the pod untouched.
    with netns.entered(args.netns):
        try:
            original_sysctls = {key: sysctl.read(key) for key in sysctls}
        except OSError as exc:
            raise CNIError(f"failed to read sysctl {exc.filename!r}: {exc.strerror}") from None
    original_link: dict[str, Any] = {}
    if wanted:
        with link.socket(args.netns) as pod:
            current = read_link(pod, args.ifname)
        original_link = {name: current[name] for name in wanted}

    saved, key = state_store(conf), state_key(args)
    earlier = read_state(saved, key) or {}  # a repeated ADD: the first originals stay
    state = {"containerID": args.container_id, "ifname": args.ifname,
             "sysctl": {**original_sysctls, **(earlier.get("sysctl") or {})},
             "link": {**original_link, **(earlier.get("link") or {})}}
    mac = ""
    with ExitStack() as undo:
        saved.write(key, json.dumps(state, indent=1).encode())
        if earlier:
            undo.callback(saved.write, key, json.dumps(earlier, indent=1).encode())
        else:
            undo.callback(saved.delete, key)
        undo.callback(restore, args, {"sysctl": original_sysctls, "link": original_link})
        with netns.entered(args.netns):
            apply_sysctls(sysctls)
        if wanted:
            with link.socket(args.netns) as pod:
                apply_link(pod, args.ifname, wanted)
                mac = read_link(pod, args.ifname)["mac"]
        undo.pop_all()

    if conf.mac:
        for interface in prev.interfaces:
            if interface.name == args.ifname and interface.sandbox in ("", args.netns):
                interface.mac = mac
    return prev


def cmd_del(args: CmdArgs) -> None:
    """Restore the saved values when the namespace is still there; drop the state always."""
    conf = load_conf(args, validate=False)
    saved, key = state_store(conf), state_key(args)
    state = read_state(saved, key)
    if state is None:
        return
    if args.netns and netns.exists(args.netns):
        failures = restore(args, state)
        if failures:  # the state stays: a retried DEL tries again
            raise CNIError(failures[0], "; ".join(failures[1:]))
    saved.delete(key)


def cmd_check(args: CmdArgs) -> None:
    conf = load_conf(args)
    args.require_prev_result()
    with netns.entered(args.netns):
        for key, value in conf.sysctl.items():
            path = sysctl_path(key, args.ifname)
            try:
                current = sysctl.read(path)
            except OSError as exc:
                raise CNIError(f"failed to read sysctl {path!r}: {exc.strerror}") from None
            if current.split() != value.split():  # multi-value sysctls print with tabs
                raise CNIError(f"sysctl {key!r} is {current!r}, configured {value!r}")
    wanted = wanted_link(conf)
    if wanted:
        with link.socket(args.netns) as pod:
            current_link = read_link(pod, args.ifname)
        for name, value in wanted.items():
            if current_link[name] != value:
                raise CNIError(f"{args.ifname!r} {name} is {current_link[name]}, "
                               f"configured {value}")


def cmd_status(args: CmdArgs) -> None:
    """tuning needs nothing from the node: always ready."""


def cmd_gc(args: CmdArgs) -> None:
    """Drop the saved values of attachments the runtime no longer knows (their pods are
    gone: nothing to restore)."""
    from pycni.config import valid_attachments

    conf = load_conf(args, validate=False)
    valid = valid_attachments(args)
    saved = state_store(conf)
    for key in saved.names():
        try:
            state = read_state(saved, key)
        except CNIError:
            continue  # not ours to judge; left for a person to look at
        if state and (state.get("containerID"), state.get("ifname")) not in valid:
            saved.delete(key)


PLUGIN = Plugin("pycni tuning plugin", add=cmd_add, delete=cmd_del, check=cmd_check,
                status=cmd_status, gc=cmd_gc)
