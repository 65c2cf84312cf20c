"""Subnet stores: where nodes lease their subnets and find their peers.

`SubnetStore` is the whole interface the agent uses; `open_store` picks the implementation
from the agent's options: Kubernetes nodes, etcd v3, or a directory of files (single host,
demo, and clusters sharing a directory).
"""

from __future__ import annotations

from pycni.plugins.flannel.store.base import StoreUnavailable, SubnetStore

__all__ = ["StoreUnavailable", "SubnetStore"]
