"""50 pods ADDed at once and DELed at once on one node (bridge + host-local through libcni,
ours served by `pycni daemon`: 50 forked runs at once): no failure, no duplicate address, every
pod holds its address, nothing left behind.

The scenario and its checks are conformance.bench_concurrent's; no timing is asserted. The
same cycle exec'd cold (no daemon) runs in `make bench` (bench_concurrent), beside the
reference's: the plugins' work is the same, only the process start differs.
"""

from __future__ import annotations

import pytest

from conformance.bench_concurrent import PODS, conflist, cycle
from conformance.benchlib import DAEMON, Sandbox
from tests.conftest import needs_root

pytestmark = [pytest.mark.conformance, pytest.mark.kernel, needs_root]


def test_concurrent_pods_add_and_del(built: None) -> None:
    with Sandbox("ours" + DAEMON, conflist) as node:
        pods = [node.pod(f"c{index:02d}") for index in range(PODS)]

        result = cycle(node, pods)

    assert result.failures() == []
    assert len(result.addresses) == PODS
    assert len(set(result.addresses.values())) == PODS, result.duplicates
    assert result.duplicates == {}
    assert result.missing == [], "pods without their address on eth0"
    # ipMasq: one CNI- chain and its POSTROUTING jump per pod; one allocation file (and its
    # metadata) per pod. All of them must go with the DELs.
    assert result.nat_rules_after_add >= PODS
    assert result.ipam_files_after_add >= PODS
    assert result.leftovers == {}, (
        "left behind after DEL (host links, pod links, allocation files, nat rules, libcni "
        f"cache): {result.leftovers}")
