"""CNI specification versions: the list we speak, comparison, and negotiation."""

from __future__ import annotations

from pycni.errors import IncompatibleVersion

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Iterable

ALL: tuple[str, ...] = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = ALL[-1]
DEFAULT = "0.1.0"  # what a config without cniVersion means


def parse(version: str) -> tuple[int, int, int]:
    """'1.0.0' -> (1, 0, 0); anything else is an incompatible version."""
    parts = version.split(".") if isinstance(version, str) else []
    # isascii: str.isdigit also accepts '²' and other scripts' digits, which int() rejects
    if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
        raise IncompatibleVersion(f"invalid version {version!r}: expected MAJOR.MINOR.PATCH")
    return int(parts[0]), int(parts[1]), int(parts[2])


def at_least(version: str, reference: str) -> bool:
    return parse(version) >= parse(reference)


def highest_supported(candidates: Iterable[str], supported: Iterable[str] = ALL) -> str | None:
    """The highest of `candidates` that is in `supported` (spec 1.1 `cniVersions`)."""
    known = set(supported)
    usable = [v for v in candidates if isinstance(v, str) and v in known]
    return max(usable, key=parse) if usable else None


def config_version(conf: dict[str, object], supported: Iterable[str] = ALL) -> str:
    """The version a config speaks: `cniVersion`, else the best of `cniVersions`, else 0.1.0."""
    version = conf.get("cniVersion")
    if isinstance(version, str) and version:
        return version
    if version is not None and not isinstance(version, str):
        raise IncompatibleVersion(f"cniVersion must be a string, not {version!r}")
    versions = conf.get("cniVersions")
    if isinstance(versions, list) and versions:
        best = highest_supported(versions, supported)
        if best is None:
            raise IncompatibleVersion(
                "none of the config's cniVersions is supported",
                f"config offers {versions}, plugin supports {list(supported)}",
            )
        return best
    return DEFAULT


def version_json(versions: Iterable[str]) -> str:
    """The VERSION answer. Formatted here rather than by `json`: VERSION is the one command
    that must not pay for importing it (our version strings need no escaping)."""
    listed = ",\n".join(f'        "{v}"' for v in versions)
    return f'{{\n    "cniVersion": "{LATEST}",\n    "supportedVersions": [\n{listed}\n    ]\n}}\n'
