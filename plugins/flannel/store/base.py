"""The subnet store interface, and the allocation rule every store shares."""

from __future__ import annotations

import abc
import ipaddress
from collections.abc import Iterable

from pycni.plugins.flannel.lease import Lease, LeaseAttrs
from pycni.plugins.flannel.netconf import NetworkConfig

DEFAULT_TTL = 24 * 3600.0      # flanneld's lease time


class StoreError(Exception):
    """The store refused or holds something unusable (no free subnet, bad config)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached now; the caller keeps its data plane and retries."""


class SubnetStore(abc.ABC):
    """What the agent needs from a store. Implementations are safe to call from one thread
    while `wait_for_change` blocks in another."""

    @abc.abstractmethod
    def network_config(self) -> NetworkConfig:
        """The cluster network's configuration (etcd: `<prefix>/config`; others: net-conf)."""

    @abc.abstractmethod
    def acquire_lease(self, attrs: LeaseAttrs, previous: Lease | None = None) -> Lease:
        """Lease a subnet for this node: its existing lease when the store holds one for
        `attrs.public_ip` (or `previous`'s subnet when still free), else a free subnet of
        NetworkConfig.candidate_subnets(), with `ipv6_subnet_for(subnet)` as its IPv6
        subnet under dual stack (IPv6-only networks are not supported by the stores). The
        lease's attributes are set to `attrs`."""

    @abc.abstractmethod
    def renew_lease(self, lease: Lease) -> Lease:
        """Extend the lease (a no-op for stores without expiry); StoreError if it was lost."""

    @abc.abstractmethod
    def leases(self) -> list[Lease]:
        """Every unexpired lease, ours included."""

    @abc.abstractmethod
    def wait_for_change(self, timeout: float) -> bool:
        """Block until the set of leases may have changed (True) or `timeout` passes (False).
        Changes by other nodes are noticed within a second."""

    def close(self) -> None:  # noqa: B027 (optional for stores holding nothing)
        """Release connections and stop background watchers."""


def pick_free_subnet(config: NetworkConfig, taken: Iterable[ipaddress.IPv4Network],
                     preferred: ipaddress.IPv4Network | None = None) -> ipaddress.IPv4Network:
    """The subnet to lease: `preferred` if free and valid, else the lowest free candidate."""
    used = set(taken)
    candidates = config.candidate_subnets()
    if preferred is not None and preferred not in used and any(
            preferred == c for c in config.candidate_subnets()):
        return preferred
    for subnet in candidates:
        if subnet not in used:
            return subnet
    raise StoreError(f"no free subnet of {config.network} left "
                     f"(SubnetMin {config.subnet_min}, SubnetMax {config.subnet_max})")
