"""`cairn vm ...` and `cairn image ...`: define, run, clone and place VMs; the image library."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from appliance.units import human, parse_size

from .client import Listing, NewVM, PowerAction
from .common import JsonOpt, emit_json, err, out, print_table, reports_errors, state, table
from .listing import FILTER_OPT, OFFSET_OPT, limit_option, say_page, sort_option

if TYPE_CHECKING:
    from appliance.api.models import VMDetail
    from appliance.deletion.protection import Impact

vm_app = typer.Typer(help="Define, run, clone and place VMs.", no_args_is_help=True)
group_app = typer.Typer(help="VM scheduling groups: affinity and anti-affinity policies.",
                        no_args_is_help=True)
image_app = typer.Typer(help="The image library: ISO media and disk images, checksummed.",
                        no_args_is_help=True)
disk_app = typer.Typer(help="Add or remove a stopped VM's disks (its guest sees them from its next start).",
                       no_args_is_help=True)
nic_app = typer.Typer(help="Add or remove a stopped VM's network cards (from its next start).", no_args_is_help=True)
vm_app.add_typer(group_app, name="group")
vm_app.add_typer(disk_app, name="disk")
vm_app.add_typer(nic_app, name="nic")
# Options whose defaults are mutable (lists) or paths, kept out of the signatures (ruff B008).
DISK_OPT = typer.Option([], "--disk", help="Size of a new blank qcow2 disk (repeat for more).")
IMAGE_FILE_OPT = typer.Option(None, "--image", help="Base image file for the first disk (a thin overlay on it).")
NIC_OPT = typer.Option([], "--nic", help="user, tap:IFNAME or bridge:BRIDGE (repeat for more).")
BOOT_OPT = typer.Option([], "--boot", help="Boot order: disk, cdrom, network (repeat).")
KERNEL_OPT = typer.Option(None, "--kernel", help="Kernel for direct boot.")
INITRD_OPT = typer.Option(None, "--initrd", help="Initrd for direct boot.")
CLONE_NAMES_ARG = typer.Argument(..., help="Names of the new VMs.")
GROUP_VM_OPT = typer.Option([], "--vm", help="A member VM (repeat).")
GROUP_HOST_OPT = typer.Option([], "--host", help="A host of the host group (VM-host policies).")
COMMAND_FILE_OPT = typer.Option(None, "--command-file", help="Or: a file holding that command line.")
IMAGE_PATH_ARG = typer.Argument(..., exists=True, dir_okay=False, help="The file, on this machine (uploaded through "
                                "--url).")


def parse_nic(text: str, option: str = "--nic") -> dict[str, str]:
    """user | tap:IFNAME | bridge:BRIDGE, as the API's NIC: {"mode": ..., "tap"|"bridge": ...}."""
    mode, _, target = text.partition(":")
    if mode == "user" and not target:
        return {"mode": "user"}
    if mode in ("tap", "bridge") and target:
        return {"mode": mode, mode: target}
    raise ValueError(f"{option} {text!r}: use user, tap:IFNAME or bridge:BRIDGE")


def _opt(p: Path | None) -> str | None:
    return str(p.resolve()) if p else None


def _say(view: VMDetail, as_json: bool, job_id: str | None = None) -> None:
    if as_json:
        emit_json(view)
    else:
        pid = f" (pid {view.pid})" if view.pid else ""
        job = f"; job {job_id}" if job_id else ""
        out.print(f"{view.name}: {view.state}{pid}{job}", highlight=False)


