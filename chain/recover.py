"""Finish or roll back an operation that an interruption (a QEMU or appliance crash, a lost
connection) left half-done, from its intent record (see intent.py for the steps).

Runs before anything else touches the VM's tree: a `started` create or revert is rolled back
(its new files go), a `recorded` one is finished, a delete is always finished (its merges have
already changed the snapshot's layers, so only going forward gives every other point its
content back). Jobs the interrupted process left in QEMU are cancelled first: the merge steps
start over on the state they left, which is safe (ops.py).
"""
from __future__ import annotations

from .intent import Intent, Journal
from .live import LiveChains
from .ops import finish_delete, finish_recorded, remove_files
from .tree import VMTree


async def recover(tree: VMTree, live: LiveChains | None, journal: Journal, intent: Intent,
                  paused_by_owner: bool) -> list[str]:
    """Returns what was done, one note per step. `paused_by_owner`: the VM's owner paused it,
    so it stays paused."""
    notes = []
    if live is not None and (cancelled := await live.cancel_leftover_jobs()):
        notes.append(f"cancelled the block jobs {', '.join(cancelled)} left by the interrupted {intent.op}")
    if intent.op == "delete":
        await finish_delete(tree, live, journal, intent)
        notes.append(f"finished deleting snapshot {intent.snapshot}")
    elif intent.phase == "started":
        if live is not None:
            await live.close_overlays(intent.layers)
        else:
            remove_files([layer.file for layer in intent.layers])
        journal.record(tree, None)
        notes.append(f"rolled back the {intent.op} of snapshot {intent.snapshot}: removed its new layers")
    else:
        if intent.op == "create" and live is not None:
            graph = await live.graph()
            # The switch is one transaction: either every disk made it or none did.
            if any(graph.root(layer.disk).file != layer.file for layer in intent.layers):
                await live.switch(intent.layers)
        finish_recorded(tree, journal, intent)
        notes.append(f"finished the {intent.what}")
    if live is not None and await live.resume_if_paused_by_us(paused_by_owner):
        notes.append("resumed the guest, which the interrupted commit had paused for its pivot")
    return notes
