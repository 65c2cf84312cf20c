"""tuning in sandbox namespaces: every spec version, sysctls, link attributes, rejection,
DEL restoring the originals, GC.

The pod interface is one end of a veth pair made between a sandbox "host" namespace (where
the plugin runs) and the pod namespace. The machine's own namespace is never touched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pycni import spec
from pycni.result import Interface, IPConfig, Result
from tests.conftest import PYCNI, Netns, Outcome, cni_env, run_exec

NEW_MAC = "02:11:22:33:44:55"
ARP_FILTER = "net.ipv4.conf.IFNAME.arp_filter"


@dataclass
class Pod:
    """A pod with `eth0` (veth to the host namespace), the tuning state and allowlist paths."""

    host: Netns
    netns: Netns
    data_dir: Path
    allowlist: Path

    def prev_result(self, version: str) -> Any:
        """What a main plugin would have returned for eth0."""
        mac = self.netns.link("eth0")["address"]
        return Result(interfaces=[Interface("eth0", mac, sandbox=self.netns.path)],
                      ips=[IPConfig("10.9.0.2/24", "10.9.0.1", interface=0)]
                      ).to_version(version)

    def conf(self, version: str = "1.0.0", prev: bool = True, **keys: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {"cniVersion": version, "name": "tune", "type": "tuning",
                                "dataDir": str(self.data_dir), **keys}
        if prev:
            conf["prevResult"] = self.prev_result(version)
        return conf

    def run(self, command: str, conf: Any, with_netns: bool = True, cid: str = "ctr-1",
            **env: str) -> Outcome:
        return run_exec([*PYCNI, "tuning"],
                        cni_env(command, self.netns.path if with_netns else "",
                                container_id=cid, PYCNI_TUNING_ALLOWLIST=str(self.allowlist),
                                **env),
                        conf, in_ns=self.host)

    def state(self) -> list[str]:
        directory = self.data_dir / "tune"
        return sorted(p.name for p in directory.iterdir()
                      if p.name != "lock") if directory.exists() else []

    def sysctl(self, key: str) -> str:
        return self.netns.run("sysctl", "-n", key).stdout.strip()

    def snapshot(self) -> dict[str, Any]:
        """Everything tuning may change in these tests."""
        eth0 = self.netns.link("eth0")
        return {"mac": eth0["address"], "mtu": eth0["mtu"], "flags": sorted(eth0["flags"]),
                "txqlen": eth0.get("txqlen"),
                "arp_filter": self.sysctl("net.ipv4.conf.eth0.arp_filter"),
                "somaxconn": self.sysctl("net.core.somaxconn")}


@pytest.fixture
def pod(host_ns: Netns, pod_ns: Netns, tmp_path: Path) -> Pod:
    host_ns.run("ip", "link", "add", "tune-host", "type", "veth",
                "peer", "name", "eth0", "netns", pod_ns.name)
    pod_ns.run("ip", "link", "set", "eth0", "up")
    return Pod(host_ns, pod_ns, tmp_path / "tuning", tmp_path / "allowlist.conf")


EVERYTHING = {"sysctl": {ARP_FILTER: "1", "net/core/somaxconn": "512"}, "mac": NEW_MAC,
              "mtu": 1400, "promisc": True, "allmulti": True, "txQLen": 321}


def tuned(pod: Pod) -> bool:
    eth0 = pod.netns.link("eth0")
    return (eth0["address"] == NEW_MAC and eth0["mtu"] == 1400
            and {"PROMISC", "ALLMULTI"} <= set(eth0["flags"]) and eth0["txqlen"] == 321
            and pod.sysctl("net.ipv4.conf.eth0.arp_filter") == "1"
            and pod.sysctl("net.core.somaxconn") == "512")


# --- every version: ADD, CHECK, DEL, DEL ---------------------------------------------------

@pytest.mark.parametrize("version", spec.ALL)
def test_add_check_del_every_version(version: str, pod: Pod) -> None:
    before = pod.snapshot()
    conf = pod.conf(version, **EVERYTHING)
    result = pod.run("ADD", conf).ok()

    assert tuned(pod)
    expected = dict(conf["prevResult"])
    if spec.at_least(version, "0.3.0"):  # the pod interface's entry shows the new MAC
        expected["interfaces"] = [{**expected["interfaces"][0], "mac": NEW_MAC}]
    assert result == expected
    assert pod.state() == ["ctr-1_eth0"]

    check = pod.run("CHECK", {**conf, "prevResult": result})
    if spec.at_least(version, "0.4.0"):
        assert check.ok() is None
    else:
        check.error(1)

    for _ in range(2):  # DEL, then DEL again
        pod.run("DEL", {**conf, "prevResult": result}).ok()
        assert pod.snapshot() == before
        assert pod.state() == []


def test_check_finds_a_changed_value(pod: Pod) -> None:
    conf = pod.conf(**EVERYTHING)
    result = pod.run("ADD", conf).ok()
    pod.netns.run("ip", "link", "set", "eth0", "mtu", "1300")
    assert "mtu" in pod.run("CHECK", {**conf, "prevResult": result}).error(999)["msg"]
    pod.netns.run("ip", "link", "set", "eth0", "mtu", "1400")
    pod.netns.run("sysctl", "-w", "net.core.somaxconn=100")
    assert "somaxconn" in pod.run("CHECK", {**conf, "prevResult": result}).error(999)["msg"]


# --- where values come from ----------------------------------------------------------------

def test_args_cni_and_runtime_config(pod: Pod) -> None:
    conf = pod.conf(sysctl={"net.core.somaxconn": "300"}, mtu=1500, mac="02:00:00:00:00:01",
                    capabilities={"mac": True},
                    runtimeConfig={"mac": NEW_MAC},
                    args={"cni": {"mtu": 1400, "sysctl": {ARP_FILTER: "1"},
                                  "mac": "02:00:00:00:00:02", "txQLen": 321,
                                  "promisc": True, "allmulti": True}})
    conf["sysctl"]["net.core.somaxconn"] = "512"
    pod.run("ADD", conf).ok()
    assert tuned(pod)  # args.cni sysctls merged over the config's, runtimeConfig.mac wins
    pod.run("DEL", conf).ok()


def test_mac_from_cni_args(pod: Pod) -> None:
    conf = pod.conf(mac="02:00:00:00:00:01")
    result = pod.run("ADD", conf, CNI_ARGS=f"IgnoreUnknown=1;MAC={NEW_MAC}").ok()
    assert pod.netns.link("eth0")["address"] == NEW_MAC
    assert result["interfaces"][0]["mac"] == NEW_MAC


# --- bad input: code 7, nothing changed ------------------------------------------------------

@pytest.mark.parametrize("keys", [
    {"sysctl": {"kernel.hostname": "evil"}},
    {"sysctl": {"net/../kernel/hostname": "evil"}},
    {"sysctl": {"net": "1"}},
    {"mac": "not-a-mac"},
    {"mac": "01:00:5e:00:00:01"},  # multicast
    {"mtu": -1},
    {"txQLen": -5},
], ids=["non-net", "escape", "bare-net", "mac", "multicast-mac", "mtu", "txqlen"])
def test_bad_input_changes_nothing(keys: dict[str, Any], pod: Pod) -> None:
    before = pod.snapshot()
    sysctls = {**EVERYTHING["sysctl"], **keys.get("sysctl", {})}
    conf = pod.conf(**{**EVERYTHING, **keys, "sysctl": sysctls})
    pod.run("ADD", conf).error(7)
    assert pod.snapshot() == before
    assert pod.state() == []


def test_missing_prev_result(pod: Pod) -> None:
    before = pod.snapshot()
    pod.run("ADD", pod.conf(prev=False, **EVERYTHING)).error(7)
    assert pod.snapshot() == before


def test_duplicate_sysctl_keys(pod: Pod) -> None:
    raw = pod.conf()
    text = (f'{{"cniVersion": "1.0.0", "name": "tune", "type": "tuning", "dataDir": '
            f'"{pod.data_dir}", "prevResult": {json.dumps(raw["prevResult"])}, '
            '"sysctl": {"net.core.somaxconn": "1", "net.core.somaxconn": "2"}}')
    assert "duplicated" in pod.run("ADD", text.encode()).error(7)["msg"]


def test_allowlist(pod: Pod) -> None:
    pod.allowlist.write_text("^net\\.ipv4\\.conf\\.IFNAME\\.arp_filter$\n\n")
    before = pod.snapshot()
    refused = pod.run("ADD", pod.conf(**EVERYTHING)).error(7)
    assert "somaxconn" in refused["msg"]
    assert pod.snapshot() == before and pod.state() == []

    conf = pod.conf(sysctl={ARP_FILTER: "1"})
    pod.run("ADD", conf).ok()
    assert pod.sysctl("net.ipv4.conf.eth0.arp_filter") == "1"
    pod.allowlist.write_text("^nothing$\n")  # DEL works whatever the allowlist says now
    pod.run("DEL", conf).ok()
    assert pod.snapshot() == before


def test_failed_change_is_rolled_back(pod: Pod) -> None:
    before = pod.snapshot()
    pod.run("ADD", pod.conf(**{**EVERYTHING, "mtu": 70000})).error(999)  # above veth's max
    assert pod.snapshot() == before
    assert pod.state() == []


def test_unknown_sysctl_changes_nothing(pod: Pod) -> None:
    before = pod.snapshot()
    conf = pod.conf(**{**EVERYTHING, "sysctl": {**EVERYTHING["sysctl"],
                                                 "net.core.no_such_key": "1"}})
    assert "no_such_key" in pod.run("ADD", conf).error(999)["msg"]
    assert pod.snapshot() == before


# --- DEL ------------------------------------------------------------------------------------

def test_repeated_add_keeps_the_first_originals(pod: Pod) -> None:
    before = pod.snapshot()
    conf = pod.conf(**EVERYTHING)
    pod.run("ADD", conf).ok()
    pod.run("ADD", conf).ok()
    pod.run("DEL", conf).ok()
    assert pod.snapshot() == before


def test_del_without_netns_drops_the_state(pod: Pod) -> None:
    conf = pod.conf(**EVERYTHING)
    pod.run("ADD", conf).ok()
    pod.run("DEL", conf, with_netns=False).ok()
    assert pod.state() == []
    assert tuned(pod)  # nothing was restored: the runtime said the pod is gone
    pod.run("DEL", conf, with_netns=False).ok()


def test_del_when_the_interface_is_gone(pod: Pod) -> None:
    conf = pod.conf(**EVERYTHING)
    pod.run("ADD", conf).ok()
    pod.host.run("ip", "link", "del", "tune-host")
    pod.run("DEL", conf).ok()
    assert pod.state() == []


def test_del_when_the_netns_is_gone(pod: Pod, netns_factory: Any) -> None:
    conf = pod.conf(**EVERYTHING)
    pod.run("ADD", conf).ok()
    netns_factory.remove(pod.netns)
    pod.run("DEL", conf).ok()
    assert pod.state() == []


# --- STATUS and GC --------------------------------------------------------------------------

def test_status_and_gc(pod: Pod) -> None:
    conf = pod.conf("1.1.0", sysctl={"net.core.somaxconn": "512"})
    for cid in ("ctr-1", "ctr-2"):
        pod.run("ADD", conf, cid=cid).ok()
    assert pod.state() == ["ctr-1_eth0", "ctr-2_eth0"]

    plain = {k: v for k, v in conf.items() if k != "prevResult"}
    assert pod.run("STATUS", plain).ok() is None
    pod.run("GC", plain).error(7)  # GC needs the runtime's list
    valid = [{"containerID": "ctr-1", "ifname": "eth0"}]
    assert pod.run("GC", {**plain, "cni.dev/valid-attachments": valid}).ok() is None
    assert pod.state() == ["ctr-1_eth0"]
    assert pod.sysctl("net.core.somaxconn") == "512"  # GC never touches pods