@vm_app.command("import")
@reports_errors
def vm_import(host: str | None = typer.Option(None, help="A libvirt host on this machine (with --domain)."),
              domain: str | None = typer.Option(None, help="Its stopped domain to take over."),
              command: str | None = typer.Option(None, help="Or: the command line a (stopped) QEMU was started with."),
              command_file: Path | None = COMMAND_FILE_OPT,
              name: str | None = typer.Option(None, help="The Cairn VM's name (default: the domain's or -name's)."),
              undefine: bool = typer.Option(False, "--undefine", help="Then remove the domain from libvirt (its "
                                                                     "disks stay)."),
              as_json: bool = JsonOpt) -> None:
    """Take over a libvirt domain or a QEMU command line as a Cairn VM; its disks stay where they
    are. The VM must be stopped."""
    from appliance.vms.imports import VMImports

    here = state.this_host()
    imports = VMImports(here.vms, here.hosts)
    if command_file is not None:
        command = command_file.read_text()
    if command is not None and host is None and domain is None:
        imported = imports.from_command_line(command, name)
    elif command is None and host is not None and domain is not None:
        imported = imports.from_libvirt(host, domain, name, undefine)
    else:
        raise ValueError("give --host and --domain (a libvirt domain), or --command / --command-file")
    if as_json:
        emit_json({"vm": imported.spec.to_dict(), "notes": imported.notes})
        return
    out.print(f"VM {imported.spec.name} imported: disks {', '.join(d.path for d in imported.spec.disks)}")
    for note in imported.notes:
        out.print(f"  note: {note}")


@vm_app.command("create")
@reports_errors
def vm_create(name: str,
              disk: list[str] = DISK_OPT,
              image: Path | None = IMAGE_FILE_OPT,
              from_image: str | None = typer.Option(None, "--from-image",
                                                    help="Library disk image for the first disk (a thin overlay)."),
              iso: str | None = typer.Option(None, help="Library ISO for the cdrom (booted first)."),
              storage_pool: str | None = typer.Option(None, help="Storage pool for the disks (`cairn pool`)."),
              compute_pool: str | None = typer.Option(None, help="Run it on a host of this compute pool, whose "
                                                                 "hosts see its storage (default: here only)."),
              profile: str = typer.Option("modern", help="OS profile: modern (virtio) or legacy (IDE, e1000)."),
              nic: list[str] = NIC_OPT,
              boot: list[str] = BOOT_OPT,
              console: bool = typer.Option(True, "--console/--no-console", help="A VNC console (VGA card)."),
              ha: bool = typer.Option(False, "--ha", help="Restart the VM when its QEMU dies."),
              memory: int = typer.Option(256, help="Memory in MiB."),
              vcpus: int = typer.Option(1, help="Virtual CPUs."),
              kernel: Path | None = KERNEL_OPT,
              initrd: Path | None = INITRD_OPT,
              append: str | None = typer.Option(None, help="Kernel command line for direct boot."),
              as_json: bool = JsonOpt) -> None:
    """Define a new VM: blank qcow2 disks, a thin overlay on an image, or an ISO in the cdrom."""
    view = state.client.create_vm(NewVM(
        name, [parse_size(d) for d in disk], memory_mib=memory, vcpus=vcpus, image=from_image, iso=iso,
        storage_pool=storage_pool, compute_pool=compute_pool, profile=profile, nics=[parse_nic(n) for n in nic], boot=boot, console=console,
        ha=ha, kernel=_opt(kernel), initrd=_opt(initrd), append=append, base_image=_opt(image)))
    if as_json:
        emit_json(view)
    else:
        out.print(f"created VM {name} with disks " + ", ".join(f"{d['name']} ({d['path']})" for d in view.disks),
                  highlight=False)


def _power_command(action: PowerAction, summary: str) -> None:
    """`cairn vm <action> NAME`: the VM's power button of that name, then its state."""
    @vm_app.command(action, help=summary)
    @reports_errors
    def command(name: str, as_json: bool = JsonOpt) -> None:
        _say(state.client.power(name, action), as_json)


_POWER: tuple[tuple[PowerAction, str], ...] = (
    ("reboot", "Reset a running VM (like its reset button)."),
    ("pause", "Freeze a running VM's CPUs."),
    ("resume", "Let a paused VM run on."))
for _action, _summary in _POWER:
    _power_command(_action, _summary)


@vm_app.command("start")
@reports_errors
def vm_start(name: str, paused: bool = typer.Option(False, "--paused",
                                                    help="Set the machine up, run no guest code until `vm resume`."),
             as_json: bool = JsonOpt) -> None:
    """Start a VM (QEMU runs on after this command returns): a vm.start job, after any other job
    on the VM (a backup, a snapshot...)."""
    started = state.client.start_vm(name, paused)
    _say(started, as_json, started.job_id)


