"""`pycni install-cni` on the real frozen bundle while a runtime execs its links.

The fake bundles of tests/test_install_cni.py are shell scripts, which cannot show "text file
busy" (the kernel maps /bin/sh, not the script); these are the frozen ELF launcher and its
bootloader, which execs itself once more from the bundle directory.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conformance.conftest import DIST_BIN
from pycni import install
from tests.test_install_cni import leftovers, swap_while_exec_ing

BUNDLE = DIST_BIN / "pycni.bundle"


def missing_bundle() -> str | None:
    for path in (BUNDLE / "pycni", BUNDLE / "cni", DIST_BIN / "loopback"):
        if not os.access(path, os.X_OK):
            return f"{path} is missing: run `make build`"
    return None


def two_builds(root: Path) -> list[Path]:
    """Snapshots of dist/bin (a rebuild meanwhile must not change them), the second with one
    more file so that its bundle is a different version directory."""
    builds = []
    for name in ("old", "new"):
        copy = root / name / "bin"
        shutil.copytree(DIST_BIN, copy, symlinks=True)
        builds.append(copy)
    (builds[1] / "pycni.bundle" / "_internal" / "pycni-swap-test").write_text("new\n")
    return builds


def test_frozen_bundle_swapped_under_exec(scratch_dir: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    reason = missing_bundle()
    if reason:
        if os.environ.get("PYCNI_REQUIRE_BUILD"):
            pytest.fail(reason)
        pytest.skip(reason)
    builds = two_builds(scratch_dir)
    target = scratch_dir / "host" / "opt" / "cni" / "bin"
    seen, count = swap_while_exec_ing(builds, target, "loopback", installs=20, seconds=3.0)
    capsys.readouterr()
    assert count >= 20
    assert seen["failed"] == 0, seen["failures"]
    assert seen["runs"] > 20, seen
    for output in seen["outputs"]:  # both builds answer VERSION alike
        assert "1.1.0" in json.loads(output)["supportedVersions"]
    names = sorted(n for n in os.listdir(target) if n.startswith(install.BUNDLE_PREFIX))
    assert len(names) == 2 and leftovers(target) == []
    assert os.readlink(target / "loopback").startswith(install.BUNDLE_PREFIX)
