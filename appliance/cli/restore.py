"""`cairn restore ...`: restore disks and whole VMs; list what a store holds.

With --store, `list`, `disk`, `files` and `vm --to-dir` need only that store: no catalog, no
running appliance, which is what disaster recovery has; they run here and now (also when an
appliance is named by --url: the store is read from this machine). Without it `disk` restores
from the appliance's store as a job, like `vm --as`, `vm --over` and `instant start` (jobs on
the VM, like the API's), and `boot-test` works on the appliance's VMs; these work through --url
too.
"""
from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from appliance.restores.boot_test import DEFAULT_MARKER
from appliance.units import human, parse_size

from .common import DAMAGE_FOUND, JsonOpt, emit_json, err, out, print_table, reports_errors, state, table
from .store import open_store

if TYPE_CHECKING:
    from appliance.api.models import InstantRestoreOut

restore_app = typer.Typer(help="Restore disks and VMs from backups (works from the store alone).",
                          no_args_is_help=True)

StoreOpt = Annotated[str | None, typer.Option("--store", help="Store directory or sftp://user@host[:port]/path "
                                                           "(default: the data dir's). No catalog needed.")]
VerifyOpt = Annotated[bool, typer.Option("--verify", help="Read the target back and compare it with the backup.")]


@restore_app.command("list")
@reports_errors
def restore_list(vm: Annotated[str | None, typer.Option("--vm", help="List this VM's backups.")] = None,
                 store: StoreOpt = None, as_json: bool = JsonOpt) -> None:
    """The VMs in a store, or with --vm the backups of one, newest last. A backup whose manifest cannot
    be read is named on stderr (exit status 3) and the others are listed."""
    listing = open_store(store).scan_backups(vm)
    for damaged in listing.unreadable:
        err.print(f"[red]unreadable[/red] backup {damaged.vm}/{damaged.backup_id}: {damaged.error}", highlight=False)
    _list_backups(vm, listing.manifests, as_json)
    if listing.unreadable:
        raise typer.Exit(DAMAGE_FOUND)


def _list_backups(vm: str | None, manifests: list[Any], as_json: bool) -> None:
    if vm is None:
        vms: dict[str, list[Any]] = {}
        for m in manifests:
            vms.setdefault(m.vm, []).append(m)
        rows = [{"vm": name, "backups": len(ms), "latest": ms[-1].backup_id,
                 "latest_created": ms[-1].created.isoformat()} for name, ms in sorted(vms.items())]
        if as_json:
            emit_json(rows)
            return
        listing = table("vm", "backups", "latest", numbers=("backups",))
        for r in rows:
            listing.add_row(r["vm"], str(r["backups"]), r["latest"])
        print_table(listing)
        return
    if as_json:
        emit_json([{"backup_id": m.backup_id, "vm": m.vm, "created": m.created.isoformat(), "kind": m.kind,
                    "disks": {d.name: d.size for d in m.disks}, "notes": list(m.notes)} for m in manifests])
        return
    listing = table("backup", "kind", "disks", wide=("disks",))
    for m in manifests:
        listing.add_row(m.backup_id, m.kind, ", ".join(f"{d.name} {human(d.size)}" for d in m.disks))
    print_table(listing)


@restore_app.command("disk")
@reports_errors
def restore_disk_cmd(backup: str,
                     to: Annotated[str, typer.Option("--to", help="A new image file, a block device (--force), "
                                            "nbd://host:port/export or nbd+unix:///export?socket=PATH (--force), "
                                            "ssh://user@host:port/path, or a new RBD image "
                                            "rbd:POOL/IMAGE?conf=PATH&id=USER.")],
                     fmt: Annotated[str, typer.Option("--format", help="raw or qcow2 (image files only).")] = "raw",
                     disk: Annotated[str | None, typer.Option("--disk", help="Which disk, if the backup has several.")] = None,
                     store: StoreOpt = None,
                     force: Annotated[bool, typer.Option("--force", help="Replace or overwrite an existing target.")] = False,
                     verify: VerifyOpt = False,
                     ssh_key: Annotated[Path | None, typer.Option("--ssh-key", help="Private key for ssh:// targets.")] = None,
                     known_hosts: Annotated[Path | None, typer.Option("--known-hosts",
                                                                help="known_hosts for ssh:// targets.")] = None,
                     as_json: bool = JsonOpt) -> None:
    """Restore one disk of a backup into a file, a device, an NBD export or a remote file."""
    if store is None:
        from appliance.jobs.params import DiskRestoreParams

        from .follow import run_job

        answer = run_job("restore.disk", DiskRestoreParams(
            backup_id=backup, disk=disk, target=to, format=fmt, force=force, verify=verify,  # type: ignore[arg-type]
            ssh_key=str(ssh_key) if ssh_key else None, known_hosts=str(known_hosts) if known_hosts else None))
    else:
        from restore import restore_disk
        from restore.destinations import parse_destination

        from .progress import byte_progress

        source = open_store(store)
        destination = parse_destination(to, fmt, force, ssh_key=ssh_key, known_hosts=known_hosts)
        with byte_progress() as bars:
            copying = bars.add_task(f"restore {backup}", total=None)
            checking = bars.add_task("verify", total=None, visible=False)
            result = restore_disk(source, backup, disk, destination, progress=_updates(bars, copying), verify=verify,
                                  verify_progress=_updates(bars, checking))
        answer = {"backup_id": backup, "disk": disk, "target": to, "bytes_written": result.bytes_written,
                  "seconds": result.seconds, "verified": result.verified}
    if as_json:
        emit_json(answer)
    else:
        out.print(f"restored {backup} to {to}: {human(answer['bytes_written'])} written in {answer['seconds']:.1f} s"
                  + (", verified" if answer["verified"] else ""), highlight=False)