@vm_app.command("stop")
@reports_errors
def vm_stop(name: str,
            timeout: float = typer.Option(30.0, help="Seconds the guest gets to shut down before it is forced off."),
            force: bool = typer.Option(False, "--force", help="Do not ask the guest: force it off at once (QEMU "
                                                               "ends, as if its power was cut)."),
            as_json: bool = JsonOpt) -> None:
    """Shut a VM down: the ACPI power button asks the guest to; if it has not within --timeout
    seconds (or it is paused and cannot), it is forced off, and the command says so. --force does
    that at once (and cuts short a stop that waits for its guest). A vm.stop job, after any other
    job on the VM."""
    client = state.client
    before = client.vm(name).state
    if before == "running" and not force:
        err.print(f"asking the guest of {name} to shut down (ACPI power button); if it has not within "
                  f"{timeout:g} s it is forced off (--force: at once, --timeout: longer)", highlight=False)
    stopped = client.stop_vm(name, timeout, force)
    job = f"; job {stopped.job_id}"
    if as_json:
        emit_json(stopped)
    elif stopped.how == "powerdown":
        out.print(f"{name}: stopped (the guest shut down){job}", highlight=False)
    elif stopped.how == "already-stopped":
        out.print(f"{name}: {stopped.state} (it was not running){job}", highlight=False)
    elif stopped.how == "unknown":
        out.print(f"{name}: {stopped.state} (on host {stopped.host}, which does not say whether the guest shut "
                  f"down or was forced off){job}", highlight=False)
    else:
        why = ("as asked (--force)" if force else "a paused guest cannot answer the power button"
               if before == "paused" else f"the guest did not shut down within {timeout:g} s")
        out.print(f"{name}: forced off, {why}: QEMU was ended as if its power was cut{job}", highlight=False)


@vm_app.command("resize")
@reports_errors
def vm_resize(name: str, vcpus: int | None = typer.Option(None, help="Virtual CPUs."),
              memory: int | None = typer.Option(None, help="Memory in MiB."),
              as_json: bool = JsonOpt) -> None:
    """Change a stopped VM's CPUs and memory."""
    _say(state.client.resize_vm(name, vcpus, memory), as_json)


@vm_app.command("grow-disk")
@reports_errors
def vm_grow_disk(name: str, disk: str, size: str, as_json: bool = JsonOpt) -> None:
    """Grow a disk (live if the VM runs); the guest sees the new size, its partitions do not."""
    new = state.client.grow_disk(name, disk, parse_size(size))
    emit_json({"disk": disk, "size": new}) if as_json else out.print(f"{name}/{disk}: {human(new)}", highlight=False)


@vm_app.command("clone")
@reports_errors
def vm_clone(source: str, names: list[str] = CLONE_NAMES_ARG,
             instant: bool = typer.Option(False, "--instant",
                                          help="Linked now, made independent by a background stream once started."),
             as_json: bool = JsonOpt) -> None:
    """Clone a stopped VM. Several full clones share one image cache of the source.

    A job on the source VM, like the API's; --json prints its result."""
    from appliance.jobs.params import CloneParams

    from .follow import run_job

    result = run_job("vm.clone", CloneParams(source=source, names=names, mode="instant" if instant else "full"))
    emit_json(result) if as_json else out.print(f"cloned {source} to {', '.join(result['vms'])}", highlight=False)


@vm_app.command("ha")
@reports_errors
def vm_ha(name: str, enabled: bool = typer.Option(..., "--on/--off", help="Restart the VM when its QEMU dies."),
          max_restarts: int = typer.Option(3, help="Give up after this many restarts ..."),
          window: int = typer.Option(600, help="... within this many seconds."),
          as_json: bool = JsonOpt) -> None:
    """Turn high availability on or off (`cairn serve` runs the supervisor)."""
    _say(state.client.set_ha(name, enabled, max_restarts, window), as_json)


@vm_app.command("compute-pool")
@reports_errors
def vm_compute_pool(name: str, pool: str | None = typer.Argument(None, help="A compute pool (`cairn pool`)."),
                    none: bool = typer.Option(False, "--none", help="Run it on this machine only."),
                    as_json: bool = JsonOpt) -> None:
    """Place the VM among the hosts of a compute pool from its next start (its disks must be on
    storage they all see at the same path), or on this machine only."""
    if (pool is None) == (not none):
        raise ValueError("give a compute pool, or --none")
    _say(state.client.set_compute_pool(name, pool), as_json)


