"""The error tree. Every error a plugin reports carries a code from the CNI spec.

    CNIError                       any error a plugin reports (code 999 unless a subclass says)
    ├── IncompatibleVersion        1   config version not supported, or verb not allowed at it
    ├── UnsupportedField           2   a key or argument the plugin does not support (named)
    ├── UnknownContainer           3   the container (netns) does not exist
    ├── InvalidEnvironment         4   CNI_* variables missing or invalid
    ├── IOFailure                  5   reading or writing state failed
    ├── DecodeFailure              6   stdin is not a JSON object
    ├── InvalidConfig              7   the network configuration is invalid
    ├── OwnNamespace               8   CNI_NETNS is the plugin's own network namespace
    ├── TryAgainLater              11  a transient condition (e.g. the node agent not ready)
    ├── NotReady                   50  STATUS: the plugin cannot serve ADD now
    ├── NotReadyDegraded           51  STATUS: cannot serve ADD, existing pods may be affected
    └── PluginError                100+ plugin-specific conditions (code given per instance)

Anything else raised inside a plugin is reported as code 999 with a one-line message.
"""

from __future__ import annotations


class CNIError(Exception):
    code: int = 999

    def __init__(self, msg: str, details: str = "", *, code: int | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details
        if code is not None:
            self.code = code

    def to_dict(self, cni_version: str) -> dict[str, object]:
        out: dict[str, object] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg


class IncompatibleVersion(CNIError):
    code = 1


class UnsupportedField(CNIError):
    code = 2


class UnknownContainer(CNIError):
    code = 3


class InvalidEnvironment(CNIError):
    code = 4


class IOFailure(CNIError):
    code = 5


class DecodeFailure(CNIError):
    code = 6


class InvalidConfig(CNIError):
    code = 7


class OwnNamespace(CNIError):
    code = 8


class TryAgainLater(CNIError):
    code = 11


class NotReady(CNIError):
    code = 50


class NotReadyDegraded(CNIError):
    code = 51


class PluginError(CNIError):
    """A plugin-specific condition; codes 100 and above are the plugin's own."""

    code = 100


_BY_CODE: dict[int, type[CNIError]] = {
    cls.code: cls
    for cls in (
        IncompatibleVersion, UnsupportedField, UnknownContainer, InvalidEnvironment, IOFailure,
        DecodeFailure, InvalidConfig, OwnNamespace, TryAgainLater, NotReady, NotReadyDegraded,
    )
}


def from_dict(data: dict[str, object]) -> CNIError:
    """Rebuild the error a delegate printed, keeping its code."""
    raw_code = data.get("code", 999)
    code = raw_code if isinstance(raw_code, int) else 999
    cls = _BY_CODE.get(code, CNIError)
    return cls(str(data.get("msg", "")), str(data.get("details", "") or ""), code=code)
