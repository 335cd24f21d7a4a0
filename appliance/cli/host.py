"""`cairn host ...`: register libvirt and ssh hosts; list, start, stop and back up their VMs."""
from __future__ import annotations

import typer
from rich.table import Table

from appliance.backups.options import DEFAULT_FULL_EVERY
from appliance.units import human

from .common import EXCLUDE_OPT, INCLUDE_OPT, JsonOpt, emit_json, out, reports_errors, state

host_app = typer.Typer(help="Hosts besides this one: libvirt hosts (their domains) and ssh hosts (VMs run by "
                            "Cairn's agent).", no_args_is_help=True)


@host_app.command("add")
@reports_errors
def host_add(name: str,
             uri: str = typer.Argument(..., help="libvirt: its connection URI, e.g. qemu:///system; "
                                                 "ssh: ssh://user@host[:port]."),
             kind: str = typer.Option("libvirt", help="libvirt or ssh."),
             key_file: str | None = typer.Option(None, help="ssh: the private key to log in with."),
             known_hosts: str | None = typer.Option(None, help="ssh (and libvirt over qemu+ssh): a known_hosts "
                                                               "file naming the host's key."),
             agent_dir: str | None = typer.Option(None, help="ssh: the agent's directory on the host "
                                                             "(default /var/lib/cairn-agent)."),
             scratch_dir: str | None = typer.Option(None, help="libvirt: a directory on the host its QEMU can "
                                                               "write to, for backups (default: each domain's own "
                                                               "directory)."),
             libvirt_dir: str | None = typer.Option(None, help="libvirt on this machine: where this machine sees "
                                                               "the host's /var/lib/libvirt (default: there)."),
             as_json: bool = JsonOpt) -> None:
    """Register a host; it must answer now (an ssh host gets Cairn's agent installed)."""
    host = state.appliance.hosts.add(name, uri, kind, key_file, known_hosts, agent_dir, scratch_dir, libvirt_dir)
    emit_json(host.to_dict()) if as_json else out.print(f"host {host.name} added ({host.kind}, {host.uri})")


@host_app.command("list")
@reports_errors
def host_list(as_json: bool = JsonOpt) -> None:
    """List the registered hosts."""
    hosts = state.appliance.hosts.list()
    if as_json:
        emit_json([h.to_dict() for h in hosts])
        return
    table = Table("name", "kind", "uri", "options")
    for h in hosts:
        table.add_row(h.name, h.kind, h.uri, " ".join(f"{k}={v}" for k, v in h.options.items()))
    out.print(table)


@host_app.command("remove")
@reports_errors
def host_remove(name: str) -> None:
    """Forget a host (its VMs and their backups stay)."""
    state.appliance.hosts.remove(name)
    out.print(f"host {name} removed")


@host_app.command("vms")
@reports_errors
def host_vms(name: str, as_json: bool = JsonOpt) -> None:
    """List a host's VMs (a libvirt host's domains)."""
    vms = state.appliance.hosts.vms(name)
    if as_json:
        emit_json([v.to_dict() for v in vms])
        return
    table = Table("name", "state", "vcpus", "memory", "disks")
    for d in vms:
        table.add_row(d.name, d.state, str(d.vcpus), f"{d.memory_mib} MiB",
                      ", ".join(f"{k.target} ({k.format})" for k in d.disks))
    out.print(table)


@host_app.command("start")
@reports_errors
def host_start(name: str, vm: str) -> None:
    """Start a VM (an ssh host's VM with the definition it last ran with): a host.vm.start job,
    after any other job on the VM (a backup)."""
    from appliance.jobs.params import HostVMStartParams

    job = state.appliance.jobs.run_to_end("host.vm.start", HostVMStartParams(host=name, vm=vm))
    out.print(f"{vm}: {(job.result or {})['state']}; job {job.id}")


