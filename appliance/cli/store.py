"""`cairn store ...`: create, inspect, maintain, repair and upgrade a store.

Every command works from the store alone: a directory or an
sftp://user@host[:port]/path URL (--store, else $CAIRN_STORE, else the data
dir's). An encrypted store's passphrase comes from $CAIRN_STORE_PASSPHRASE,
else a prompt. On the appliance's store (no --store) of a data dir with a
catalog, or of an appliance named by --url, stats answer from the appliance and
verify, gc and prune run as jobs, like the API's and after any job on the same
store (or VM, for prune); otherwise they run here, and verify still records
what it found in the data dir's catalog when there is one, prune the backups it
removed. Through --url, the other commands need --store: they work here.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import TaskID
from sqlalchemy.orm import Session, sessionmaker

from appliance.backups.protection import record_protection
from appliance.backups.records import record_pruned, record_verification
from appliance.catalog.engine import open_catalog
from appliance.jobs.kinds.sync import run_sync
from appliance.jobs.params import SyncParams
from appliance.settings import Settings, StoreAccess
from appliance.units import human, parse_size
from dedup import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_PACK_SIZE,
    DEFAULT_REPACK_THRESHOLD,
    DEFAULT_ZSTD_LEVEL,
    KEY_FILE,
    PassphraseRequiredError,
    RetentionPolicy,
    Store,
    collect_garbage,
    is_remote,
    lock_backup,
    open_backend,
    prune,
    rebuild_index,
    store_stats,
    upgrade_store,
    verify_store,
)

from .common import (
    DAMAGE_FOUND,
    CliError,
    JsonOpt,
    command_path,
    emit_json,
    out,
    print_table,
    reports_errors,
    state,
    table,
)
from .progress import byte_progress, count_progress

store_app = typer.Typer(help="Create, check, clean up, repair and upgrade the store.", no_args_is_help=True)
StoreOpt = typer.Option(None, "--store", help="Store directory or sftp://user@host[:port]/path "
                                              "(default: $CAIRN_STORE, else the data dir's).")
KeyFileOpt = typer.Option(None, "--key-file", help="With --encrypt: write the sealed key here instead of into "
                                                  f"the store's {KEY_FILE}.")

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """'24h', '30m', '7d', '90s', '0' -> timedelta."""
    m = _DURATION.fullmatch(text.lower())
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 24h, 30m, 7d)")
    return timedelta(seconds=float(m.group(1)) * _DURATION_UNITS[m.group(2)])


def store_access(location: str | None) -> StoreAccess:
    """How to open the store this machine works on: --store, else $CAIRN_STORE, else the data
    dir's. Through --url only a store named by --store is: the appliance's own is reached
    through its API (stats, verify, gc, prune)."""
    if state.url is not None:
        if location is None:
            raise CliError(f"`{command_path()}` reads a store from this machine: name it with --store (a directory "
                           f"or sftp:// URL); the store of {state.url} is reached through its API by `cairn store "
                           "stats`, `verify`, `gc`, `prune` and by `cairn backup list`")
        state.here(f"--store {location}")
    return Settings.resolve(state.data_dir).store_access(location)


def open_store(location: str | None) -> Store:
    """The store, unlocked with $CAIRN_STORE_PASSPHRASE or, at a terminal, a passphrase typed in."""
    access = store_access(location)
    try:
        return access.open()
    except PassphraseRequiredError as e:
        if not sys.stdin.isatty():
            raise PassphraseRequiredError(f"{e}: set CAIRN_STORE_PASSPHRASE or run at a terminal") from None
    return access.open(typer.prompt(f"passphrase of store {access.location}", hide_input=True, err=True))


def new_passphrase() -> str:
    given = os.environ.get("CAIRN_STORE_PASSPHRASE")
    if given:
        return given
    if not sys.stdin.isatty():
        raise ValueError("--encrypt needs a passphrase: set CAIRN_STORE_PASSPHRASE or run at a terminal")
    return typer.prompt("passphrase for the new store key", hide_input=True, confirmation_prompt=True, err=True)


def existing_catalog() -> sessionmaker[Session] | None:
    """The data dir's catalog if it has one; store commands never create it (nor, working with an
    appliance named by --url, touch this machine's)."""
    if state.url is not None:
        return None
    settings = Settings.resolve(state.data_dir)
    if settings.catalog_url.startswith("sqlite:///") and not (settings.data_dir / "catalog.db").exists():
        return None
    return open_catalog(settings.catalog_url)


