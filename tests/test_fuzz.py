"""Hostile input, fuzzed over every plugin: always a CNI error, never a change on the node.

Every example runs in `tests.fuzzworker`, a process sealed in a sandbox node namespace with
its own PID namespace (`/proc/1/ns/net` is the sandbox node) and a mount namespace where only
tmpfs state directories are writable. For each example of each type in
`pycni.registry.PLUGINS`:
- exit 0 only with a valid answer (a result for ADD, nothing for DEL/CHECK);
- otherwise exit 1 and stdout exactly one error object: an integer code from the spec's set
  (999 only as a plugin's own verdict, never from an exception it did not expect), a `msg`,
  no traceback;
- a failed example leaves the node, the pod and the state directories exactly as they were;
  a successful ADD is deleted again and must leave no link, address or file behind.

`make test` runs 14 examples per type from a fixed seed per type (the same examples on every
machine); `make stress` (`-m stress`) runs 400 from a new seed per run;
`PYCNI_FUZZ_PROFILE=stress` makes the default test do the same.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from pycni import registry
from tests.conftest import IS_ROOT, NetnsFactory
from tests.fuzzworker import BIN_DIR, Worker

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(not IS_ROOT, reason="needs root for namespaces and mounts")]

STRESS = os.environ.get("PYCNI_FUZZ_PROFILE") == "stress"


def fuzz_settings(examples: int) -> settings:
    # The node carries state from one example to the next, so a failure is reported as
    # found: shrinking would replay examples on a changed node.
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=list(HealthCheck), database=None,
                    phases=[Phase.explicit, Phase.generate], report_multiple_bugs=False)


DEFAULT_RUN = fuzz_settings(400 if STRESS else 10)
STRESS_RUN = fuzz_settings(400)

KERNEL_LACKS = "this kernel has no"  # a plugin's message when a link kind is not built in
SPEC_CODES = {1, 2, 3, 4, 5, 6, 7, 8, 11, 50, 51}
SUBNET_ENV = ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
              "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
OWN = "/proc/1/ns/net"  # in the worker's PID namespace: the worker itself, the sandbox node
NOT_A_NETNS = ("/dev/null", "/etc/hostname", "/tmp", "/proc/self/ns/mnt", "/proc/1/ns/uts",
               "/run/netns")


# --- the sandbox node -----------------------------------------------------------------------

class Node:
    """The sandbox node (host netns with NICs eth0/eth1/eth2: veths), a pod, the worker."""

    def __init__(self) -> None:
        self.namespaces = NetnsFactory()
        try:
            self._build()
        except BaseException:
            self.namespaces.remove_all()
            raise

    def _build(self) -> None:
        self.host = self.namespaces("fzhost")
        self.pod = self.namespaces("fzpod")
        for command in (["ip", "link", "set", "lo", "up"],
                        ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"],
                        ["ip", "link", "add", "eth1", "type", "veth", "peer", "name", "peer1"],
                        ["ip", "link", "add", "eth2", "type", "veth", "peer", "name", "peer2"],
                        ["ip", "link", "set", "eth0", "up"],
                        ["ip", "link", "set", "eth1", "up"],
                        ["ip", "addr", "add", "192.168.0.10/24", "dev", "eth0"]):
            self.host.run(*command)
        self.worker = Worker(self.host.name)
        self.worker.call({"op": "write", "path": "/run/flannel/subnet.env",
                          "content": SUBNET_ENV})

    @property
    def pod_path(self) -> str:
        return self.pod.path

    def run(self, plugin_type: str, env: dict[str, str], stdin: bytes | str) -> dict[str, Any]:
        return self.worker.run(plugin_type, env, stdin)

    def snapshot(self, dirs: tuple[str, ...] = ()) -> dict[str, Any]:
        return self.worker.snapshot([self.pod_path], list(dirs))

    def close(self) -> None:
        self.worker.close()
        self.namespaces.remove_all()


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    built = Node()
    try:
        ping = built.worker.call({"op": "ping"})
        assert ping["pid"] == 1 and ping["net"] == ping["init_net"], ping
        assert not ping["root_writable"], ping
        yield built
    finally:
        built.close()


def env_for(command: str, node: Node, **over: str | None) -> dict[str, str]:
    env: dict[str, str | None] = {"CNI_COMMAND": command, "CNI_CONTAINERID": "fuzz-ctr",
                                  "CNI_NETNS": node.pod_path, "CNI_IFNAME": "eth0",
                                  "CNI_PATH": BIN_DIR}
    env.update(over)
    return {k: v for k, v in env.items() if v is not None}


# --- valid seeds, one per type --------------------------------------------------------------

def host_local(subnet: str = "10.77.0.0/24") -> dict[str, Any]:
    return {"type": "host-local", "subnet": subnet}


PREV = {"cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "0a:58:0a:4d:00:02", "sandbox": "SANDBOX"}],
        "ips": [{"address": "10.77.0.2/24", "interface": 0, "gateway": "10.77.0.1"}]}


def seeds() -> dict[str, dict[str, Any]]:
    base = {"cniVersion": "1.0.0", "name": "fuzznet"}
    found: dict[str, dict[str, Any]] = {
        "loopback": {"type": "loopback"},
        "bridge": {"type": "bridge", "bridge": "fzbr0", "isGateway": True,
                   "ipam": host_local()},
        "cnv-bridge": {"type": "cnv-bridge", "bridge": "fzbr1", "macspoofchk": True,
                       "vlan": 0},
        "macvlan": {"type": "macvlan", "master": "eth1", "mode": "bridge",
                    "ipam": host_local("192.168.100.0/24")},
        "ipvlan": {"type": "ipvlan", "master": "eth1", "ipam": host_local("10.78.0.0/24")},
        "vlan": {"type": "vlan", "master": "eth0", "vlanId": 100,
                 "ipam": host_local("10.100.0.0/24")},
        "host-device": {"type": "host-device", "device": "eth2",
                        "ipam": host_local("10.0.0.0/24")},
        "sriov": {"type": "sriov", "deviceID": "0000:03:00.0", "vf": 0,
                  "ipam": host_local("172.16.0.0/16")},
        "host-local": {"type": "bridge", "ipam": host_local("10.79.0.0/24")},
        "static": {"type": "bridge",
                   "ipam": {"type": "static", "addresses": [{"address": "10.80.0.5/24"}]}},
        "portmap": {"type": "portmap", "capabilities": {"portMappings": True},
                    "runtimeConfig": {"portMappings": [
                        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
                    "prevResult": PREV},
        "tuning": {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"},
                   "prevResult": PREV},
        "bandwidth": {"type": "bandwidth", "ingressRate": 1000000, "ingressBurst": 100000,
                      "prevResult": PREV},
        "multus": {"type": "multus", "delegates": [
            {"cniVersion": "1.0.0", "name": "fuzz-default", "type": "loopback"}]},
        "flannel": {"type": "flannel", "delegate": {"bridge": "fzcni0"}},
    }
    assert set(found) == set(registry.PLUGINS), "a type without a fuzz seed"
    return {name: {**base, **conf} for name, conf in found.items()}


SEEDS = seeds()


# --- strategies -----------------------------------------------------------------------------

TRAVERSAL = ["..", "../..", "../../etc", "/", "/etc/passwd", "a/../../b", ".", "./x", "x/y",
             "..\\..", "%2e%2e", "....//", "\u2024\u2024"]
HOSTILE_TEXT = st.one_of(
    st.sampled_from(["", " ", "lo", "eth0 ", "a" * 16, "a" * 300, "é", "\u200b", "eth0:1",
                     "-", "\t", "\n", "0", "null", "☃" * 5, "x" * 5000, *TRAVERSAL]),
    st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
            max_size=40))
HUGE = st.sampled_from([2**31, 2**63, 2**64 + 1, -1, -(2**63), 10**100, 0])
JSON_LEAF = st.one_of(st.none(), st.booleans(), HUGE, st.integers(),
                      st.floats(allow_nan=True, allow_infinity=True), HOSTILE_TEXT,
                      st.sampled_from(["10.0.0.0/33", "300.1.1.1/24", "::/129", "10.0.0.1",
                                       "fe80::/64", "0.0.0.0/0", "not-a-cidr", "1.0.0",
                                       "99.99.99", "0.3.1 "]))
JSON_ANY = st.recursive(JSON_LEAF, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(HOSTILE_TEXT, inner, max_size=3)),
    max_leaves=8)


def paths(conf: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a config a mutation can hit."""
    if isinstance(conf, dict):
        for key, value in conf.items():
            yield (*prefix, key)
            yield from paths(value, (*prefix, key))
    elif isinstance(conf, list):
        for index, value in enumerate(conf):
            yield (*prefix, index)
            yield from paths(value, (*prefix, index))


