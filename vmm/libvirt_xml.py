"""Reading and rewriting libvirt domain XML: the disks as Cairn sees them, and a domain's
definition made fit to be defined again elsewhere (restores) or run by Cairn (imports).

Only the parts Cairn needs are interpreted; everything else in a definition is kept as it is,
so a restored domain has the same devices, CPU model, firmware settings... as the one backed up.

A <disk>'s source depends on its type: `file` and `block` name a path, `volume` a storage
pool's volume, `network` a protocol with a host (nbd, rbd, iscsi, gluster, http...), `dir` a
directory QEMU turns into a FAT image. libvirt 10.10 and later describe a qcow2 image's
external data file as <source><dataStore>; libvirt 9.0 (Debian 12) does not know it, and such
an image's data file is then opened by QEMU itself, unlabelled.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Collection

from .errors import DomainXMLError
from .hosts import HostDisk


def parse(xml: str) -> ET.Element:
    return ET.fromstring(xml)


def child(parent: ET.Element, path: str) -> ET.Element:
    """`parent`'s element at `path`, one libvirt always writes (a domain's <os>, a disk's <target>)."""
    found = parent.find(path)
    if found is None:
        raise DomainXMLError(f"the domain definition has no {path} in its <{parent.tag}>")
    return found


def attribute(element: ET.Element, name: str) -> str:
    """An attribute libvirt always writes (a disk target's dev)."""
    value = element.get(name)
    if value is None:
        raise DomainXMLError(f"the domain definition has a <{element.tag}> without {name}")
    return value


def to_string(root: ET.Element) -> str:
    return ET.tostring(root, encoding="unicode")


def source_of(kind: str, source: ET.Element | None) -> str | None:
    """The path (or, for a network disk, a URI-like name) a <source> element points at."""
    if source is None:
        return None
    if kind == "file":
        return source.get("file")
    if kind == "block":
        return source.get("dev")
    if kind == "dir":
        return source.get("dir")
    if kind == "volume":
        pool, volume = source.get("pool"), source.get("volume")
        return f"{pool}/{volume}" if pool and volume else None
    if kind == "network":
        protocol, name = source.get("protocol", "network"), source.get("name", "")
        host = source.find("host")
        if host is None:
            return f"{protocol}:{name}"
        if host.get("transport") == "unix":
            return f"{protocol}+unix:///{name}?socket={host.get('socket')}"
        port = f":{host.get('port')}" if host.get("port") else ""
        return f"{protocol}://{host.get('name', '')}{port}/{name}"
    return source.get("file") or source.get("dev")


def _backing(element: ET.Element) -> tuple[str, ...]:
    chain = []
    store = element.find("backingStore")
    while store is not None and (kind := store.get("type")):
        path = source_of(kind, store.find("source"))
        if path:
            chain.append(path)
        store = store.find("backingStore")
    return tuple(chain)


def disk_of(element: ET.Element) -> HostDisk:
    kind = element.get("type", "file")
    source = element.find("source")
    driver = element.find("driver")
    data_store = source.find("dataStore") if source is not None else None
    return HostDisk(
        target=attribute(child(element, "target"), "dev"),
        path=source_of(kind, source),
        format=driver.get("type", "raw") if driver is not None else "raw",
        kind=kind,
        device=element.get("device", "disk"),
        readonly=element.find("readonly") is not None,
        shareable=element.find("shareable") is not None,
        data_file=(source_of(data_store.get("type", "file"), data_store.find("source"))
                   if data_store is not None else None),
        backing=_backing(element),
    )


def domain_disks(xml: str) -> list[HostDisk]:
    """Every block device of the domain, CD-ROMs and floppies included, in the XML's order."""
    return [disk_of(d) for d in parse(xml).iterfind("./devices/disk")]


# Character devices whose file or socket belongs to one domain: a copy must not share them.
_CHARDEVS = ("serial", "console", "parallel", "channel")


def with_disks(xml: str, disks: dict[str, tuple[str, str]], drop: Collection[str] = ()) -> ET.Element:
    """The definition with each disk of `disks` (target -> (image file, format)) opening that
    file instead, as a plain file disk without backing chain or data file, and the disks of
    `drop` removed."""
    root = parse(xml)
    devices = child(root, "devices")
    for element in list(devices.iterfind("disk")):
        target = attribute(child(element, "target"), "dev")
        if target in drop:
            devices.remove(element)
            continue
        if target not in disks:
            continue
        path, fmt = disks[target]
        element.set("type", "file")
        for old in element.findall("source") + element.findall("backingStore"):
            element.remove(old)
        driver = element.find("driver")
        if driver is None:
            driver = ET.SubElement(element, "driver", name="qemu")
        driver.set("type", fmt)
        source = ET.Element("source", file=path)
        element.insert(list(element).index(driver) + 1, source)
    return root


def as_new_domain(root: ET.Element, name: str, macs: list[str], log_dir: str) -> ET.Element:
    """A definition of another domain like `root`: its own name, no UUID (libvirt makes one),
    the given MACs in the order of its interfaces, its file-backed consoles writing into
    `log_dir`, sockets chosen by libvirt, and a fresh copy of the firmware's variables."""
    child(root, "name").text = name
    for tag in ("uuid", "title"):
        for element in root.findall(tag):
            root.remove(element)
    interfaces = root.findall("./devices/interface")
    if len(macs) != len(interfaces):
        raise ValueError(f"{len(interfaces)} interfaces need as many MACs, not {len(macs)}")
    for interface, mac in zip(interfaces, macs, strict=True):
        for old in interface.findall("mac"):
            interface.remove(old)
        interface.insert(0, ET.Element("mac", address=mac))
    logs: dict[str, str] = {}   # old file -> new: a console that is the serial port shares its file
    for index, device in enumerate(e for tag in _CHARDEVS for e in root.iterfind(f"./devices/{tag}")):
        source = device.find("source")
        if source is None:
            continue
        if device.get("type") == "file" and (path := source.get("path")):
            new = logs.setdefault(path, f"{log_dir}/{name}-{device.tag}{index}.log")
            source.set("path", new)
        elif device.get("type") == "unix" and source.get("mode") == "bind":
            source.attrib.pop("path", None)   # libvirt picks one in the new domain's directory
    for os_ in root.findall("os"):
        for nvram in os_.findall("nvram"):
            os_.remove(nvram)   # libvirt copies its template to <name>_VARS.fd
    return root


def disk_files(xml: str) -> dict[str, str]:
    """target -> the image file of every file disk holding data."""
    return {d.target: d.path for d in domain_disks(xml) if d.holds_data and d.kind == "file" and d.path}
