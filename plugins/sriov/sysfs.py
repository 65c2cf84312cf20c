"""Which virtual function a PCI address names, read from sysfs as sriov-cni reads it.

A VF's device directory links to its PF (`physfn`); the PF's device directory links to each
of its VFs (`virtfn<N>`, N the VF's index on the PF); a netdev bound to a device shows in its
`net/` folder. The root is configurable (`PYCNI_SYSFS_ROOT`) so tests read a fake tree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

from pycni import device
from pycni.errors import InvalidConfig

DEVICES = "/sys/bus/pci/devices"


class VirtualFunction(NamedTuple):
    """A VF as the node shows it."""

    pci_address: str
    pf_name: str  # the PF's netdev, where VF settings are made
    number: int  # the VF's index on the PF
    netdev: str  # "" when bound to a userspace driver (or no driver)
    driver: str

    @property
    def dpdk(self) -> bool:
        """Bound to a userspace driver: nothing moves, the pod's program drives the VF."""
        return self.driver in device.USERSPACE_DRIVERS


def names(directory: str) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except OSError:
        return []


def virtual_functions(pf_directory: str) -> dict[int, str]:
    """The PF's VFs: index -> PCI address, from its `virtfn<N>` links."""
    found = {}
    for name in names(pf_directory):
        number = name.removeprefix("virtfn")
        if name.startswith("virtfn") and number.isdigit():
            found[int(number)] = os.path.basename(os.readlink(os.path.join(pf_directory, name)))
    return found


def resolve(environ: Mapping[str, str], pci_address: str,
            vf: int | None) -> tuple[str, str, int]:
    """The VF `pci_address` names (a VF, or a PF together with `vf`): its PCI address, its
    PF's device directory and its index there; code 7 when there is none."""
    directory = device.sysfs_path(environ, f"{DEVICES}/{pci_address}")
    if not os.path.isdir(directory):
        raise InvalidConfig(f"failed to find VF {pci_address}: no such PCI device on the node")
    if os.path.lexists(os.path.join(directory, "physfn")):
        pf_directory = os.path.join(directory, "physfn")
        index = next((n for n, a in virtual_functions(pf_directory).items() if a == pci_address),
                     None)
        if index is None:
            raise InvalidConfig(f"failed to find the VF index of {pci_address} on its PF")
        if vf is not None and vf != index:
            raise InvalidConfig(f"{pci_address} is VF {index} of its PF, not VF {vf}")
        return pci_address, pf_directory, index
    functions = virtual_functions(directory)
    if not functions:
        raise InvalidConfig(f"{pci_address} is not an SR-IOV device (it has no physfn and "
                            "no virtfn links)")
    if vf is None:
        raise InvalidConfig(f"{pci_address} is a PF: give the VF's own PCI address in "
                            '"deviceID", or its index in "vf"')
    if vf not in functions:
        raise InvalidConfig(f"failed to find VF {vf} of PF {pci_address}: it has VFs "
                            f"{min(functions)}-{max(functions)}")
    return functions[vf], directory, vf


def find(environ: Mapping[str, str], pci_address: str, vf: int | None) -> VirtualFunction:
    """The VF `pci_address` names, with its PF's netdev and its own; code 7 when there is
    none, or it has neither a netdev nor a userspace driver."""
    address, pf_directory, index = resolve(environ, pci_address, vf)
    pf_names = names(os.path.join(pf_directory, "net"))
    if not pf_names:
        raise InvalidConfig(f"the PF of {address} has no network device")
    netdevs = names(device.sysfs_path(environ, f"{DEVICES}/{address}/net"))
    found = VirtualFunction(address, pf_names[0], index, netdevs[0] if netdevs else "",
                            device.driver(environ, address))
    if not found.netdev and not found.dpdk:
        raise InvalidConfig(f"VF {address} has no network device and no userspace (DPDK) "
                            f"driver (driver: {found.driver or 'none'})")
    return found
