"""Devices of the node lent to a pod: moved in and out through a temporary namespace.

What host-device and sriov share. A device that moves keeps its identity, not its name: the
saved state (`original` plus `identity`) says how to recognise it in the pod and how to give
it back (name, MTU, MAC, alias, up). Moving through a namespace only the plugin holds means no
name on the node or in the pod can clash on the way.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress

from pycni import faults, link, netns
from pycni.errors import CNIError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from typing import Any

    from pyroute2 import IPRoute

    from pycni.result import Result
    from pycni.skel import CmdArgs

SYSFS_ROOT_ENV = "PYCNI_SYSFS_ROOT"  # where sysfs is read (the tests use a fake tree)
USERSPACE_DRIVERS = frozenset({"vfio-pci", "uio_pci_generic", "igb_uio"})  # DPDK
PCI_ADDRESS = re.compile(r"^([0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
IFF_UP = 0x1
IFF_LOOPBACK = 0x8


# --- sysfs ----------------------------------------------------------------------------------

def sysfs_path(environ: Mapping[str, str], path: str) -> str:
    """`path` (under /sys) in the sysfs tree this run reads."""
    root = environ.get(SYSFS_ROOT_ENV) or "/sys"
    return os.path.join(root, path.removeprefix("/sys").lstrip("/"))


def full_pci_address(address: str) -> str:
    """`03:00.1` -> `0000:03:00.1`, lower case; empty stays empty."""
    address = address.lower()
    return address if address.count(":") == 2 or not address else f"0000:{address}"


def driver(environ: Mapping[str, str], pci_address: str) -> str:
    """The name of the driver the PCI device is bound to ("" when none)."""
    bound = os.path.realpath(sysfs_path(environ, f"/sys/bus/pci/devices/{pci_address}/driver"))
    return os.path.basename(bound) if os.path.exists(bound) else ""


def has_userspace_driver(environ: Mapping[str, str], pci_address: str) -> bool:
    """Bound to a DPDK driver: the device has no netdev, nothing moves."""
    return driver(environ, pci_address) in USERSPACE_DRIVERS


# --- saved state ----------------------------------------------------------------------------

def attachment_key(container_id: str, ifname: str) -> str:
    """The state key of an attachment: `<containerID>:<ifname>` (neither holds a ':'); an
    ifname with characters a file name may not hold is written `<containerID>::<hex>`."""
    if all(c.isascii() and (c.isalnum() or c in "_.-") for c in ifname):
        return f"{container_id}:{ifname}"
    return f"{container_id}::{ifname.encode().hex()}"


# --- what a device is and was ---------------------------------------------------------------

def permanent_mac(message: Any) -> str:
    """The burned-in MAC the kernel reports (none for virtual devices)."""
    mac = message.get_attr("IFLA_PERM_ADDRESS") or ""
    return str(mac) if mac.strip("0:") else ""


def original(device: link.Link) -> dict[str, Any]:
    """What `restore` and `put_back` give back to a device: name, MTU, MAC, alias, up."""
    return {"name": device.name, "mtu": device.mtu, "mac": device.mac, "alias": device.alias,
            "up": bool(device.flags & IFF_UP)}


def identity(message: Any) -> dict[str, Any]:
    """How to recognise the device wherever it is and whatever it is called."""
    return {"permanentMac": permanent_mac(message),
            "parentDevice": message.get_attr("IFLA_PARENT_DEV_NAME") or ""}


def is_same_device(message: Any, record: Mapping[str, Any]) -> bool:
    """Whether `message` is the device `record` describes: by its permanent MAC or its bus
    address when it has one, else (virtual devices) by the MAC or alias it got in the pod."""
    if record.get("permanentMac"):
        return bool(permanent_mac(message) == record["permanentMac"])
    if record.get("parentDevice"):
        return bool(message.get_attr("IFLA_PARENT_DEV_NAME") == record["parentDevice"])
    return (message.get_attr("IFLA_ADDRESS") == record.get("podMac")
            or (message.get_attr("IFLA_IFALIAS") or "") == record.get("name"))


def locate(pod: IPRoute, record: Mapping[str, Any]) -> link.Link | None:
    """The attached device in the pod: at the index it got there when it is still the same
    device, else (the index was reused) wherever its permanent identity is; None when gone."""
    message = None
    if record.get("podIndex"):
        try:
            message = pod.get_links(record["podIndex"])[0]
        except Exception:  # NetlinkError: no link of that index
            message = None
    if message is not None and is_same_device(message, record):
        return link.Link(message)
    # a record saved before the move knows no index yet: wherever its identity is
    if (record.get("permanentMac") or record.get("parentDevice")
            or not record.get("podIndex")):
        for message in pod.get_links():
            if is_same_device(message, record):
                return link.Link(message)
    return None


def is_namespace(path: str) -> bool:
    """`path` is a network namespace (other than ours) that still exists."""
    try:
        return bool(path) and netns.validate(path, missing_ok=True)
    except CNIError:
        return False


# --- moving through a temporary namespace ---------------------------------------------------

def move(source: IPRoute, index: int, target: str, name: str) -> None:
    try:
        source.link("set", index=index, net_ns_fd=target)
    except Exception as exc:  # NetlinkError
        if link.is_error(exc, errno.EEXIST):
            raise CNIError(f"cannot move {name!r}: the target namespace already has a link "
                           f"named {name!r}") from None
        raise CNIError(f"failed to move {name!r} to another namespace: {exc}") from None


def only_link(scratch: IPRoute, name: str) -> int:
    """The device just moved into the temporary namespace, which holds nothing else."""
    indexes = scratch.link_lookup(ifname=name)
    if not indexes:
        raise CNIError(f"{name!r} vanished while moving between namespaces")
    return int(indexes[0])


@contextmanager
def scratch_namespace(state: Mapping[str, Any], home: str) -> Iterator[str]:
    """A temporary namespace for a device on its way, watched by a keeper: a process of a
    session of its own that, should the plugin die (SIGKILL, OOM) while the device is in
    the temporary namespace, gives it back to the namespace at `home` as `state` (from
    `original`) describes. Without it the device would go with the namespace: a virtual
    one destroyed, a physical one dropped into the machine's initial namespace."""
    with netns.temporary() as path:
        ready, ready_signal = os.pipe()
        done_signal, done = os.pipe()
        pid = os.fork()
        if pid == 0:  # the keeper
            status = 1
            try:
                os.setsid()  # out of the plugin's process group: a kill of it spares us
                os.environ.pop(faults.COUNTER, None)  # its repair is no point of the run
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):  # never hold the runtime's pipes open
                    os.dup2(null, fd)
                scratch_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                home_fd = os.open(home, os.O_RDONLY | os.O_CLOEXEC)
                # nothing else of the plugin's: no lock it holds, no end of our own pipes
                keep = {0, 1, 2, ready_signal, done_signal, scratch_fd, home_fd}
                for name in os.listdir("/proc/self/fd"):
                    if int(name) not in keep:
                        with suppress(OSError):
                            os.close(int(name))
                os.write(ready_signal, b"r")
                if os.read(done_signal, 1) == b"":  # the plugin died before it was done
                    give_back(f"/proc/self/fd/{scratch_fd}", f"/proc/self/fd/{home_fd}",
                              state)
                status = 0
            finally:
                os._exit(status)
        os.close(ready_signal)
        os.close(done_signal)
        try:
            os.read(ready, 1)
            yield path
        finally:
            os.close(ready)
            os.write(done, b"d")
            os.close(done)
            os.waitpid(pid, 0)