def _parent(conf: Any, where: tuple[Any, ...]) -> Any:
    for step in where[:-1]:
        conf = conf[step]
    return conf


@st.composite
def configs(draw: st.DrawFn, plugin_type: str) -> bytes:
    """A seed, mutated a few times (or not), as stdin bytes; sometimes not JSON at all."""
    if draw(st.integers(0, 19)) == 0:
        return draw(st.one_of(st.binary(max_size=64),
                              st.sampled_from([b"", b"[]", b"null", b"1", b'"x"', b"{",
                                               b'{"cniVersion": "1.0.0"}' * 2,
                                               b"\xff\xfe{}", b'{"a": NaN}'])))
    conf = json.loads(json.dumps(SEEDS[plugin_type]))
    for _ in range(draw(st.integers(0, 3))):
        places = list(paths(conf))
        kind = draw(st.sampled_from(["set", "delete", "add", "version", "name", "type"]))
        if kind == "version":
            conf["cniVersion"] = draw(st.one_of(
                st.sampled_from(["", "0.0.0", "2.0.0", "1.0", "1.0.0.0", "v1.0.0", "0.3.1",
                                 "0.1.0", "1.1.0", "0.4.0", "１.0.0", "1.0.0\n"]), JSON_LEAF))
        elif kind == "name":
            conf["name"] = draw(st.one_of(HOSTILE_TEXT, JSON_LEAF))
        elif kind == "type":
            conf["type"] = draw(JSON_LEAF)
        elif kind == "add" or not places:
            target = draw(st.sampled_from([conf, *[v for v in (conf.get("ipam"),
                                                               conf.get("delegate"))
                                                   if isinstance(v, dict)]]))
            key = draw(st.one_of(st.sampled_from(
                ["dataDir", "cacheDir", "confDir", "cniDir", "subnetFile", "bridge", "master",
                 "device", "mtu", "mac", "ranges", "routes", "addresses", "runtimeConfig",
                 "args", "ipMasq", "vlan", "delegates", "sysctl", "kubeconfig"]),
                HOSTILE_TEXT))
            target[key] = draw(st.one_of(JSON_ANY, st.sampled_from(
                [f"/var/lib/cni/{t}" for t in TRAVERSAL] + TRAVERSAL)))
        else:
            where = draw(st.sampled_from(places))
            parent = _parent(conf, where)
            if kind == "delete":
                del parent[where[-1]]
            else:
                parent[where[-1]] = draw(JSON_ANY)
    return json.dumps(conf, allow_nan=True).encode()