@vm_app.command("migrate")
@reports_errors
def vm_migrate(name: str, host: str = typer.Argument(..., help="Another host of its compute pool (local: here)."),
               timeout: float = typer.Option(240.0, help="Cancel it after this many seconds (the VM runs on)."),
               as_json: bool = JsonOpt) -> None:
    """Move a running VM to another host while it runs (live migration; its disks stay on the
    storage both hosts see). A job on the VM, like the API's."""
    from appliance.jobs.params import MigrateParams

    from .follow import run_job

    result = run_job("vm.migrate", MigrateParams(vm=name, host=host, timeout=timeout))
    if as_json:
        emit_json(result)
    else:
        out.print(f"migrated {name} from {result['from']} to {result['to']} in {result['total_ms'] / 1000:.1f} s "
                  f"(paused {result['downtime_ms']} ms, {human(result['transferred_bytes'])} sent)", highlight=False)


@vm_app.command("console")
@reports_errors
def vm_console(name: str) -> None:
    """Where a VNC client on this host connects, and the password (changes at every start)."""
    from vmm.console import vnc_password

    paths = state.this_host().driver.paths(name)
    password = vnc_password(paths)
    if password is None:
        raise ValueError(f"VM {name} has no console right now (not running, or created with --no-console)")
    out.print(f"socket {paths.vnc_socket}\npassword {password}", highlight=False)


@vm_app.command("list")
@reports_errors
def vm_list(filters: list[str] = FILTER_OPT, sort: str = sort_option("name"), limit: int = limit_option(100),
            offset: int = OFFSET_OPT, as_json: bool = JsonOpt) -> None:
    """VMs and their state; fields: name, state, pid, vcpus, memory_mib."""
    page = state.client.vms(Listing(filters, sort, limit, offset))
    say_page(len(page.items), offset, page.total, "VMs")
    views = page.items
    if as_json:
        emit_json(views)
        return
    listing = table("name", "state", "vcpus", "memory", "disks", wide=("disks",), numbers=("vcpus", "memory"))
    for v in views:
        listing.add_row(v.name, v.state, str(v.vcpus), f"{v.memory_mib} MiB", ", ".join(d.name for d in v.disks))
    print_table(listing)


@vm_app.command("show")
@reports_errors
def vm_show(name: str, as_json: bool = JsonOpt) -> None:
    """Show a VM's definition, state, disks and network cards."""
    from rich.markup import escape

    view = state.client.vm(name)
    if as_json:
        emit_json(view)
        return
    out.print(f"[bold]{escape(name)}[/bold]  {view.state}  {view.vcpus} vCPU  {view.memory_mib} MiB  "
              f"profile {view.profile}" + ("  HA" if view.ha else ""))
    out.print(f"  host {view.host}" + (f"  compute pool {view.compute_pool}" if view.compute_pool else ""),
              highlight=False)
    _hardware(view)
    if view.cdrom:
        out.print(f"  cdrom  {view.cdrom}", highlight=False)
    if view.linked_to:
        progress = state.client.clone_progress(name)
        out.print(f"  instant clone of {view.linked_to}: "
                  + (", ".join(f"{d} {p:.0%}" for d, p in progress.items()) or "independent"), highlight=False)


def _hardware(view: VMDetail) -> None:
    """The VM's disks and network cards, a line each."""
    for d in view.disks:
        out.print(f"  {d['name']}  {d['format']}  {d['path']}", highlight=False)
    for n in view.nics:
        out.print(f"  {n.name}  {n.mode} {n.tap or n.bridge or ''}  {n.mac}" + (f"  {n.model}" if n.model else ""),
                  highlight=False)


def _say_hardware(view: VMDetail, as_json: bool) -> None:
    if as_json:
        emit_json(view)
    else:
        out.print(f"{view.name}: {view.state}", highlight=False, markup=False)
        _hardware(view)


