"""Which module implements which CNI type. Imported on every start: names only, no plugins."""

from __future__ import annotations

import importlib

from pycni import spec

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from pycni.skel import Plugin

PLUGINS: dict[str, str] = {
    "loopback": "pycni.plugins.loopback",
    "bridge": "pycni.plugins.bridge",
    "cnv-bridge": "pycni.plugins.bridge",
    "macvlan": "pycni.plugins.macvlan",
    "ipvlan": "pycni.plugins.ipvlan",
    "vlan": "pycni.plugins.vlan",
    "host-device": "pycni.plugins.host_device",
    "sriov": "pycni.plugins.sriov.plugin",
    "host-local": "pycni.ipam.host_local.plugin",
    "static": "pycni.ipam.static",
    "portmap": "pycni.meta.portmap",
    "tuning": "pycni.meta.tuning",
    "bandwidth": "pycni.meta.bandwidth",
    "multus": "pycni.meta.multus.plugin",
    "flannel": "pycni.plugins.flannel.plugin",
}
# Types that speak fewer versions than spec.ALL (VERSION answers from here, unloaded).
VERSIONS: dict[str, tuple[str, ...]] = {}


def versions(plugin_type: str) -> tuple[str, ...]:
    return VERSIONS.get(plugin_type, spec.ALL)


def load(plugin_type: str) -> Plugin:
    plugin: Plugin = importlib.import_module(PLUGINS[plugin_type]).PLUGIN
    assert plugin.versions == versions(plugin_type), f"{plugin_type}: registry.VERSIONS stale"
    return plugin