@restore_app.command("vm")
@reports_errors
def restore_vm_cmd(backup: str,
                   to_dir: Annotated[Path | None, typer.Option("--to-dir", help="Write every disk and vm.json into "
                                                         "this directory (store only).")] = None,
                   to_rbd: Annotated[str | None, typer.Option("--to-rbd", help="Write every disk into an RBD image "
                                                  "<VM>-<disk> in rbd:POOL\\[/NAMESPACE]?conf=PATH&id=USER (store "
                                                  "only; --json shows the definition pointing at them).")] = None,
                   as_name: Annotated[str | None, typer.Option("--as", help="Restore as a new VM of this name.")] = None,
                   storage_pool: Annotated[str | None, typer.Option(
                       "--storage-pool", help="With --as: the new VM's disks go into this storage pool "
                                              "(rbd: RBD images).")] = None,
                   over: Annotated[bool, typer.Option("--over", help="Replace the disks of the VM it came from, "
                                             "all or nothing.")] = False,
                   stop: Annotated[bool, typer.Option("--stop", help="With --over: shut the VM down first.")] = False,
                   fmt: Annotated[str, typer.Option("--format", help="With --to-dir: raw or qcow2.")] = "qcow2",
                   store: StoreOpt = None,
                   force: Annotated[bool, typer.Option("--force", help="With --to-dir or --to-rbd: replace existing "
                                                 "files or images.")] = False,
                   verify: VerifyOpt = False,
                   as_json: bool = JsonOpt) -> None:
    """Restore all disks of a backup plus the VM's definition."""
    if sum([to_dir is not None, to_rbd is not None, as_name is not None, over]) != 1:
        raise ValueError("name exactly one of --to-dir DIR, --to-rbd POOL, --as NAME, --over")
    if to_dir is None and to_rbd is None and store is not None:
        raise ValueError("--store goes with --to-dir or --to-rbd; --as and --over restore from the appliance's store")
    if to_dir is not None or to_rbd is not None:
        from restore.whole_vm import restore_vm_to_directory, restore_vm_to_rbd

        from .progress import byte_progress

        with byte_progress() as bars:
            tasks: dict[str, Any] = {}

            def progress(disk: str, done: int, total: int) -> None:
                if disk not in tasks:
                    tasks[disk] = bars.add_task(f"{backup}/{disk}", total=total)
                bars.update(tasks[disk], completed=done, total=total)
            if to_dir is not None:
                result = vars(restore_vm_to_directory(open_store(store), backup, to_dir, fmt, force=force,
                                                      verify=verify, progress=progress))
            else:
                result = vars(restore_vm_to_rbd(open_store(store), backup, to_rbd or "", force=force, verify=verify,
                                                progress=progress))
    else:
        from appliance.jobs.params import RestoreAsNewParams, RestoreOverParams

        from .follow import run_job

        if as_name is not None:
            result = run_job("restore.new_vm", RestoreAsNewParams(backup_id=backup, name=as_name, verify=verify,
                                                                  storage_pool=storage_pool))
        else:
            vm = state.client.backup(backup).vm_name
            result = run_job("restore.over_vm", RestoreOverParams(backup_id=backup, vm=vm, stop=stop, verify=verify))
    if as_json:
        emit_json(result)
        return
    out.print(f"restored {backup} of VM {result['vm']}: {human(result['bytes_written'])} written in "
              f"{result['seconds']:.1f} s" + (", verified" if result["verified"] else ""), highlight=False)
    for disk, path in result["disks"].items():
        out.print(f"  {disk}  {path}", highlight=False)


def _updates(bars: Any, task: Any):
    def update(done: int, total: int) -> None:
        bars.update(task, completed=done, total=total, visible=True)
    return update


@restore_app.command("files")
@reports_errors
def restore_files_cmd(backup: str,
                      path: Annotated[str, typer.Argument(help="Directory to list, or what to extract.")] = "/",
                      disk: Annotated[str | None, typer.Option("--disk", help="Which disk, if several.")] = None,
                      partition: Annotated[int | None, typer.Option("--partition", min=1,
                                                                    help="Partition number (MBR or GPT).")] = None,
                      extract: Annotated[Path | None, typer.Option("--extract", help="Copy PATH (a file or a "
                                                                   "directory tree) to this new path.")] = None,
                      store: StoreOpt = None, as_json: bool = JsonOpt) -> None:
    """List or extract files of a backed-up filesystem (ext4, xfs, ...) without booting the VM."""
    from restore.files import BackupFilesystem

    with BackupFilesystem(open_store(store), backup, disk, partition) as fs:
        if extract is not None:
            fs.extract(path, extract)
            emit_json({"extracted": path, "to": str(extract)}) if as_json else out.print(f"extracted {path} to {extract}")
            return
        entries = fs.list(path)
    if as_json:
        emit_json([vars(e) for e in entries])
        return
    listing = table("name", "kind", "size", "modified", wide=("name",), numbers=("size",))
    for e in entries:
        name = f"{e.name} -> {e.target}" if e.target else e.name
        listing.add_row(name, e.kind, human(e.size), datetime.fromtimestamp(e.mtime, UTC).strftime("%Y-%m-%d %H:%M"))
    print_table(listing)