def give_back(scratch_path: str, home: str, state: Mapping[str, Any]) -> None:
    """Return whatever device is in the temporary namespace to `home`, as it was."""
    with link.socket(scratch_path) as scratch, link.socket(home) as target:
        for message in scratch.get_links():
            if not message["flags"] & IFF_LOOPBACK:
                put_back(scratch, message["index"], state, home, target)


def move_in(host: IPRoute, device: link.Link, ifname: str, pod_path: str,
            changes: Mapping[str, Any] | None = None) -> None:
    """Node -> temporary namespace (renamed `ifname` there, alias = original name, plus
    `changes` such as `mtu` or `address`) -> the pod at `pod_path`."""
    with scratch_namespace(original(device), netns.own_path()) as scratch_path, \
            link.socket(scratch_path) as scratch:
        move(host, device.index, scratch_path, device.name)
        index = only_link(scratch, device.name)
        try:
            try:
                scratch.link("set", index=index, ifalias=device.name, **(changes or {}))
                scratch.link("set", index=index, ifname=ifname)
            except Exception as exc:  # NetlinkError
                raise CNIError(f"failed to prepare {device.name!r} as {ifname!r}: "
                               f"{exc}") from None
            try:
                scratch.link("set", index=index, net_ns_fd=pod_path)
            except Exception as exc:  # NetlinkError
                if link.is_error(exc, errno.EEXIST):
                    raise CNIError(f"the pod already has an interface {ifname!r}") from None
                raise CNIError(f"failed to move {device.name!r} into {pod_path!r}: "
                               f"{exc}") from None
        except BaseException:
            put_back(scratch, index, original(device), netns.own_path(), host)
            raise


def restore(scratch: IPRoute, index: int, record: Mapping[str, Any]) -> None:
    """The device's own name, MTU, MAC and alias (in the temporary namespace, where no name
    clashes)."""
    current = link.get(scratch, index)
    changes: dict[str, Any] = {}
    if record.get("mtu") and current.mtu != record["mtu"]:
        changes["mtu"] = record["mtu"]
    if record.get("mac") and current.mac != record["mac"]:
        changes["address"] = record["mac"]
    if current.alias != record.get("alias", ""):
        changes["ifalias"] = record.get("alias", "")
    if changes:
        scratch.link("set", index=index, **changes)
    if current.name != record["name"]:
        scratch.link("set", index=index, ifname=record["name"])