def as_result(report: Any) -> dict[str, Any]:
    """A report made here in the shape a job's result has it (JSON), so one rendering serves both."""
    from pydantic import TypeAdapter

    return TypeAdapter(type(report)).dump_python(report, mode="json")


def on_appliance(store: str | None) -> bool:
    """Whether the command works on an appliance's store, through `state.client` (and its long
    work runs as a job): no --store, and an appliance named by --url or a data dir with a catalog."""
    return store is None and (state.url is not None or existing_catalog() is not None)


@store_app.command("init")
@reports_errors
def init(store: str | None = typer.Option(None, "--store", "--path",
                                             help="Directory or sftp:// URL of the new store."),
         block_size: str = typer.Option(f"{DEFAULT_BLOCK_SIZE >> 20}M", "--block-size",
                                        help="Power of two from 16K to 16M: full reads cut disks at it."),
         pack_size: str = typer.Option(f"{DEFAULT_PACK_SIZE >> 20}M", "--pack-size",
                                       help="Size a pack of blocks grows to, from 256K to 1G."),
         zstd_level: int = typer.Option(DEFAULT_ZSTD_LEVEL, "--zstd-level", help="1 (fast) to 22 (small)."),
         encrypt: bool = typer.Option(False, "--encrypt", help="Encrypt chunks, indexes and manifests "
                                      "(passphrase from CAIRN_STORE_PASSPHRASE or a prompt)."),
         key_file: Path | None = KeyFileOpt,
         as_json: bool = JsonOpt) -> None:
    """Create a store in an empty or missing directory, local or remote."""
    if key_file is not None and not encrypt:
        raise ValueError("--key-file goes with --encrypt")
    access = store_access(store)
    passphrase = new_passphrase() if encrypt else None
    created = Store.init(open_backend(access.location, access.ssh), block_size=parse_size(block_size),
                         pack_size=parse_size(pack_size), zstd_level=zstd_level, passphrase=passphrase,
                         key_file=key_file)
    with created:
        if as_json:
            emit_json({"location": created.location, **asdict(created.config)})
            return
        out.print(f"created store {created.location}: {human(created.config.block_size)} blocks in "
                  f"{human(created.config.pack_size)} packs, zstd level {zstd_level}", highlight=False)
        if encrypt:
            where = key_file or f"{created.location}/{KEY_FILE}"
            out.print(f"encrypted with key {created.config.key_fingerprint}, sealed by your passphrase in {where}. "
                      "Without the passphrase (and that file) the backups cannot be restored: keep copies of both.",
                      highlight=False)


@store_app.command("stats")
@reports_errors
def stats(store: str | None = StoreOpt, as_json: bool = JsonOpt) -> None:
    """Sizes, dedup and compression ratios, and what each backup alone holds."""
    s = state.client.store_stats() if on_appliance(store) else store_stats(open_store(store))
    if as_json:
        emit_json(s)
        return
    for name, value in (
            ("backups", f"{s.backups} ({s.unreadable_backups} unreadable)"),
            ("logical", f"{human(s.logical_bytes)} ({human(s.zero_bytes)} of zeros)"),
            ("blocks", f"{s.chunks}: {human(s.unique_bytes)} unique, {human(s.stored_bytes)} stored"),
            ("maps", human(s.metadata_bytes)),
            ("packs", f"{s.packs} ({human(s.pack_bytes)})"),
            ("saved", f"dedup {s.dedup_ratio:.2f}x, compression {s.compression_ratio:.2f}x"),
            ("unused", f"{s.unreferenced_chunks} blocks ({human(s.unreferenced_bytes)}), freed by `cairn store gc`"),
            ("missing", f"{s.missing_chunks} blocks")):
        out.print(f"{name:<8} {value}", highlight=False)
    out.print("what each backup alone holds (blocks no other backup has):")
    listing = table("backup", "vm", "logical", "blocks", "stored", numbers=("logical", "blocks", "stored"))
    for u in s.per_backup:
        listing.add_row(u.backup_id, u.vm, human(u.logical_bytes), str(u.unique_chunks), human(u.unique_stored_bytes))
    print_table(listing)


