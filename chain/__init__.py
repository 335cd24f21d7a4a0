"""Each disk's qcow2 chain: the VM's snapshot tree (a pure model), the operations that change
the image files through QMP or qemu-img, and reconciling the model with what is really there.
It imports vmm only."""
from .errors import ChainError, ChainMismatchError, TreeError, UnknownSnapshotError
from .inspect import Layer, backing_chain
from .live import LiveChains
from .ops import delete_snapshot, revert, take_snapshot
from .reconcile import live_chains, offline_chains, problems, repair
from .tree import DEFAULT_CHAIN_LIMIT, Merge, Node, Snapshot, Via, VMTree

__all__ = ["ChainError", "ChainMismatchError", "TreeError", "UnknownSnapshotError",
           "Layer", "backing_chain",
           "LiveChains",
           "delete_snapshot", "revert", "take_snapshot",
           "live_chains", "offline_chains", "problems", "repair",
           "DEFAULT_CHAIN_LIMIT", "Merge", "Node", "Snapshot", "Via", "VMTree"]
