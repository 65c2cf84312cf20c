"""The seed configurations in the repo are the users' files, unchanged."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO

SEEDS = REPO / "tests" / "seeds"
SHARED = REPO.parent / "shared" / "seeds"


def test_seeds_are_valid_json() -> None:
    files = sorted(SEEDS.glob("*.json")) + sorted(SEEDS.glob("*.conflist"))
    assert len(files) >= 11
    for path in files:
        assert isinstance(json.loads(path.read_text()), dict), path


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared seeds are not beside the repo")
def test_seeds_unchanged() -> None:
    for original in SHARED.iterdir():
        if original.suffix in (".json", ".conflist"):
            assert (SEEDS / original.name).read_bytes() == original.read_bytes(), original.name