@store_app.command("verify")
@reports_errors
def verify(store: str | None = StoreOpt,
           sample: float = typer.Option(100.0, "--sample", help="Percent of the blocks to check, chosen at random."),
           as_json: bool = JsonOpt) -> None:
    if on_appliance(store):
        from appliance.jobs.params import VerifyParams

        from .follow import run_job

        report = run_job("store.verify", VerifyParams(sample_percent=sample))
    else:
        source = open_store(store)
        with byte_progress() as bars:
            task = bars.add_task("verify", total=None)
            found = verify_store(source, sample_percent=sample,
                                 progress=lambda done, total: bars.update(task, completed=done, total=total))
        catalog = existing_catalog()
        if catalog is not None:
            with catalog.begin() as session:
                record_verification(session, found.damaged_backups(),
                                    list(found.backups) if found.sample_percent == 100 else None)
        report = {**as_result(found), "ok": found.ok, "damaged_backups": found.damaged_backups()}
    if as_json:
        emit_json(report)
    else:
        for problem in report["index_problems"]:
            out.print(f"[yellow]index[/yellow] {escape(problem)}", highlight=False)
        if report["index_rebuilt"]:
            out.print("the block index was rebuilt from the packs")
        out.print(f"checked {report['chunks_checked']} of {report['chunks_referenced']} blocks "
                  f"({human(report['bytes_checked'])}) of {len(report['backups'])} backups in "
                  f"{report['seconds']:.1f} s", highlight=False)
        for bad in report["bad_chunks"]:
            users = ", ".join(f"{u['vm']}/{u['backup_id']} {u['disk']}@{u['offset']}+{u['length']}"
                              for u in bad["used_by"])
            out.print(f"[red]{escape(bad['problem'])}[/red] block {bad['chunk_id']}: used by {escape(users)}; "
                      f"{escape(bad['detail'])}", highlight=False)
        for u in report["unreadable"]:
            out.print(f"[red]unreadable[/red] {u['vm']}/{u['backup_id']}: {escape(u['error'])}", highlight=False)
        out.print("store is sound" if report["ok"] else f"{len(report['damaged_backups'])} backup(s) damaged")
    if not report["ok"]:
        raise typer.Exit(DAMAGE_FOUND)