@disk_app.command("add")
@reports_errors
def disk_add(name: str,
             size: str | None = typer.Option(None, help="Its size, e.g. 10G (on --image: at least the image's)."),
             disk_format: str | None = typer.Option(None, "--format", help="qcow2 (default) or raw."),
             image: str | None = typer.Option(None, help="A library disk image it starts as (a thin layer over it)."),
             storage_pool: str | None = typer.Option(None, help="Default: the storage pool of the VM's first disk."),
             as_json: bool = JsonOpt) -> None:
    """Add a disk to a stopped VM, after its others: blank, or a library image's content."""
    from appliance.vms.devices import NewDisk

    new = NewDisk(size=parse_size(size) if size is not None else None, format=disk_format,
                  image=image, storage_pool=storage_pool)
    _say_hardware(state.client.add_disk(name, new), as_json)


@disk_app.command("remove")
@reports_errors
def disk_remove(name: str, disk: str,
                delete_file: bool = typer.Option(False, "--delete-file", help="Also delete its file (only one "
                                                                              "Cairn made); default: keep it."),
                as_json: bool = JsonOpt) -> None:
    """Take a disk (not the first: the boot disk) out of a stopped VM."""
    _say_hardware(state.client.remove_disk(name, disk, delete_file), as_json)


@nic_app.command("add")
@reports_errors
def nic_add(name: str,
            network: str | None = typer.Option(None, help="A network (cairn network list): an address is reserved."),
            connect: str = typer.Option("user", "--mode", help="Without --network: user, tap:IFNAME or bridge:BRIDGE."),
            model: str | None = typer.Option(None, help="virtio-net-pci, e1000 or rtl8139 (default: the OS "
                                                        "profile's)."),
            mac: str | None = typer.Option(None, help="Default: a random 52:54:00:xx:xx:xx."),
            as_json: bool = JsonOpt) -> None:
    """Add a network card to a stopped VM."""
    from appliance.vms.devices import NewNic

    how = parse_nic(connect, "--mode")
    _say_hardware(state.client.add_nic(name, NewNic(network=network, model=model, mac=mac, **how)), as_json)


@nic_app.command("remove")
@reports_errors
def nic_remove(name: str, mac: str, as_json: bool = JsonOpt) -> None:
    """Take the network card with this MAC out of a stopped VM (on a network, its address is released)."""
    _say_hardware(state.client.remove_nic(name, mac), as_json)


@vm_app.command("access")
@reports_errors
def vm_access(name: str,
              owner: str | None = typer.Option(None, help="The user who owns the VM (\"\": no owner, shared "
                                                           "with everyone)."),
              group: str | None = typer.Option(None, help="The group whose members see it too (\"\": none)."),
              as_json: bool = JsonOpt) -> None:
    """Show, or with --owner/--group change, who sees the VM (besides admins): its owner and the
    members of its group; a VM without an owner is shared with every user."""
    from appliance.access.visibility import visibility

    seen = visibility(state.appliance)
    state.appliance.vms.spec(name)   # no such VM: an error
    access = seen.get(name)
    if owner is not None or group is not None:
        access = seen.set(name, access.owner if owner is None else owner or None,
                          access.group if group is None else group or None)
    if as_json:
        emit_json({"vm": name, "owner": access.owner, "group": access.group})
    else:
        out.print(f"{name}: owner {access.owner or '(none: shared with everyone)'}, "
                  f"group {access.group or '(none)'}", highlight=False)


@vm_app.command("delete")
@reports_errors
def vm_delete(name: str, yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
              dry_run: bool = typer.Option(False, "--dry-run", help="Only say what it would take."),
              as_json: bool = JsonOpt) -> None:
    """Delete a stopped VM and its disks under the deletion rules (by default it waits in the
    recycle bin, restorable, for a week); its backups stay in the store."""
    client = state.client
    if not (dry_run or yes):
        _say_impact(client.delete_vm(name, dry_run=True), "would delete")
        if not typer.confirm(f"Delete VM {name}?"):
            raise typer.Exit(1)
    impact = client.delete_vm(name, dry_run)
    if as_json:
        emit_json(impact)
    else:
        _say_impact(impact, "would delete" if dry_run else "deleted")


def _say_impact(impact: Impact, verb: str) -> None:
    where = (f", in the recycle bin as {impact.recycle_id} until {impact.purge_at:%Y-%m-%d %H:%M} UTC"
             if impact.recycle_id and impact.purge_at else "")
    frees = f", frees {human(impact.frees_bytes)}" if impact.frees_bytes is not None else ""
    out.print(f"{verb} VM {impact.name} ({impact.mode}{frees}{where}):", highlight=False)
    for line in impact.takes:
        out.print(f"  {line}", highlight=False)


