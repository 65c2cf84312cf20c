"""`make install`'s mechanism on the real frozen build: a runtime-ready /opt/cni/bin tree."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conformance.conftest import DIST_BIN, CniTool
from pycni import install
from tests.conftest import Netns


def test_installed_tree_serves_libcni(built: None, scratch_dir: Path, host_ns: Netns,
                                      pod_ns: Netns) -> None:
    target = scratch_dir / "opt" / "cni" / "bin"
    install.install(str(DIST_BIN), str(target))
    link = target / "loopback"
    assert link.is_symlink() and os.readlink(link).startswith(install.BUNDLE_PREFIX)
    version = subprocess.run([str(link)], env={"CNI_COMMAND": "VERSION"},
                             capture_output=True, text=True, check=True)
    assert '"1.1.0"' in version.stdout

    tool = CniTool(host_ns, scratch_dir / "work", cni_path=target)
    tool.write_conf({"cniVersion": "1.0.0", "name": "lo-net", "plugins": [{"type": "loopback"}]})
    result = tool("add", "lo-net", pod_ns.path).ok()
    assert result["interfaces"][0]["name"] == "lo"
    assert "UP" in pod_ns.link("lo")["flags"]
    tool("del", "lo-net", pod_ns.path).ok()
