"""pycni.spec: version parsing, comparison, negotiation and the VERSION answer."""

from __future__ import annotations

import json

import pytest

from pycni import spec
from pycni.errors import IncompatibleVersion


def test_all_is_ordered_and_latest_is_last() -> None:
    assert spec.ALL == ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
    assert sorted(spec.ALL, key=spec.parse) == list(spec.ALL)
    assert spec.LATEST == "1.1.0"
    assert spec.DEFAULT == "0.1.0"


@pytest.mark.parametrize(("text", "parsed"), [
    ("0.1.0", (0, 1, 0)),
    ("1.0.0", (1, 0, 0)),
    ("1.1.0", (1, 1, 0)),
    ("10.20.30", (10, 20, 30)),
])
def test_parse_valid(text: str, parsed: tuple[int, int, int]) -> None:
    assert spec.parse(text) == parsed


@pytest.mark.parametrize("text", [
    "", "1", "1.0", "1.0.0.0", "v1.0.0", "1.0.x", "1..0", " 1.0.0", "1.0.0 ", "-1.0.0",
    "1.0.+1",
    "١.٠.٠",  # Arabic-Indic digits are digits to str.isdigit, not to the spec
    "1.0.²",  # a digit to str.isdigit that int() refuses: must not escape as ValueError
])
def test_parse_invalid_is_incompatible_version(text: str) -> None:
    with pytest.raises(IncompatibleVersion) as info:
        spec.parse(text)
    assert info.value.code == 1
    assert repr(text) in info.value.msg


@pytest.mark.parametrize("value", [None, 1, 1.0, ["1.0.0"]])
def test_parse_non_string_is_incompatible_version(value: object) -> None:
    with pytest.raises(IncompatibleVersion):
        spec.parse(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(("version", "reference", "expected"), [
    ("1.0.0", "1.0.0", True),
    ("1.1.0", "1.0.0", True),
    ("0.4.0", "1.0.0", False),
    ("0.3.1", "0.3.0", True),
    ("0.3.0", "0.3.1", False),
    ("0.10.0", "0.4.0", True),  # numeric, not string, comparison
    ("0.4.0", "0.10.0", False),
])
def test_at_least(version: str, reference: str, expected: bool) -> None:
    assert spec.at_least(version, reference) is expected


def test_at_least_rejects_malformed() -> None:
    with pytest.raises(IncompatibleVersion):
        spec.at_least("one", "1.0.0")


def test_highest_supported() -> None:
    assert spec.highest_supported(["0.3.1", "1.0.0", "0.4.0"]) == "1.0.0"
    # Numeric order: "0.10.0" > "0.4.0" as strings would say otherwise.
    assert spec.highest_supported(["0.4.0", "0.10.0"], ["0.4.0", "0.10.0"]) == "0.10.0"
    # Unsupported and non-string candidates are skipped.
    assert spec.highest_supported(["2.0.0", "1.0.0", 7, None]) == "1.0.0"  # type: ignore[list-item]
    assert spec.highest_supported(["1.1.0", "1.0.0"], supported=("0.4.0", "1.0.0")) == "1.0.0"
    assert spec.highest_supported(["2.0.0", "9.9.9"]) is None
    assert spec.highest_supported([]) is None


def test_config_version_prefers_cni_version() -> None:
    conf: dict[str, object] = {"cniVersion": "0.4.0", "cniVersions": ["1.0.0", "1.1.0"]}
    assert spec.config_version(conf) == "0.4.0"


def test_config_version_returns_unknown_cni_version_as_is() -> None:
    # Whether the plugin speaks it is the dispatcher's decision, not this function's.
    assert spec.config_version({"cniVersion": "9.9.9"}) == "9.9.9"


def test_config_version_picks_highest_supported_of_cni_versions() -> None:
    assert spec.config_version({"cniVersions": ["0.4.0", "1.1.0", "1.0.0"]}) == "1.1.0"
    assert spec.config_version({"cniVersions": ["0.4.0", "1.1.0", "1.0.0"]},
                               supported=("0.3.1", "0.4.0", "1.0.0")) == "1.0.0"
    assert spec.config_version({"cniVersions": ["2.0.0", "0.3.1"]}) == "0.3.1"


def test_config_version_cni_versions_none_supported() -> None:
    with pytest.raises(IncompatibleVersion) as info:
        spec.config_version({"cniVersions": ["2.0.0", "3.0.0"]})
    assert info.value.code == 1
    assert "2.0.0" in info.value.details


def test_config_version_neither_means_0_1_0() -> None:
    assert spec.config_version({}) == "0.1.0"
    assert spec.config_version({"name": "net"}) == "0.1.0"
    assert spec.config_version({"cniVersion": ""}) == "0.1.0"
    assert spec.config_version({"cniVersions": []}) == "0.1.0"


@pytest.mark.parametrize("value", [1, 1.0, ["1.0.0"], {"v": "1.0.0"}, True])
def test_config_version_non_string_cni_version(value: object) -> None:
    with pytest.raises(IncompatibleVersion) as info:
        spec.config_version({"cniVersion": value})
    assert "string" in info.value.msg


@pytest.mark.parametrize("versions", [spec.ALL, ("0.3.1", "0.4.0"), ("1.1.0",), ()])
def test_version_json_is_valid_json(versions: tuple[str, ...]) -> None:
    text = spec.version_json(versions)
    assert json.loads(text) == {"cniVersion": "1.1.0", "supportedVersions": list(versions)}
    assert text.endswith("\n")


def test_version_json_accepts_any_iterable() -> None:
    text = spec.version_json(v for v in ("0.4.0", "1.0.0"))
    assert json.loads(text)["supportedVersions"] == ["0.4.0", "1.0.0"]