# -- scheduling groups ----------------------------------------------------------------------------

@group_app.command("set")
@reports_errors
def group_set(name: str,
              policy: str = typer.Option(..., help="vm-anti-affinity, vm-affinity, vm-host-anti-affinity, vm-host-affinity."),
              enforcement: str = typer.Option("mandatory", help="mandatory or preferred."),
              vm: list[str] = GROUP_VM_OPT,
              host: list[str] = GROUP_HOST_OPT,
              ) -> None:
    """Create or replace a scheduling group."""
    from vmm.placement import SchedulingGroup

    state.appliance.vms.save_group(SchedulingGroup(name, policy, enforcement, frozenset(vm),  # type: ignore[arg-type]
                                                   frozenset(host)))
    out.print(f"scheduling group {name}: {policy} ({enforcement})")


@group_app.command("list")
@reports_errors
def group_list(as_json: bool = JsonOpt) -> None:
    """List scheduling groups."""
    groups = state.appliance.vms.groups()
    if as_json:
        emit_json([{"name": g.name, "policy": g.policy, "enforcement": g.enforcement,
                    "vms": sorted(g.vms), "hosts": sorted(g.hosts)} for g in groups])
        return
    listing = table("name", "policy", "enforcement", "vms", "hosts", wide=("vms", "hosts"))
    for g in groups:
        listing.add_row(g.name, g.policy, g.enforcement, ", ".join(sorted(g.vms)), ", ".join(sorted(g.hosts)))
    print_table(listing)


@group_app.command("delete")
@reports_errors
def group_delete(name: str) -> None:
    """Delete a scheduling group."""
    state.appliance.vms.delete_group(name)
    out.print(f"deleted scheduling group {name}")


# -- images ---------------------------------------------------------------------------------------

@image_app.command("import")
@reports_errors
def image_import(name: str, path: Path = IMAGE_PATH_ARG,
                 kind: str | None = typer.Option(None, help="iso or disk (detected)."),
                 as_json: bool = JsonOpt) -> None:
    """Copy a file into the library, recording its SHA-256."""
    from .progress import byte_progress

    with byte_progress() as bars:
        task = bars.add_task(f"image {name}", total=path.stat().st_size)
        record = state.client.import_image(name, path, kind, lambda done: bars.update(task, completed=done))
    _say_image(record, as_json)


@image_app.command("from-vm")
@reports_errors
def image_from_vm(vm: str, name: str, disk: str | None = typer.Option(None, help="Which disk (default: the first)."),
                  as_json: bool = JsonOpt) -> None:
    """Make a library image of a stopped VM's disk (flattened: it stands alone)."""
    _say_image(state.client.image_from_vm(vm, name, disk), as_json)


def _say_image(record: dict[str, Any], as_json: bool, verb: str = "") -> None:
    if as_json:
        emit_json(record)
    else:
        out.print(f"image {record['name']}: {verb}{record['kind']} {record['format']} {human(record['size'])} "
                  f"sha256 {record['sha256']}", highlight=False)


@image_app.command("list")
@reports_errors
def image_list(as_json: bool = JsonOpt) -> None:
    """List the library's images."""
    records = state.client.images()
    if as_json:
        emit_json(records)
        return
    listing = table("name", "kind", "format", "size", "virtual size", "sha256", "source", wide=("source",),
                    numbers=("size", "virtual size"))
    for r in records:
        listing.add_row(r["name"], r["kind"], r["format"], human(r["size"]), human(r["virtual_size"]),
                        r["sha256"][:16], r["source"])
    print_table(listing)


@image_app.command("verify")
@reports_errors
def image_verify(name: str, as_json: bool = JsonOpt) -> None:
    """Re-hash an image and compare with its recorded SHA-256."""
    _say_image(state.client.verify_image(name), as_json, verb="ok, ")


@image_app.command("delete")
@reports_errors
def image_delete(name: str) -> None:
    """Delete an image no VM uses."""
    state.client.delete_image(name)
    out.print(f"deleted image {name}", highlight=False)
