"""What a running QEMU has open: each disk's root node and its backing chain, node names by
file, and the dirty bitmaps on each node. Node names are looked up every time because they
are not stable: after a restart only the top layer has Cairn's name (`vda`), the layers under
it get QEMU's automatic ones (`#blockNNN`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vmm import QMPSession, disk_of_qdev

from .errors import ChainError

FORMAT_DRIVERS = ("qcow2", "raw")


@dataclass(frozen=True)
class BlockNode:
    name: str
    driver: str
    file: str
    virtual_size: int
    backing_file: str | None
    protocol_node: str | None          # the `file` node under it
    bitmaps: tuple[dict[str, Any], ...] = field(default=())

    def recording_bitmaps(self) -> list[dict[str, Any]]:
        """The persistent bitmaps that track writes now: those must follow the active layer."""
        return [b for b in self.bitmaps if b.get("recording") and b.get("persistent")
                and not b.get("inconsistent")]

    def owned_names(self) -> list[str]:
        """Node names created by -blockdev or blockdev-add: those stay until blockdev-del,
        even out of the graph (names starting with '#' are QEMU's and go by themselves)."""
        return [n for n in (self.name, self.protocol_node) if n and not n.startswith("#")]


@dataclass(frozen=True)
class BlockGraph:
    roots: dict[str, str]               # disk -> name of its current root node
    nodes: dict[str, BlockNode]         # format nodes by name

    def root(self, disk: str) -> BlockNode:
        if disk not in self.roots:
            raise ChainError(f"the running VM has no disk {disk}")
        if self.roots[disk] not in self.nodes:
            raise ChainError(f"disk {disk}'s root node {self.roots[disk]} is no image node Cairn knows")
        return self.nodes[self.roots[disk]]

    def by_file(self, file: str) -> BlockNode | None:
        """The node of `file` in a disk's chain (a chain opens each file once)."""
        in_chains = {n.file: n for disk in self.roots for n in self.chain(disk)}
        return in_chains.get(file)

    def disk_of(self, node: BlockNode) -> str:
        for disk in self.roots:
            if node in self.chain(disk):
                return disk
        raise ChainError(f"node {node.name} ({node.file}) is in no disk's chain")

    def chain(self, disk: str) -> list[BlockNode]:
        """The disk's root and the layers under it, top first."""
        by_file: dict[str, list[BlockNode]] = {}
        for node in self.nodes.values():
            by_file.setdefault(node.file, []).append(node)
        chain = [self.root(disk)]
        while chain[-1].backing_file is not None:
            below = [n for n in by_file.get(chain[-1].backing_file, []) if n not in chain]
            if not below:
                break
            chain.append(below[0])
        return chain


async def read_graph(qmp: QMPSession) -> BlockGraph:
    roots = {}
    for entry in await qmp.execute("query-block"):
        disk = disk_of_qdev(entry.get("qdev", ""))
        # A read-only medium (the CD-ROM) is no disk of the snapshot tree.
        if disk and entry.get("inserted") and not entry["inserted"]["ro"]:
            roots[disk] = entry["inserted"]["node-name"]
    # flat: without it each node's answer nests its whole backing chain, which makes the reply
    # grow with the square of the chain's length (seconds of JSON at 50 layers).
    entries = await qmp.execute("query-named-block-nodes", {"flat": True})
    protocol = {e["file"]: e["node-name"] for e in entries if e["drv"] == "file"}
    nodes = {}
    for e in entries:
        if e["drv"] in FORMAT_DRIVERS:
            backing = e["image"].get("full-backing-filename")
            nodes[e["node-name"]] = BlockNode(e["node-name"], e["drv"], e["file"], e["image"]["virtual-size"], backing,
                                              protocol.get(e["file"]), tuple(e.get("dirty-bitmaps", [])))
    # A filter may sit on a disk's format node: the copy-before-write of a backup's export, left
    # there by a backup that was killed until the next one removes it. It bears the file name of
    # the node it filters, which is the disk's root as far as its chain goes.
    filters = {e["node-name"]: e["file"] for e in entries if e["drv"] not in (*FORMAT_DRIVERS, "file")}
    for disk, name in roots.items():
        if name in filters:
            roots[disk] = next((n.name for n in nodes.values() if n.file == filters[name]), name)
    return BlockGraph(roots, nodes)
