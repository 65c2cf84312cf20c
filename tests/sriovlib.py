"""A fake SR-IOV NIC for tests: a sysfs tree (PYCNI_SYSFS_ROOT) and a PF file
(PYCNI_SRIOV_FAKE_PF).

The tree has what sriov-cni reads: a PF at PF_ADDRESS whose netdev is PF_NAME, with
`virtfn<N>` links to VF_ADDRESSES; each VF has `physfn`, a `driver` link and, unless the
driver is a userspace one, its netdev in `net/`. The netdevs themselves are whatever the test
makes (veth ends in a sandbox namespace).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PF_ADDRESS = "0000:03:00.0"
PF_NAME = "eth2"
VF_ADDRESSES = [f"0000:03:02.{n}" for n in range(4)]
USERSPACE_DRIVERS = ("vfio-pci", "uio_pci_generic", "igb_uio")
DEFAULT_VF = {"mac": "00:00:00:00:00:00", "vlan": 0, "qos": 0, "proto": "802.1q",
              "spoofchk": True, "trust": False, "link_state": "auto", "min_tx_rate": 0,
              "max_tx_rate": 0}


def build_sysfs(root: Path, netdevs: list[str], drivers: dict[int, str] | None = None) -> None:
    """The fake tree under `root`: VF n's netdev is `netdevs[n]`, its driver
    `drivers.get(n, "iavf")`."""
    devices = root / "devices" / "pci0000:00"
    bus = root / "bus" / "pci" / "devices"
    bus.mkdir(parents=True)
    pf = devices / PF_ADDRESS
    (pf / "net" / PF_NAME).mkdir(parents=True)
    (bus / PF_ADDRESS).symlink_to(pf)
    for number, address in enumerate(VF_ADDRESSES):
        vf = devices / address
        (vf / "net").mkdir(parents=True)
        (pf / f"virtfn{number}").symlink_to(f"../{address}")
        (vf / "physfn").symlink_to(f"../{PF_ADDRESS}")
        driver = (drivers or {}).get(number, "iavf")
        driver_directory = root / "bus" / "pci" / "drivers" / driver
        driver_directory.mkdir(parents=True, exist_ok=True)
        (vf / "driver").symlink_to(driver_directory)
        if driver not in USERSPACE_DRIVERS:
            (vf / "net" / netdevs[number]).mkdir()
        (bus / address).symlink_to(vf)


def write_pf(path: Path, vfs: int = 4, unsupported: tuple[str, ...] = (),
             **changes: Any) -> None:
    """The fake PF file: PF_NAME with `vfs` VFs in their default state (plus `changes` to
    every VF), refusing the setting groups in `unsupported`."""
    state = {"vfs": {str(n): {**DEFAULT_VF, **changes} for n in range(vfs)},
             "unsupported": list(unsupported)}
    path.write_text(json.dumps({PF_NAME: state}, indent=1))


def read_pf(path: Path) -> dict[int, dict[str, Any]]:
    """VF index -> settings, as the fake PF holds them now."""
    data = json.loads(path.read_text())
    return {int(n): settings for n, settings in data[PF_NAME]["vfs"].items()}