CNI_ARGS = st.one_of(
    st.sampled_from(["", "IgnoreUnknown=1", "IgnoreUnknown=true;FOO=bar", "FOO=bar", "=",
                     ";;", "K8S_POD_NAME", "K8S_POD_NAME=a=b", "IP=10.77.0.9",
                     "IgnoreUnknown=1;IP=10.77.0.300", "IgnoreUnknown=1;IP=not-an-ip",
                     "IgnoreUnknown=1;MAC=zz:zz", "IgnoreUnknown=1;K8S_POD_NAMESPACE=../..",
                     "IgnoreUnknown=1;K8S_POD_NAME=" + "x" * 10000, "IgnoreUnknown=0;A=1",
                     "K8S_POD_NAMESPACE=default;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=c"]),
    st.lists(st.tuples(HOSTILE_TEXT, HOSTILE_TEXT), max_size=3).map(
        lambda pairs: ";".join(f"{k}={v}" for k, v in pairs)))
IFNAMES = st.one_of(st.sampled_from(["", "lo", "eth0", "a" * 15, "a" * 16, "/", "..", ".",
                                     "a b", "ä", "eth0:0", "net1", "x/../y"]), HOSTILE_TEXT)
CONTAINER_IDS = st.one_of(st.sampled_from(["../../etc", "/", "..", "a/b", "-x", "ä",
                                           "c" * 300, "c" * 5000, "ctr 1", "ctr\n1"]),
                          HOSTILE_TEXT)