@store_app.command("gc")
@reports_errors
def gc(store: str | None = StoreOpt,
       grace: str = typer.Option("24h", "--grace", help="Leave packs touched more recently than this alone."),
       dry_run: bool = typer.Option(False, "--dry-run", help="Report what would be freed; change nothing."),
       repack: float = typer.Option(DEFAULT_REPACK_THRESHOLD * 100, "--repack",
                                    help="Repack a pack once this percentage of it is unreferenced."),
       as_json: bool = JsonOpt) -> None:
    """Reclaim the blocks no backup references (removing or repacking packs), safely beside running backups."""
    grace_period = parse_duration(grace)
    if on_appliance(store):
        from appliance.jobs.params import GcParams

        from .follow import run_job

        report = run_job("store.gc", GcParams(grace_seconds=grace_period.total_seconds(), dry_run=dry_run,
                                              repack_percent=repack))
    else:
        source = open_store(store)
        with count_progress() as bars:
            tasks: dict[str, TaskID] = {}

            def progress(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = bars.add_task(phase, total=total)
                bars.update(tasks[phase], completed=done, total=total)
            report = as_result(collect_garbage(source, grace=grace_period, dry_run=dry_run, progress=progress,
                                               repack_threshold=repack / 100))
    if as_json:
        emit_json(report)
        return
    verb = "would free" if dry_run else "freed"
    out.print(f"{verb} {human(report['bytes_removed'])}: {report['chunks_removed']} blocks dropped, "
              f"{report['packs_removed']} packs removed ({report['packs_repacked']} of them repacked, "
              f"{human(report['bytes_repacked'])} copied), {report['temp_files_removed']} temp files, "
              f"{len(report['abandoned_backups_removed'])} abandoned backups; kept {report['chunks_kept']} blocks "
              f"({human(report['bytes_kept'])}; {report['chunks_within_grace']} unreferenced, "
              f"{human(report['dead_bytes_kept'])}, in packs too new or too full to repack) in "
              f"{report['seconds']:.1f} s", highlight=False)
    for problem in report["problems"]:
        out.print(f"[yellow]{escape(problem)}[/yellow]", highlight=False)


@store_app.command("repair")
@reports_errors
def repair(store: str | None = StoreOpt, as_json: bool = JsonOpt) -> None:
    """Rebuild the block index from the packs alone (a damaged pack gives back what is still readable)."""
    source = open_store(store)
    with count_progress() as bars:
        task = bars.add_task("packs", total=None)
        report = rebuild_index(source, progress=lambda done, total: bars.update(task, completed=done, total=total))
    if as_json:
        emit_json(asdict(report))
        return
    out.print(f"indexed {report.blocks} blocks in {report.packs} packs; replaced {report.index_files_replaced} "
              "index files")
    for problem in report.problems:
        out.print(f"[yellow]{problem}[/yellow]", highlight=False)


@store_app.command("upgrade")
@reports_errors
def upgrade(store: str | None = StoreOpt,
            block_size: str = typer.Option(f"{DEFAULT_BLOCK_SIZE >> 20}M", "--block-size",
                                           help="Block size of the format-2 store (a format-1 store only)."),
            pack_size: str = typer.Option(f"{DEFAULT_PACK_SIZE >> 20}M", "--pack-size",
                                          help="Pack size of the format-2 store (a format-1 store only)."),
            as_json: bool = JsonOpt) -> None:
    """Move a format-1 store to format 2 in place, keeping every backup; safe to interrupt and run again."""
    source = open_store(store)
    with count_progress() as bars:
        task = bars.add_task("backups", total=None)
        report = upgrade_store(source, parse_size(block_size), parse_size(pack_size),
                               progress=lambda done, total: bars.update(task, completed=done, total=total))
    if as_json:
        emit_json(asdict(report))
        return
    out.print(f"converted {len(report.converted)} backups ({report.already} were format 2 already), stored "
              f"{human(report.bytes_stored)}; the store is format 2 in {report.seconds:.1f} s")


@store_app.command("prune")
@reports_errors
def prune_cmd(vm: str = typer.Option(..., "--vm", help="Whose backups to prune."),
              keep_last: int = typer.Option(0, "--keep-last", help="Keep the N newest backups."),
              keep_hourly: int = typer.Option(0, "--keep-hourly", help="Keep the newest of each of N hours."),
              keep_daily: int = typer.Option(0, "--keep-daily", help="Keep the newest of each of N days."),
              keep_weekly: int = typer.Option(0, "--keep-weekly", help="Keep the newest of each of N weeks."),
              keep_monthly: int = typer.Option(0, "--keep-monthly", help="Keep the newest of each of N months."),
              keep_yearly: int = typer.Option(0, "--keep-yearly", help="Keep the newest of each of N years."),
              store: str | None = StoreOpt,
              dry_run: bool = typer.Option(False, "--dry-run", help="List what would go and why; remove nothing."),
              as_json: bool = JsonOpt) -> None:
    """Remove the backups of a VM that no keep rule (UTC periods) keeps; protected ones always stay."""
    rules = {"keep_last": keep_last, "keep_hourly": keep_hourly, "keep_daily": keep_daily,
             "keep_weekly": keep_weekly, "keep_monthly": keep_monthly, "keep_yearly": keep_yearly}
    if on_appliance(store):
        from appliance.jobs.params import PruneParams

        from .follow import run_job

        report = run_job("store.prune", PruneParams(vm=vm, dry_run=dry_run, **rules))
    else:
        policy = RetentionPolicy(**rules)   # no keep rule at all is refused before the store is opened
        pruned = prune(open_store(store), vm, policy, dry_run=dry_run)
        catalog = existing_catalog()
        if catalog is not None:
            with catalog.begin() as session:
                record_protection(session, pruned)
                if not dry_run:
                    record_pruned(session, list(pruned.removed))
        report = {**as_result(pruned), "removed": list(pruned.removed)}
    if as_json:
        emit_json(report)
        return
    listing = table("backup", "decision", "why", wide=("why",))
    for d in report["decisions"]:
        decision = "keep" if d["keep"] else ("would remove" if dry_run else "removed")
        listing.add_row(d["backup_id"], decision, ", ".join(d["reasons"]) or "no rule keeps it")
    print_table(listing)


SYNC_VMS_OPT = typer.Option([], "--vm", help="Only this VM's backups (repeat for more).")


def from_here(location: str | None) -> str | None:
    """A directory named from this shell's working directory, as the root names it: the job may
    run in another process (the appliance's), elsewhere."""
    if location is None or is_remote(location):
        return location
    return os.path.abspath(location)


@store_app.command("sync")
@reports_errors
def sync_cmd(to: str | None = typer.Option(None, "--to", help="Copy into this store (push): a directory or URL; "
                                           "a new location becomes a replica of this store."),
             source: str | None = typer.Option(None, "--from", help="Copy from this store (pull) into this one."),
             vms: list[str] = SYNC_VMS_OPT,
             bandwidth: str | None = typer.Option(None, "--bandwidth", help="Bytes per second at most, e.g. 10M."),
             store: str | None = StoreOpt,
             as_json: bool = JsonOpt) -> None:
    """Copy backups to another store, or from one, sending only the blocks it lacks. Run it again
    after a cut: it sends only what is still missing."""
    params = SyncParams(target=from_here(to), source=from_here(source), backups_of=vms,
                        bandwidth=parse_size(bandwidth) if bandwidth else None)
    if on_appliance(store):
        from .follow import run_job

        report = run_job("store.sync", params)
    else:
        access = store_access(store)
        own = open_store(store) if source is None else None
        with byte_progress() as bars:
            task = bars.add_task("sync", total=None)

            def progress(sent: int, total: int, backup_id: str) -> None:
                bars.update(task, description=backup_id, completed=sent, total=total)

            done = run_sync(access, own, params, progress)
        report = {**as_result(done), "ok": done.ok}
    if as_json:
        emit_json(report)
    else:
        out.print(f"{len(report['copied'])} backup(s) copied to {report['target']}, {len(report['present'])} there "
                  f"already; sent {report['blocks_sent']} blocks ({human(report['bytes_sent'])}), "
                  f"{report['blocks_present']} were there, in {report['seconds']:.1f} s", highlight=False)
        for skipped in report["skipped"]:
            out.print(f"[red]not copied[/red] {escape(skipped)}", highlight=False)
    if not report["ok"]:
        raise typer.Exit(1)


@store_app.command("lock")
@reports_errors
def lock_cmd(backup: str,
             until: str | None = typer.Option(None, "--until", help="Date (and time, UTC if no offset): "
                                              "2027-01-31 or 2027-01-31T12:00:00+01:00."),
             for_: str | None = typer.Option(None, "--for", help="Or a duration from now: 30d, 12w, 8h."),
             store: str | None = StoreOpt) -> None:
    """Lock a backup: nobody can delete it (prune, GC and delete go around it) before the date,
    nor shorten the lock. An S3 Object Lock bucket holds it against anyone; elsewhere Cairn does."""
    if (until is None) == (for_ is None):
        raise ValueError("give either --until DATE or --for DURATION")
    when = datetime.now(UTC) + parse_duration(for_) if for_ else datetime.fromisoformat(until or "")
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    locked = lock_backup(open_store(store), backup, when)
    out.print(f"backup {backup} is locked until {locked:%Y-%m-%d %H:%M:%S} UTC", highlight=False)
