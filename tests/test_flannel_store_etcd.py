"""The etcd subnet store against a real etcd listening inside a sandbox namespace.

Every store call runs in a thread inside the etcd namespace (`entered`), so its sockets
reach that namespace's 127.0.0.1 and nothing else.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from pycni.plugins.flannel.lease import Lease, LeaseAttrs
from pycni.plugins.flannel.store.base import StoreError, StoreUnavailable
from pycni.plugins.flannel.store.etcd import EtcdStore

from pycni.netns import entered
from tests.etcdlib import EtcdServer, etcd_server, needs_etcd

__all__ = ["etcd_server"]   # the fixture, used by name

pytestmark = [pytest.mark.kernel, needs_etcd]

PREFIX = "/coreos.com/network"
NET_CONF = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}
MIN_TTL = 2       # etcd raises shorter lease TTLs to about this


def attrs(public_ip: str) -> LeaseAttrs:
    return LeaseAttrs(public_ip, "vxlan", {"VNI": 1, "VtepMAC": "0a:58:0a:f4:01:00"})


def net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


def configure(server: EtcdServer, conf: dict[str, Any] | None = None) -> None:
    server.etcdctl("put", f"{PREFIX}/config", json.dumps(conf or NET_CONF))


@contextmanager
def inside(server: EtcdServer) -> Iterator[None]:
    with entered(server.netns.path):
        yield


def eventually(check: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def test_two_agents_lease_distinct_subnets_in_flannels_layout(etcd_server: EtcdServer) -> None:
    configure(etcd_server)
    with inside(etcd_server):
        first = EtcdStore([etcd_server.url]).acquire_lease(attrs("192.168.0.10"))
        second = EtcdStore([etcd_server.url]).acquire_lease(attrs("192.168.0.20"))
        listed = EtcdStore([etcd_server.url]).leases()
    assert (first.subnet, second.subnet) == (net("10.244.1.0/24"), net("10.244.2.0/24"))
    assert {(lease.subnet, lease.attrs.public_ip) for lease in listed} == {
        (first.subnet, "192.168.0.10"), (second.subnet, "192.168.0.20")}
    keys = etcd_server.etcdctl("get", "--prefix", "--keys-only", f"{PREFIX}/subnets/").stdout
    assert keys.split() == [f"{PREFIX}/subnets/10.244.1.0-24", f"{PREFIX}/subnets/10.244.2.0-24"]
    answer = json.loads(etcd_server.etcdctl("get", "-w", "json",
                                            f"{PREFIX}/subnets/10.244.1.0-24").stdout)
    kv = answer["kvs"][0]
    assert json.loads(base64.b64decode(kv["value"])) == {
        "PublicIP": "192.168.0.10", "BackendType": "vxlan",
        "BackendData": {"VNI": 1, "VtepMAC": "0a:58:0a:f4:01:00"}}
    assert kv.get("lease"), "the subnet key must expire with an etcd lease"


def test_missing_config_names_the_key(etcd_server: EtcdServer) -> None:
    with inside(etcd_server), pytest.raises(StoreError, match=f"{PREFIX}/config"):
        EtcdStore([etcd_server.url]).network_config()
    configure(etcd_server, {"Network": "10.244.0.0/16", "SubnetLen": 8})
    with inside(etcd_server), pytest.raises(StoreError, match="SubnetLen"):
        EtcdStore([etcd_server.url]).network_config()


def test_custom_prefix(etcd_server: EtcdServer) -> None:
    etcd_server.etcdctl("put", "/example/network/config", json.dumps(NET_CONF))
    with inside(etcd_server):
        EtcdStore([etcd_server.url], prefix="/example/network/").acquire_lease(
            attrs("192.168.0.10"))
    keys = etcd_server.etcdctl("get", "--prefix", "--keys-only", "/example/").stdout.split()
    assert "/example/network/subnets/10.244.1.0-24" in keys


def test_restart_reuses_lease_and_previous_is_honoured(etcd_server: EtcdServer) -> None:
    configure(etcd_server)
    with inside(etcd_server):
        EtcdStore([etcd_server.url]).acquire_lease(attrs("192.168.0.10"))
        previous = Lease(net("10.244.9.0/24"), attrs("192.168.0.20"))
        second = EtcdStore([etcd_server.url]).acquire_lease(attrs("192.168.0.20"), previous)
        assert second.subnet == previous.subnet
        new_attrs = LeaseAttrs("192.168.0.20", "vxlan", {"VNI": 1, "VtepMAC": "0a:58:0:0:0:2"})
        again = EtcdStore([etcd_server.url]).acquire_lease(new_attrs)
        assert again.subnet == second.subnet
        listed = EtcdStore([etcd_server.url]).leases()
        taken = EtcdStore([etcd_server.url]).acquire_lease(attrs("192.168.0.30"), previous)
    assert len(listed) == 2
    assert new_attrs in [lease.attrs for lease in listed]
    assert taken.subnet == net("10.244.2.0/24")     # previous's subnet is held by .20


def test_exhaustion_is_a_store_error(etcd_server: EtcdServer) -> None:
    configure(etcd_server, {**NET_CONF, "SubnetMin": "10.244.1.0", "SubnetMax": "10.244.2.0"})
    with inside(etcd_server):
        store = EtcdStore([etcd_server.url])
        store.acquire_lease(attrs("192.168.0.10"))
        store.acquire_lease(attrs("192.168.0.20"))
        with pytest.raises(StoreError, match="no free subnet"):
            store.acquire_lease(attrs("192.168.0.30"))


def test_expiry_frees_the_subnet_and_renew_keeps_it(etcd_server: EtcdServer) -> None:
    configure(etcd_server)
    with inside(etcd_server):
        store = EtcdStore([etcd_server.url], ttl=MIN_TTL)
        kept = store.acquire_lease(attrs("192.168.0.10"))
        left = store.acquire_lease(attrs("192.168.0.20"))
        deadline = time.monotonic() + 3 * MIN_TTL
        while time.monotonic() < deadline:      # renew the first, let the second lapse
            kept = store.renew_lease(kept)
            time.sleep(0.5)
        assert [lease.subnet for lease in store.leases()] == [kept.subnet]
        taken = EtcdStore([etcd_server.url]).acquire_lease(attrs("192.168.0.30"))
        assert taken.subnet == left.subnet
        with pytest.raises(StoreError, match="lost.*192.168.0.30"):
            store.renew_lease(left)


def test_renew_recreates_a_lost_key(etcd_server: EtcdServer) -> None:
    configure(etcd_server)
    with inside(etcd_server):
        store = EtcdStore([etcd_server.url])
        lease = store.acquire_lease(attrs("192.168.0.10"))
    etcd_server.etcdctl("del", f"{PREFIX}/subnets/{lease.key}")
    with inside(etcd_server):
        assert store.renew_lease(lease).subnet == lease.subnet
        assert [found.subnet for found in store.leases()] == [lease.subnet]


def test_wait_for_change_wakes_when_another_agent_acquires(etcd_server: EtcdServer) -> None:
    configure(etcd_server)
    with inside(etcd_server):
        watcher = EtcdStore([etcd_server.url])
        assert watcher.leases() == []
        assert watcher.wait_for_change(0.5) is False
        other = threading.Timer(0.3, lambda: EtcdStore([etcd_server.url]).acquire_lease(
            attrs("192.168.0.20")))
        other.start()      # started here, so its sockets are in the etcd namespace too
        try:
            assert watcher.wait_for_change(10) is True
        finally:
            other.join()
        assert [lease.attrs.public_ip for lease in watcher.leases()] == ["192.168.0.20"]
        watcher.close()


def test_concurrent_agents_get_distinct_subnets(etcd_server: EtcdServer) -> None:
    configure(etcd_server)
    count = 8
    start = threading.Barrier(count)
    results: dict[int, Any] = {}

    def agent(index: int) -> None:
        store = EtcdStore([etcd_server.url])
        start.wait()
        try:
            results[index] = store.acquire_lease(attrs(f"192.168.0.{10 + index}")).subnet
        except Exception as exc:  # reported by the assertion below
            results[index] = exc

    with inside(etcd_server):
        threads = [threading.Thread(target=agent, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        listed = EtcdStore([etcd_server.url]).leases()
    assert sorted(map(str, results.values())) == sorted(
        str(net(f"10.244.{i}.0/24")) for i in range(1, count + 1)), results
    assert len(listed) == count


def test_unreachable_etcd_then_back(etcd_server: EtcdServer) -> None:
    configure(etcd_server)
    with inside(etcd_server):
        store = EtcdStore([etcd_server.url], timeout=2)
        lease = store.acquire_lease(attrs("192.168.0.10"))
    etcd_server.stop()
    with inside(etcd_server):
        calls = [store.network_config, lambda: store.acquire_lease(attrs("192.168.0.10")),
                 lambda: store.renew_lease(lease), store.leases,
                 lambda: store.wait_for_change(0.5)]
        for call in calls:
            with pytest.raises(StoreUnavailable, match=etcd_server.url):
                call()
    etcd_server.start()
    with inside(etcd_server):
        assert [found.subnet for found in store.leases()] == [lease.subnet]
        assert store.renew_lease(lease).subnet == lease.subnet
        assert store.acquire_lease(attrs("192.168.0.10")).subnet == lease.subnet
        store.close()


def test_second_endpoint_is_used_when_the_first_is_down(etcd_server: EtcdServer) -> None:
    configure(etcd_server)
    with inside(etcd_server):
        store = EtcdStore(["http://127.0.0.1:1", etcd_server.url])
        assert store.acquire_lease(attrs("192.168.0.10")).subnet == net("10.244.1.0/24")


@pytest.mark.bench
def test_ten_thousand_leases_are_listed_in_one_request(etcd_server: EtcdServer) -> None:
    configure(etcd_server, {"Network": "10.0.0.0/8", "SubnetLen": 24})
    total, batch = 10_000, 100          # etcd allows 128 operations per transaction
    with inside(etcd_server):
        store = EtcdStore([etcd_server.url])
        for first in range(0, total, batch):
            puts = []
            for index in range(first, first + batch):
                key = f"{PREFIX}/subnets/10.{index >> 8}.{index & 255}.0-24"
                value = json.dumps(attrs(f"172.16.{index >> 8}.{index & 255}").to_json())
                puts.append({"request_put": {"key": base64.b64encode(key.encode()).decode(),
                                             "value": base64.b64encode(value.encode()).decode()}})
            assert store._txn([], puts)
        requests = 0
        post = store._post

        def counting_post(*args: Any, **kwargs: Any) -> dict[str, Any]:
            nonlocal requests
            requests += 1
            return post(*args, **kwargs)

        store._post = counting_post  # type: ignore[method-assign]
        for run in ("first", "next"):     # the next listing reuses the parsed leases
            requests = 0
            began = time.perf_counter()
            listed = store.leases()
            elapsed = time.perf_counter() - began
            print(f"leases() of {total} leases, {run} call: {elapsed:.3f} s")
            assert len(listed) == total
            assert requests == 1
