"""Churn under load (conformance.stress_churn): pods ADDed and DELed over and over, 8 at once,
across bridge (+ portmap, bandwidth), macvlan, flannel and multus, through libcni with the
frozen build served by `pycni daemon`: no failure, no duplicate address, and the node left as
the warm-up left it (links, addresses, routes, qdiscs, filters, iptables, nftables, allocation
files, libcni cache, multus cache, flannel's saved configs, pod namespaces).

The smoke run is part of `make test`; the full 1,000 cycles are `make stress`'s. No timing is
asserted.
"""

from __future__ import annotations

from typing import Any

import pytest

from conformance.stress_churn import FILE_KINDS, KERNEL_ASPECTS, NETWORKS, churn
from tests.conftest import needs_root

pytestmark = [pytest.mark.conformance, pytest.mark.kernel, needs_root]

SMOKE_CYCLES, PARALLEL, FULL_CYCLES = 40, 8, 1000


@pytest.fixture(scope="module")
def smoke(built: None) -> dict[str, Any]:
    return churn(SMOKE_CYCLES, PARALLEL)


def assert_clean(report: dict[str, Any], cycles: int, kinds: tuple[str, ...]) -> None:
    every = report["networks"]["all"]
    assert report["warm_up_problems"] == []
    assert every["cycles"] == cycles
    for network in NETWORKS:
        assert report["networks"][network]["cycles"] >= cycles // len(NETWORKS) - 1, network
    assert every["failures"] == []
    assert every["duplicates"] == []
    left = {kind: report["leaks"][kind] for kind in kinds if report["leaks"][kind]}
    assert left == {}, f"left behind after the last DEL: {left}"


def test_churn_smoke_no_failure_duplicate_or_leak(smoke: dict[str, Any]) -> None:
    kinds = tuple(kind for kind in (*KERNEL_ASPECTS, *FILE_KINDS)
                  if kind != "multus_cache_files")
    assert_clean(smoke, SMOKE_CYCLES, kinds)


def test_churn_smoke_pods_really_made_state(smoke: dict[str, Any]) -> None:
    """What the leak check looks for exists while a pod lives: masquerade and port rules,
    qdiscs (bandwidth), allocation files, caches, flannel's saved config."""
    made = smoke["made_per_pod"]
    assert set(made) == set(NETWORKS)
    bridge = made["bridge"]
    assert bridge["qdiscs"] > 0 and bridge["filters"] > 0
    assert bridge["iptables"] + bridge["nft"] > 0
    for network in NETWORKS:
        assert made[network]["allocation_files"] > 0, network
        assert made[network]["libcni_cache_files"] == 1, network
        assert made[network]["pod_netns"] == 1, network
    assert made["flannel"]["flannel_saved_configs"] > 0
    assert made["multus"]["multus_cache_files"] > 0
    assert made["multus"]["allocation_files"] > made["macvlan"]["allocation_files"]


def test_churn_smoke_no_multus_cache_file_left(smoke: dict[str, Any]) -> None:
    assert smoke["leaks"]["multus_cache_files"] == []


@pytest.mark.stress
def test_churn_full(built: None) -> None:
    report = churn(FULL_CYCLES, PARALLEL)
    assert_clean(report, FULL_CYCLES, (*KERNEL_ASPECTS, *FILE_KINDS))