@host_app.command("stop")
@reports_errors
def host_stop(name: str, vm: str,
              timeout: float = typer.Option(60.0, help="Seconds to wait after the ACPI power button."),
              force: bool = typer.Option(False, "--force", help="Pull the plug at once.")) -> None:
    """Stop a VM: the ACPI power button, then forced after --timeout (--force: at once, and cuts
    short a stop that waits for its guest). A host.vm.stop job, after any other job on the VM."""
    from appliance.jobs.params import HostVMStopParams

    job = state.appliance.jobs.run_to_end("host.vm.stop", HostVMStopParams(host=name, vm=vm, timeout=timeout,
                                                                           force=force))
    out.print(f"{vm}: {(job.result or {})['state']}; job {job.id}")


@host_app.command("snapshot")
@reports_errors
def host_snapshot(name: str, vm: str, snapshot: str) -> None:
    """Snapshot every disk of a libvirt domain at one instant (disk-only; each disk goes on in an
    overlay <image base>.<snapshot>)."""
    state.appliance.hosts.snapshot(name, vm, snapshot)
    out.print(f"snapshot {snapshot} of {vm} taken")


@host_app.command("snapshots")
@reports_errors
def host_snapshots(name: str, vm: str, as_json: bool = JsonOpt) -> None:
    """List a libvirt domain's snapshots, oldest first."""
    names = state.appliance.hosts.snapshots(name, vm)
    emit_json(names) if as_json else out.print("\n".join(names) or "no snapshots")


@host_app.command("backup")
@reports_errors
def host_backup(name: str, vm: str, full: bool = typer.Option(False, "--full", help="Read every disk in full."),
                full_every: int = typer.Option(DEFAULT_FULL_EVERY, min=0,
                                               help="Read a disk in full after this many incrementals of it."),
                include: list[str] = INCLUDE_OPT, exclude: list[str] = EXCLUDE_OPT,
                as_json: bool = JsonOpt) -> None:
    """Back up a running VM of a host: incremental from its last backup unless --full. Its backups
    are listed as <vm>@<host>. Every disk that holds data is read unless --include/--exclude say
    otherwise; the output says how each disk was read, and why."""
    from appliance.jobs.params import HostBackupParams

    from .backup import say_backup
    from .follow import run_job

    params = HostBackupParams(host=name, vm=vm, full=full, full_every=full_every, include=include or [],
                              exclude=exclude or [])
    result = run_job("host.backup", params)
    say_backup(result, f"{vm}@{name}", as_json)


@host_app.command("restore")
@reports_errors
def host_restore(host: str, backup_id: str,
                 new_name: str | None = typer.Option(None, "--name", help="Restore as a new domain of this name..."),
                 directory: str | None = typer.Option(None, "--dir", help="...its disks in this directory..."),
                 pool: str | None = typer.Option(None, help="...or in this storage pool (dir, fs or netfs)."),
                 start: bool = typer.Option(False, "--start", help="Start the new domain once defined."),
                 over: bool = typer.Option(False, "--over", help="Or: replace the disks of the domain backed up."),
                 stop: bool = typer.Option(False, "--stop", help="With --over: shut the domain down first."),
                 verify: bool = typer.Option(True, "--verify/--no-verify", help="Read each disk back."),
                 as_json: bool = JsonOpt) -> None:
    """Restore a libvirt domain's backup into a libvirt host: as a new domain (new name, UUID, MACs
    and disk files) or over the domain it was taken of, all or nothing. Runs as a job on the domain."""
    from appliance.jobs.params import LibvirtRestoreParams

    from .follow import run_job

    params = LibvirtRestoreParams.model_validate({"host": host, "backup_id": backup_id, "name": new_name,
                                                  "directory": directory, "pool": pool, "start": start, "over": over,
                                                  "stop": stop, "verify": verify})
    done = run_job("restore.libvirt", params)
    if as_json:
        emit_json(done)
        return
    out.print(f"domain {done['domain']} on {done['host']} restored from {done['backup_id']}: "
              f"wrote {human(done['bytes_written'])}" + (", verified" if done["verified"] else ""), highlight=False)
    for disk, path in done["disks"].items():
        out.print(f"  {disk}: {path}", highlight=False)
    for note in done["notes"]:
        out.print(f"  note: {note}", highlight=False)