NETNS = st.sampled_from(["/nonexistent/ns", *NOT_A_NETNS, OWN, "/proc/self/ns/net",
                         "/proc/thread-self/ns/net", "relative/ns", "netns", "", "/proc/2/ns/net"])
ENV_FIELDS = {"CNI_ARGS": CNI_ARGS, "CNI_IFNAME": IFNAMES, "CNI_CONTAINERID": CONTAINER_IDS,
              "CNI_NETNS": NETNS, "CNI_PATH": st.sampled_from(["", "/nonexistent", "/",
                                                               "relative"])}


@st.composite
def examples(draw: st.DrawFn, plugin_type: str) -> tuple[str, dict[str, str], bytes]:
    command = draw(st.sampled_from(["ADD", "ADD", "ADD", "DEL", "DEL", "CHECK", "STATUS",
                                    "GC", "VERSION", "add", "", "BOGUS"]))
    stdin = draw(configs(plugin_type))
    return command, draw(environments(command)), stdin


@st.composite
def environments(draw: st.DrawFn, command: str) -> dict[str, str]:
    fields = draw(st.sets(st.sampled_from(sorted(ENV_FIELDS)), max_size=2))
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "fuzz-ctr", "CNI_NETNS": "@POD",
           "CNI_IFNAME": "eth0", "CNI_PATH": BIN_DIR}
    for name in fields:
        env[name] = draw(ENV_FIELDS[name])
    return {k: v for k, v in env.items() if v != ""}


# --- properties -----------------------------------------------------------------------------

def error_of(outcome: dict[str, Any]) -> dict[str, Any]:
    """The error JSON of a failed run; asserts it is one, well formed, with a spec code.

    A 999 must be a plugin's own verdict (the pod or node is not as the input says: a CHECK
    of a pod never added, a prevResult naming a link that is no veth; the reference plugins
    say 999 there too), never an exception the plugin did not expect: those reach the
    dispatcher, which logs their traceback."""
    assert outcome["status"] == 1, outcome
    assert "Traceback" not in outcome["stdout"], outcome
    error = json.loads(outcome["stdout"])
    assert isinstance(error, dict), outcome
    assert set(error) <= {"cniVersion", "code", "msg", "details"}, error
    code = error["code"]
    assert isinstance(code, int) and not isinstance(code, bool), error
    assert code in SPEC_CODES or code >= 100, f"code {code} outside the spec's set: {error}"
    assert code != 999 or "unexpected error" not in outcome["stderr"], (
        f"unexpected exception on hostile input: {error}\n{outcome['stderr']}")
    assert isinstance(error.get("msg"), str) and error["msg"], error
    return error


def check_success(command: str, outcome: dict[str, Any]) -> None:
    assert outcome["status"] == 0, outcome
    if command == "ADD":
        from pycni.result import Result

        result = json.loads(outcome["stdout"])
        assert isinstance(result, dict) and isinstance(result.get("cniVersion"), str), result
        Result.from_dict(result)
    elif command == "VERSION":
        assert "supportedVersions" in json.loads(outcome["stdout"])
    else:
        assert outcome["stdout"].strip() == "", outcome


