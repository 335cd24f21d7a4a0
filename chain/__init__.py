"""Each disk's qcow2 chain: the VM's snapshot tree (a pure model), the operations that change
the image files through QMP or qemu-img, intent records that make them crash-safe, and
reconciling the model with what is really there. It imports vmm only."""
from .errors import ChainError, ChainMismatchError, TreeError, UnknownSnapshotError
from .inspect import Layer, backing_chain
from .intent import Intent, Journal, NewLayer
from .live import LiveChains
from .ops import delete_snapshot, revert, take_snapshot
from .reconcile import live_chains, offline_chains, problems, repair
from .recover import recover
from .tree import DEFAULT_CHAIN_LIMIT, Merge, Node, Snapshot, Via, VMTree

__all__ = [
           "DEFAULT_CHAIN_LIMIT",
           "ChainError",
           "ChainMismatchError",
           "Intent",
           "Journal",
           "Layer",
           "LiveChains",
           "Merge",
           "NewLayer",
           "Node",
           "Snapshot",
           "TreeError",
           "UnknownSnapshotError",
           "VMTree",
           "Via",
           "backing_chain",
           "delete_snapshot",
           "live_chains",
           "offline_chains",
           "problems",
           "recover",
           "repair",
           "revert",
           "take_snapshot",
]
