"""`cairn snapshot ...`: create, list (as a tree), revert, delete and check a VM's snapshots.

Create, revert and delete run as jobs on the VM, like the API's: never beside its backup."""
from __future__ import annotations

from datetime import datetime
from typing import Any

import typer
from rich.markup import escape
from rich.tree import Tree

from appliance.units import human, parse_size

from .common import JsonOpt, emit_json, out, reports_errors, state

snapshot_app = typer.Typer(help="Snapshot trees of VM disks: live or offline, revert, delete by commit or pull.",
                           no_args_is_help=True)


@snapshot_app.command("create")
@reports_errors
def snapshot_create(vm: str, name: str | None = typer.Option(None, help="A name (default: the snapshot id)."),
                    auto: bool = typer.Option(False, "--auto", help="An automatic snapshot: at the chain limit the "
                                                                    "oldest automatic one rotates out."),
                    memory: bool = typer.Option(False, "--memory", help="Also save the running guest's memory, so "
                                                                         "a revert resumes it where it was."),
                    as_json: bool = JsonOpt) -> None:
    """Snapshot every disk of a VM at one instant (running or stopped)."""
    from appliance.jobs.params import SnapshotCreateParams

    from .follow import run_job

    snap = run_job("snapshot.create", SnapshotCreateParams(vm=vm, name=name, automatic=auto, memory=memory))
    emit_json(snap) if as_json else out.print(f"snapshot {snap['name']} ({snap['id']}) of {vm} taken", highlight=False)


@snapshot_app.command("tree")
@snapshot_app.command("list")
@reports_errors
def snapshot_list(vm: str, as_json: bool = JsonOpt) -> None:
    """Show a VM's snapshots as a tree, with the current position and layer sizes."""
    tree = state.client.snapshot_tree(vm)
    if as_json:
        emit_json(tree)
        return
    snapshots = tree["snapshots"]
    root = Tree(f"[bold]{escape(vm)}[/bold]  {len(snapshots)} snapshots, {human(tree['total_size'])} in layers")
    branches: dict[str | None, Any] = {None: root}
    by_parent: dict[str | None, list[dict[str, Any]]] = {}
    for snap in snapshots:   # oldest first
        by_parent.setdefault(snap["parent"], []).append(snap)

    def grow(parent_id: str | None) -> None:
        for snap in by_parent.get(parent_id, []):
            kind = ("auto" if snap["automatic"] else "manual") + (" +memory" if snap["memory"] else "")
            branches[snap["id"]] = branches[parent_id].add(
                f"{escape(snap['name'])}  [dim]{snap['id']}  {datetime.fromisoformat(snap['created']):%Y-%m-%d %H:%M:%S}"
                f"  {kind}  {human(snap['size'])}[/dim]")
            grow(snap["id"])
    grow(None)
    current = tree["current"]
    active = sum(layer["size"] for layer in current["disks"].values())
    branches[current["parent"]].add(f"[green]● now[/green]  [dim]{human(active)} written since[/dim]")
    out.print(root)
    if tree["interrupted"]:
        out.print(f"[yellow]interrupted:[/yellow] the {escape(tree['interrupted'])}; the next snapshot command or "
                  f"`cairn snapshot check {escape(vm)}` finishes or rolls it back", highlight=False)


@snapshot_app.command("revert")
@reports_errors
def snapshot_revert(vm: str, snapshot: str,
                    memory: bool | None = typer.Option(None, "--memory/--disk-only",
                                                       help="Resume the guest from the snapshot's memory state "
                                                            "(default when it has one; the VM is stopped and "
                                                            "started from it), or revert the disks only (VM "
                                                            "stopped)."),
                    as_json: bool = JsonOpt) -> None:
    """Go back to a snapshot. What was written since the last snapshot is dropped; the other
    snapshots stay, so this starts a new branch."""
    from appliance.jobs.params import SnapshotRevertParams

    from .follow import run_job

    snap = run_job("snapshot.revert", SnapshotRevertParams(vm=vm, snapshot=snapshot, memory=memory))
    if as_json:
        emit_json(snap)
        return
    resumed = " and resumed from its memory state" if snap["resumed"] else ""
    out.print(f"{vm} reverted to {snap['name']} ({snap['id']}){resumed}", highlight=False)


@snapshot_app.command("delete")
@reports_errors
def snapshot_delete(vm: str, snapshot: str,
                    via: str | None = typer.Option(None, help="commit (merge a child down into it) or pull "
                                                                 "(merge it up into its children); default: what "
                                                                 "moves less data and fits the tree's shape."),
                    rate_limit: str | None = typer.Option(
                        None, "--rate", "--rate-limit",
                        help="Bytes per second for the merge, e.g. 50M: block-commit/block-stream `speed` on a "
                             "running VM, `qemu-img commit -r` on a stopped one (an offline pull, qemu-img "
                             "rebase, has no rate limit)."),
                    as_json: bool = JsonOpt) -> None:
    """Delete a snapshot: its layers are merged so every other point keeps its content."""
    from appliance.jobs.params import SnapshotDeleteParams

    from .follow import run_job

    if via not in (None, "commit", "pull"):
        raise ValueError(f"--via must be commit or pull, not {via}")
    speed = parse_size(rate_limit) if rate_limit else None
    params = SnapshotDeleteParams(vm=vm, snapshot=snapshot, via=via, rate_limit=speed)  # type: ignore[arg-type]
    result = run_job("snapshot.delete", params)
    if as_json:
        emit_json(result)
        return
    for m in result["merges"]:
        out.print(f"{m['disk']}: {m['via']}, {human(m['moved_bytes'])} moved", highlight=False)
    out.print(f"deleted snapshot {snapshot} of {vm}", highlight=False)


@snapshot_app.command("check")
@reports_errors
def snapshot_check(vm: str, repair: bool = typer.Option(False, "--repair", help="Adopt what QEMU or the image "
                                                                                "files hold as the truth."),
                   as_json: bool = JsonOpt) -> None:
    """Compare the snapshot tree with what QEMU has open (running) or the image files (stopped)."""
    result = state.client.check_snapshots(vm, repair)
    if as_json:
        emit_json(result)
    else:
        for note in result["recovered"]:
            out.print(f"recovered: {note}", highlight=False)
        for problem in result["problems"]:
            out.print(f"[red]mismatch:[/red] {escape(problem)}", highlight=False)
        for note in result["repaired"]:
            out.print(f"repaired: {note}", highlight=False)
        if not result["problems"]:
            out.print(f"{vm}: the snapshot tree matches the disks", highlight=False)
    if result["problems"] and not repair:
        raise typer.Exit(1)
