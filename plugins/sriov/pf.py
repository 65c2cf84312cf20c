"""The PF side of a VF: the settings a PF driver keeps per VF, behind one small interface.

`PhysicalFunction` reads the settings of VF n and applies some of them. Production speaks
netlink to the PF (`NetlinkPF`: IFLA_VFINFO_LIST read with the VF filter, `IFLA_VF_*` set);
tests use `MemoryPF` in-process, or `FilePF` (a JSON file named by PYCNI_SRIOV_FAKE_PF) when
the plugin runs as a real process. Both fakes are for tests only: a runtime never sets the
variable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Protocol

from pycni import link, store
from pycni.errors import CNIError

FAKE_PF_ENV = "PYCNI_SRIOV_FAKE_PF"  # tests only: a JSON file standing for the PFs
LINK_STATES = {"auto": 0, "enable": 1, "disable": 2}  # IFLA_VF_LINK_STATE_*
VLAN_PROTOCOLS = {"802.1q": 0x8100, "802.1ad": 0x88A8}
# Settings the kernel applies together: a VLAN is (id, QoS, protocol), a rate (min, max).
GROUPS = {"vlan": ("vlan", "qos", "proto"), "rate": ("min_tx_rate", "max_tx_rate"),
          "mac": ("mac",), "spoofchk": ("spoofchk",), "trust": ("trust",),
          "link_state": ("link_state",)}


@dataclass(frozen=True)
class VfSettings:
    """Settings of one VF on its PF; None: not read, or not to be changed."""

    mac: str | None = None  # the administrative MAC (00:00:00:00:00:00: none set)
    vlan: int | None = None
    qos: int | None = None
    proto: str | None = None  # "802.1q" or "802.1ad"
    spoofchk: bool | None = None
    trust: bool | None = None
    link_state: str | None = None  # "auto", "enable" or "disable"
    min_tx_rate: int | None = None  # Mbps, 0: no limit
    max_tx_rate: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VfSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    def groups(self) -> list[str]:
        """The groups (GROUPS keys) this holds a value of, in the order they are applied."""
        present = self.to_dict()
        return [group for group, keys in GROUPS.items() if any(k in present for k in keys)]

    def only(self, groups: list[str]) -> VfSettings:
        """The values of `groups` only."""
        keep = {key for group in groups for key in GROUPS[group]}
        return replace(VfSettings(), **{k: v for k, v in self.to_dict().items() if k in keep})

    def differences(self, other: VfSettings) -> list[str]:
        """The keys this sets to another value than `other` holds."""
        theirs = other.to_dict()
        return [key for key, value in self.to_dict().items() if theirs.get(key) != value]


class PhysicalFunction(Protocol):
    """The PF of the VFs being configured."""

    def read(self, vf: int) -> VfSettings:
        """Every setting of VF `vf`."""
        ...

    def apply(self, vf: int, settings: VfSettings) -> None:
        """Set the values `settings` holds (a VLAN or a rate as a whole group)."""
        ...


@contextmanager
def opened(environ: Mapping[str, str], pf_name: str) -> Iterator[PhysicalFunction]:
    """The PF named `pf_name` on the node (the file-backed fake when the tests ask)."""
    fake = environ.get(FAKE_PF_ENV)
    if fake:
        yield FilePF(fake, pf_name)
        return
    with link.socket() as ipr:
        yield NetlinkPF(ipr, pf_name)


# --- netlink --------------------------------------------------------------------------------

class NetlinkPF:
    """A PF driven through rtnetlink on `ipr` (a socket in the PF's namespace)."""

    def __init__(self, ipr: Any, pf_name: str) -> None:
        self.ipr, self.name = ipr, pf_name

    def index(self) -> int:
        found = self.ipr.link_lookup(ifname=self.name)
        if not found:
            raise CNIError(f"failed to lookup PF {self.name!r}: no such device")
        return int(found[0])

    def read(self, vf: int) -> VfSettings:
        # ext_mask 1 (RTEXT_FILTER_VF): without it the kernel leaves the VF list out
        message = self.ipr.link("get", index=self.index(), ext_mask=1)[0]
        listing = message.get_attr("IFLA_VFINFO_LIST")
        for info in listing.get_attrs("IFLA_VF_INFO") if listing else []:
            mac = info.get_attr("IFLA_VF_MAC")
            if mac is not None and mac["vf"] == vf:
                return settings_of(info)
        raise CNIError(f"failed to find VF {vf} on PF {self.name!r}")

    def apply(self, vf: int, settings: VfSettings) -> None:
        index = self.index()
        for group, request in vf_requests(vf, settings):
            try:
                self.ipr.link("set", index=index, vf=request)
            except Exception as exc:  # NetlinkError
                raise CNIError(f"failed to set {group} of VF {vf} on PF {self.name!r}: "
                               f"{exc}") from None


def settings_of(info: Any) -> VfSettings:
    """The settings in one IFLA_VF_INFO of a link dump."""

    def value(attribute: str, key: str) -> Any:
        found = info.get_attr(attribute)
        return None if found is None else found[key]

    proto = "802.1q"
    vlans = info.get_attr("IFLA_VF_VLAN_LIST")
    for item in vlans.get_attrs("IFLA_VF_VLAN_INFO") if vlans else []:
        proto = next((name for name, number in VLAN_PROTOCOLS.items()
                      if number == item["proto"]), proto)
    spoofchk, trust, state = (value("IFLA_VF_SPOOFCHK", "spoofchk"),
                              value("IFLA_VF_TRUST", "trust"),
                              value("IFLA_VF_LINK_STATE", "link_state"))
    return VfSettings(
        mac=value("IFLA_VF_MAC", "mac"), vlan=value("IFLA_VF_VLAN", "vlan"),
        qos=value("IFLA_VF_VLAN", "qos"), proto=proto,
        # drivers that cannot report a flag send (u32)-1
        spoofchk=None if spoofchk in (None, 0xFFFFFFFF) else bool(spoofchk),
        trust=None if trust in (None, 0xFFFFFFFF) else bool(trust),
        link_state=next((name for name, number in LINK_STATES.items() if number == state), None),
        min_tx_rate=value("IFLA_VF_RATE", "min_tx_rate"),
        max_tx_rate=value("IFLA_VF_RATE", "max_tx_rate"))


def vf_requests(vf: int, settings: VfSettings) -> list[tuple[str, dict[str, Any]]]:
    """pyroute2 `vf=` arguments, one per group, so an error names what the driver refused."""
    requests: list[tuple[str, dict[str, Any]]] = []
    for group in settings.groups():
        request: dict[str, Any] = {"vf": vf}
        if group == "vlan":
            vlan = {"vlan": settings.vlan or 0, "qos": settings.qos or 0}
            proto = VLAN_PROTOCOLS[settings.proto or "802.1q"]
            # IFLA_VF_VLAN cannot say the protocol; IFLA_VF_VLAN_LIST can, for 802.1ad
            request["vlan"] = [{**vlan, "proto": proto}] if proto != 0x8100 else vlan
        elif group == "rate":
            request["rate"] = {"min_tx_rate": settings.min_tx_rate or 0,
                               "max_tx_rate": settings.max_tx_rate or 0}
        elif group == "mac":
            request["mac"] = settings.mac
        elif group == "link_state":
            request["link_state"] = LINK_STATES[str(settings.link_state)]
        else:
            request[group] = int(bool(getattr(settings, group)))
        requests.append((group, request))
    return requests


# --- fakes for tests ------------------------------------------------------------------------

DEFAULT = VfSettings(mac="00:00:00:00:00:00", vlan=0, qos=0, proto="802.1q", spoofchk=True,
                     trust=False, link_state="auto", min_tx_rate=0, max_tx_rate=0)


class MemoryPF:
    """In-memory PF for unit tests: VF settings in a dict, `unsupported` groups refused as
    a driver without them refuses, every apply recorded."""

    def __init__(self, name: str = "pf0", vfs: int = 4,
                 unsupported: set[str] | None = None) -> None:
        self.name = name
        self.vfs = {n: DEFAULT for n in range(vfs)}
        self.unsupported = unsupported or set()
        self.applied: list[tuple[int, VfSettings]] = []

    def read(self, vf: int) -> VfSettings:
        if vf not in self.vfs:
            raise CNIError(f"failed to find VF {vf} on PF {self.name!r}")
        return self.vfs[vf]

    def apply(self, vf: int, settings: VfSettings) -> None:
        current = self.read(vf)
        refused = set(settings.groups()) & self.unsupported
        if refused:
            raise CNIError(f"failed to set {min(refused)} of VF {vf} on PF {self.name!r}: "
                           "operation not supported")
        self.vfs[vf] = replace(current, **settings.to_dict())
        self.applied.append((vf, settings))


class FilePF:
    """A PF whose VF settings live in a JSON file, so tests can run the plugin as a process:
    `{"<pf>": {"vfs": {"<n>": {settings}}, "unsupported": ["trust", ...]}}`."""

    def __init__(self, path: str, name: str) -> None:
        self.path, self.name = path, name

    def load(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as file:
                data: dict[str, Any] = json.load(file)
        except (OSError, ValueError) as exc:
            raise CNIError(f"cannot read the fake PF file {self.path}: {exc}") from None
        if self.name not in data:
            raise CNIError(f"failed to lookup PF {self.name!r}: no such device")
        return data

    def read(self, vf: int) -> VfSettings:
        found = self.load()[self.name]["vfs"].get(str(vf))
        if found is None:
            raise CNIError(f"failed to find VF {vf} on PF {self.name!r}")
        return VfSettings.from_dict(found)

    def apply(self, vf: int, settings: VfSettings) -> None:
        with store.flock(f"{self.path}.lock"):
            data = self.load()
            entry = data[self.name]
            refused = set(settings.groups()) & set(entry.get("unsupported", []))
            if refused:
                raise CNIError(f"failed to set {min(refused)} of VF {vf} on PF "
                               f"{self.name!r}: operation not supported")
            if str(vf) not in entry["vfs"]:
                raise CNIError(f"failed to find VF {vf} on PF {self.name!r}")
            entry["vfs"][str(vf)].update(settings.to_dict())
            store.write_atomic(self.path, json.dumps(data, indent=1).encode(),
                               mode=os.stat(self.path).st_mode & 0o777)