instant_app = typer.Typer(help="Instant restore: run a VM from a backup at once while its disks are copied in.",
                          no_args_is_help=True)
restore_app.add_typer(instant_app, name="instant")
SpeedOpt = Annotated[str | None, typer.Option("--speed", help="Copy at most this many bytes/s per disk "
                                              "(e.g. 50M; 0: unlimited).")]
WaitOpt = Annotated[bool, typer.Option("--wait", help="Show the copy's progress until it is done.")]


@instant_app.command("start")
@reports_errors
def instant_start(backup: str, name: Annotated[str, typer.Argument(help="The new VM's name.")],
                  speed: SpeedOpt = None, wait: WaitOpt = False, as_json: bool = JsonOpt,
                  storage_pool: Annotated[str | None, typer.Option(
                      "--storage-pool", help="Copy the disks into this storage pool (rbd: into RBD images).")] = None,
                  ) -> None:
    """Define VM NAME from the backup, start it on the backup, copy its disks in the background.

    A job on the new VM, done once it runs; --wait then follows the copy."""
    from appliance.api.models import InstantRestoreOut
    from appliance.jobs.params import InstantRestoreParams

    from .follow import run_job

    started = run_job("restore.instant", InstantRestoreParams(backup_id=backup, name=name,
                                                              speed=_speed(speed) if speed else 0,
                                                              storage_pool=storage_pool))
    _instant_report(name, InstantRestoreOut.model_validate(started), wait, as_json)


@instant_app.command("status")
@reports_errors
def instant_status(name: str, wait: WaitOpt = False, as_json: bool = JsonOpt) -> None:
    """How far the copy is; finishes an instant restore whose copy is complete."""
    _instant_report(name, state.client.instant_restore(name), wait, as_json)


@instant_app.command("resume")
@reports_errors
def instant_resume(name: str, speed: SpeedOpt = None, wait: WaitOpt = False, as_json: bool = JsonOpt) -> None:
    """Go on after an interruption: restart the backup's exports, the VM and the copy as needed."""
    _instant_report(name, state.client.instant_resume(name, _speed(speed) if speed else None), wait, as_json)


@instant_app.command("speed")
@reports_errors
def instant_speed(name: str, speed: Annotated[str, typer.Argument(help="Bytes/s per disk, e.g. 50M; 0: unlimited.")],
                  as_json: bool = JsonOpt) -> None:
    """Change how fast the copy goes."""
    _instant_report(name, state.client.instant_speed(name, _speed(speed)), False, as_json)


def _speed(text: str) -> int:
    return 0 if text.strip() == "0" else parse_size(text)


def _instant_report(name: str, result: InstantRestoreOut, wait: bool, as_json: bool) -> None:
    if wait:
        from .progress import byte_progress

        with byte_progress() as bars:
            tasks: dict[str, Any] = {}
            while True:
                for disk, (done, total) in result.progress.items():
                    if disk not in tasks:
                        tasks[disk] = bars.add_task(f"{name}/{disk}", total=total)
                    bars.update(tasks[disk], completed=done, total=total)
                if result.status != "hydrating":
                    break
                time.sleep(1)
                result = state.client.instant_restore(name)
    if as_json:
        emit_json(result)
        return
    out.print(f"VM {name}: instant restore of {result.backup_id} is {result.status}"
              + (f": {result.error}" if result.error else ""), highlight=False)
    for disk, (done, total) in result.progress.items():
        out.print(f"  {disk}  {human(done)} of {human(total)} copied", highlight=False)


@restore_app.command("boot-test")
@reports_errors
def boot_test_cmd(backup: str,
                  timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for the marker.")] = 120.0,
                  marker: Annotated[str, typer.Option("--marker", help="Text the guest prints on its serial "
                                                      "console once it is up.")] = DEFAULT_MARKER,
                  as_json: bool = JsonOpt) -> None:
    """Boot the backup in an isolated, throw-away VM and check it comes up; the result is recorded.

    A disk the firmware boots from (no kernel of its own) must have a boot signature in its
    first sector: one without fails at once, not after --timeout."""
    result = state.client.boot_test(backup, timeout, marker)
    if as_json:
        emit_json(result)
    else:
        out.print(f"boot test of {backup}: {'passed' if result.passed else 'FAILED'} in {result.seconds:.1f} s: "
                  f"{result.reason}", highlight=False)
    if not result.passed:
        raise typer.Exit(1)