# Left by a successful ADD then DEL, as the reference plugins leave them: host-local's
# per-network directory, its lock and last-reserved markers, portmap's lock, a bridge (and
# what the bridge carries), the plugins' empty state directories.
RESIDUE = re.compile(r"^/var/lib/cni/(networks|flannel|tuning|multus|host-device|sriov)"
                     r"(/[^/]+)?(/lock|/last_reserved_ip\.\d+|/\.meta)?$"
                     r"|^/run/pycni(/portmap\.lock)?$")  # portmap's node-wide lock


def _pod_view(state: dict[str, Any]) -> dict[str, Any]:
    """A pod's state but its `lo` (loopback's DEL brings it down; the kernel keeps 127.0.0.1
    and drops its routes, as with the reference plugin)."""
    return {"links": [x for x in state.get("links", []) if x["name"] != "lo"],
            "addresses": [x for x in state.get("addresses", []) if x["dev"] != "lo"],
            "routes": [x for x in state.get("routes", []) if x.get("dev") != "lo"],
            "qdiscs": [x for x in state.get("qdiscs", []) if x["dev"] != "lo"],
            "iptables": state.get("iptables"),
            "nft": state.get("nft")}


def node_leftovers(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What a successful ADD+DEL left that it must not: links other than bridges, anything
    in the pod, files other than RESIDUE."""
    problems = []
    for path, state in after["kernel"].items():
        if path != "node" and _pod_view(state) != _pod_view(before["kernel"][path]):
            problems.append(f"pod {path} changed: {_pod_view(state)} != "
                            f"{_pod_view(before['kernel'][path])}")
    links_before = before["kernel"]["node"]["links"]
    for link in after["kernel"]["node"]["links"]:
        if link not in links_before and link["kind"] != "bridge" and link["name"] != "<veth>":
            problems.append(f"link left on the node: {link}")
        if link["name"] == "<veth>" and link not in links_before:
            problems.append(f"veth left on the node: {link}")
    for path in sorted(set(after["files"]) - set(before["files"])):
        if not RESIDUE.match(path):
            problems.append(f"file left: {path}")
    return problems


def _settled(snapshot: dict[str, Any]) -> dict[str, Any]:
    """Without carrier state: a bridge loses its carrier a moment after its last port goes,
    whatever the next example does."""
    copy = json.loads(json.dumps(snapshot))
    for state in copy.get("kernel", {}).values():
        for link in state.get("links", []):
            link.pop("operstate", None)
            link["flags"] = [f for f in link["flags"] if f not in ("NO-CARRIER", "LOWER_UP")]
    return copy


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    from conformance.kernelstate import differences as diff

    return diff(_settled(after), _settled(before))


def one_example(node: Node, plugin_type: str, command: str, env: dict[str, str],
                stdin: bytes, baseline: dict[str, Any]) -> dict[str, Any]:
    """Run one example; return the snapshot to compare the next example against."""
    env = {k: (node.pod_path if v == "@POD" else v) for k, v in env.items()}
    outcome = node.run(plugin_type, env, stdin)
    assert "Traceback" not in outcome["stdout"], outcome
    hostile_netns = env.get("CNI_NETNS") in (*NOT_A_NETNS, OWN, "/proc/self/ns/net",
                                             "/proc/thread-self/ns/net")
    after = node.snapshot()
    if outcome["status"] != 0:
        error_of(outcome)
        diff = differences(baseline, after)
        assert not diff, f"failed {command} changed the node: {diff[:10]}\n{outcome}"
        return baseline
    check_success(command, outcome)
    if hostile_netns and command in ("ADD", "CHECK") and registry.load(plugin_type).check_netns:
        pytest.fail(f"{plugin_type} {command} succeeded in {env['CNI_NETNS']}: {outcome}")
    if command == "ADD":
        undo = node.run(plugin_type, {**env, "CNI_COMMAND": "DEL"}, stdin)
        assert undo["status"] == 0, f"DEL after a successful ADD failed: {undo}"
        after = node.snapshot()
    leftovers = node_leftovers(baseline, after)
    assert not leftovers, f"{command} left: {leftovers}\nstdin: {stdin!r}\nenv: {env}"
    return after


@pytest.mark.parametrize("plugin_type", sorted(registry.PLUGINS))
def test_hostile_input(node: Node, plugin_type: str) -> None:
    fuzz_plugin(node, plugin_type, DEFAULT_RUN, fixed_seed=not STRESS)


@pytest.mark.stress
@pytest.mark.parametrize("plugin_type", sorted(registry.PLUGINS))
def test_hostile_input_stress(node: Node, plugin_type: str,
                              request: pytest.FixtureRequest) -> None:
    """`make stress`: 400 random examples per type (a new seed each run)."""
    if "stress" not in str(request.config.getoption("markexpr")):
        pytest.skip("a long run: selected with -m stress (make stress)")
    fuzz_plugin(node, plugin_type, STRESS_RUN, fixed_seed=False)


def fuzz_plugin(node: Node, plugin_type: str, run_settings: settings, fixed_seed: bool) -> None:
    """`fixed_seed`: the same examples on every machine and checkout (make test); otherwise a
    new seed each run (make stress), printed by Hypothesis when an example fails."""
    state = {"baseline": node.snapshot()}

    @run_settings
    @given(example=examples(plugin_type))
    @seed(zlib.crc32(plugin_type.encode()) if fixed_seed else None)
    def fuzz(example: tuple[str, dict[str, str], bytes]) -> None:
        command, env, stdin = example
        try:
            state["baseline"] = one_example(node, plugin_type, command, env, stdin,
                                            state["baseline"])
        except BaseException:
            state["baseline"] = node.snapshot()  # later examples compare to what is now
            raise

    fuzz()


# --- targeted -------------------------------------------------------------------------------

TRAVERSING_IDS = ["../../etc", "../x", "..", "/etc", "a/../../b", "x/../../../tmp/escape"]
NETNS_TYPES = sorted(t for t in registry.PLUGINS if registry.load(t).check_netns)


def _files(node: Node) -> dict[str, str]:
    files: dict[str, str] = node.snapshot()["files"]
    return files


@pytest.mark.parametrize("plugin_type", sorted(registry.PLUGINS))
def test_traversal_in_container_ids_and_names(node: Node, plugin_type: str) -> None:
    """A container ID, network name or interface name that climbs out of a directory is
    refused before any file is made or removed."""
    before = _files(node)
    cases: list[tuple[str, dict[str, Any]]] = []
    for bad in TRAVERSING_IDS:
        cases.append(("id", {"CNI_CONTAINERID": bad}))
        cases.append(("name", {"name": bad}))
        cases.append(("ifname", {"CNI_IFNAME": bad}))
    for command in ("ADD", "DEL", "CHECK"):
        for what, change in cases:
            env = env_for(command, node, **{k: v for k, v in change.items()
                                            if k.startswith("CNI_")})
            conf = {**SEEDS[plugin_type], **{k: v for k, v in change.items()
                                             if not k.startswith("CNI_")}}
            outcome = node.run(plugin_type, env, json.dumps(conf))
            error = error_of(outcome)
            assert error["code"] in (4, 7), (what, change, error)
    assert _files(node) == before


DATA_DIR_KEYS = {  # where a config names a directory or a file relative to one
    "host-local": [("ipam", "dataDir")], "bridge": [("ipam", "dataDir")],
    "macvlan": [("ipam", "dataDir")], "ipvlan": [("ipam", "dataDir")],
    "vlan": [("ipam", "dataDir")], "host-device": [("dataDir",)], "sriov": [("dataDir",)],
    "tuning": [("dataDir",)], "multus": [("cacheDir",), ("cniDir",)],
    "flannel": [("dataDir",), ("subnetFile",)],
}


@pytest.mark.parametrize("plugin_type", sorted(DATA_DIR_KEYS))
def test_data_dirs_stay_inside(node: Node, plugin_type: str) -> None:
    """With a state directory of its own, a plugin writes and removes files only under it,
    whatever the container ID, name or interface name."""
    before = _files(node)
    for key in DATA_DIR_KEYS[plugin_type]:
        for bad in TRAVERSING_IDS:
            conf = json.loads(json.dumps(SEEDS[plugin_type]))
            _set(conf, key, "/var/lib/cni/fuzz-data")
            for env in (env_for("ADD", node, CNI_CONTAINERID=bad),
                        env_for("DEL", node, CNI_CONTAINERID=bad),
                        env_for("ADD", node, CNI_IFNAME=bad)):
                error_of(node.run(plugin_type, env, json.dumps({**conf, "name": "ok"})))
            conf["name"] = bad
            error_of(node.run(plugin_type, env_for("ADD", node), json.dumps(conf)))
    after = _files(node)
    assert after == before, differences({"f": before}, {"f": after})


def _set(conf: dict[str, Any], key: tuple[str, ...], value: Any) -> None:
    for step in key[:-1]:
        conf = conf.setdefault(step, {})
    conf[key[-1]] = value


@pytest.mark.parametrize("plugin_type", NETNS_TYPES)
def test_not_a_netns_refused_first(node: Node, plugin_type: str) -> None:
    """A CNI_NETNS that is not a network namespace (a file, a directory, a device, another
    kind of namespace): code 4 for ADD, CHECK and DEL, before anything is done."""
    before = node.snapshot()
    for path in NOT_A_NETNS:
        for command in ("ADD", "CHECK", "DEL"):
            error = error_of(node.run(plugin_type, env_for(command, node, CNI_NETNS=path),
                                      json.dumps(SEEDS[plugin_type])))
            assert error["code"] == 4, (path, command, error)
    assert not differences(before, node.snapshot())


@pytest.mark.parametrize("plugin_type", NETNS_TYPES)
def test_own_netns_refused(node: Node, plugin_type: str) -> None:
    """The node's own namespace is never configured as a pod's: code 8 for every verb."""
    before = node.snapshot()
    for path in (OWN, "/proc/self/ns/net", "/proc/thread-self/ns/net"):
        for command in ("ADD", "CHECK", "DEL"):
            error = error_of(node.run(plugin_type, env_for(command, node, CNI_NETNS=path),
                                      json.dumps(SEEDS[plugin_type])))
            assert error["code"] == 8, (path, command, error)
    assert not differences(before, node.snapshot())


def test_seeds_succeed_where_the_sandbox_allows(node: Node) -> None:
    """The valid path is reachable: the seeds of the sandboxable main plugins ADD and DEL
    cleanly (so the fuzzing above reaches past validation)."""
    for plugin_type in ("loopback", "bridge", "macvlan", "ipvlan", "vlan", "host-local",
                        "static", "multus"):
        before = node.snapshot()
        stdin = json.dumps(SEEDS[plugin_type])
        added = node.run(plugin_type, env_for("ADD", node), stdin)
        if KERNEL_LACKS in added["stdout"]:
            continue  # e.g. no ipvlan module on this kernel: the fuzzing still runs it
        check_success("ADD", added)
        deleted = node.run(plugin_type, env_for("DEL", node), stdin)
        check_success("DEL", deleted)
        assert not node_leftovers(before, node.snapshot()), plugin_type


def test_worker_is_sealed(node: Node) -> None:
    """The worker cannot write the machine: a config naming any directory outside the
    tmpfs state directories fails to write there (read-only)."""
    conf = {**SEEDS["host-local"], "ipam": {**host_local(), "dataDir": "/var/tmp/fuzz-escape"}}
    outcome = node.run("host-local", env_for("ADD", node), json.dumps(conf))
    error_of(outcome)
    assert not os.path.exists("/var/tmp/fuzz-escape")
    done = subprocess.run(["ls", "/var/lib/cni"], capture_output=True, text=True)
    assert "fuzznet" not in done.stdout