def put_back(scratch: IPRoute, index: int, state: Mapping[str, Any], target: str,
             target_socket: IPRoute) -> None:
    """On a failure path, return the device where it came from, as it was there. Best
    effort, logged: a device left in the temporary namespace would go with it."""
    from pycni import log

    try:
        restore(scratch, index, state)
        scratch.link("set", index=index, net_ns_fd=target)
        if state["up"]:
            target_socket.link("set", index=target_socket.link_lookup(ifname=state["name"])[0],
                               state="up")
    except Exception as exc:  # NetlinkError
        log.get().error("could not return %r from the temporary namespace: %s",
                        state["name"], exc)


def move_out(pod: IPRoute, host: IPRoute, device: link.Link, record: Mapping[str, Any]) -> str:
    """Pod -> temporary namespace (original name, MTU, MAC, alias) -> node, up if it was.
    Returns the name it has on the node: its own, or a free one if a link took that."""
    from pycni import log

    with scratch_namespace(original(device), record["netns"]) as scratch_path, \
            link.socket(scratch_path) as scratch:
        move(pod, device.index, scratch_path, device.name)
        index = only_link(scratch, device.name)
        try:
            restore(scratch, index, record)
            name: str = record["name"]
            for candidate in free_names(record["name"]):
                if link.find(host, candidate) is not None:
                    continue
                if candidate != name:
                    scratch.link("set", index=index, ifname=candidate)
                    name = candidate
                try:
                    scratch.link("set", index=index, net_ns_fd=netns.own_path())
                    break
                except Exception as exc:  # NetlinkError
                    if not link.is_error(exc, errno.EEXIST):  # EEXIST: taken meanwhile
                        raise CNIError(f"failed to move {name!r} to the node: {exc}") from None
            else:
                raise CNIError(f"no free name on the node for {record['name']!r}")
        except BaseException:
            # back into the pod as it was there, so a retried DEL finds it
            put_back(scratch, index, original(device), record["netns"], pod)
            raise
    returned = link.find(host, name)
    assert returned is not None
    if record.get("up"):
        host.link("set", index=returned.index, state="up")
    if name != record["name"]:
        log.get().warning("another link took the name %r on the node: the device (MAC %s) "
                          "is back as %r", record["name"], returned.mac, name)
    return name


def free_names(name: str) -> Iterator[str]:
    """`name`, then `name-1`, `name-2`, ... (shortened to fit 15 characters)."""
    yield name
    for number in range(1, 100):
        suffix = f"-{number}"
        yield name[:15 - len(suffix)] + suffix


def return_device(pod_path: str, record: Mapping[str, Any]) -> str | None:
    """Give the attached device back to the node; None when it is no longer in the pod."""
    with link.socket(pod_path) as pod, link.socket() as host:
        device = locate(pod, record)
        if device is None:
            return None
        return move_out(pod, host, device, {**record, "netns": pod_path})


# --- CHECK ----------------------------------------------------------------------------------

def check_attached(args: CmdArgs, prev: Result, record: Mapping[str, Any] | None,
                   what: str) -> None:
    """CHECK of a moved device: it is in the pod as CNI_IFNAME, it is the device ADD attached
    (`record`'s identity, when there is a record), with the prevResult's MAC, addresses and
    routes. `what` names the device in errors."""
    position, entry = next(((i, e) for i, e in enumerate(prev.interfaces)
                            if e.name == args.ifname and e.sandbox == args.netns), (-1, None))
    if entry is None:
        raise CNIError(f"prevResult has no interface {args.ifname!r} in {args.netns!r}")
    with link.socket(args.netns) as pod:
        inside = link.find(pod, args.ifname)
        if inside is None:
            raise CNIError(f"interface {args.ifname!r} not found in {args.netns!r}")
        if record is not None:
            attached = locate(pod, record)
            if attached is None or attached.index != inside.index:
                raise CNIError(f"{args.ifname!r} in {args.netns!r} is not {what} attached "
                               "by ADD")
        if entry.mac and inside.mac != entry.mac:
            raise CNIError(f"{args.ifname!r} MAC {inside.mac} is not {entry.mac}")
        check_addresses(pod, inside, prev, position, args.ifname, args.netns)


def check_addresses(pod: IPRoute, inside: link.Link, prev: Result, position: int,
                    ifname: str, pod_path: str) -> None:
    """The pod interface holds the addresses `prev` gives it and its routes exist."""
    held = set(link.addresses(pod, inside.index))
    present = link.routes(pod, inside.index)
    for ip in prev.ips:
        if ip.interface in (None, position) and ip.address not in held:
            raise CNIError(f"{ifname!r} lacks address {ip.address}")
    for route in prev.routes:
        if not any(r["dst"] == route.dst and (route.gw is None or r["gw"] == route.gw)
                   for r in present):
            raise CNIError(f"route {route.dst} via {route.gw} missing in {pod_path!r}")
