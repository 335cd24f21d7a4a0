// One VM: its definition and lifecycle, the jobs at work on it, its snapshot tree and its backups.
import { call, get, getPage, listPath } from "../api.js";
import { age, bytes, fill, h, table } from "../dom.js";
import { actionButton, actionForm, attempt, field, jobBar, live, notify, pager } from "../ui.js";
import { backupCalendar, calendarStart } from "../calendar.js";
import { backupSection } from "./backups.js";
import { snapshotSection } from "./snapshots.js";
import { addDiskForm, addNicForm, removeDiskButton, removeNicButton, vmActions } from "./vm_actions.js";

const BACKUPS_PER_PAGE = 100;

// CPUs and memory (for a stopped VM: they apply at its next start), its disks (grown, even live;
// added or removed) and its network cards (added or removed). Adding and removing apply to a
// stopped VM only (Cairn does not hot-plug): the answer, the VM as it is now, is shown at once. A
// disk grown changes nothing this page shows (it lists no sizes): the notice says its new size.
function hardwareSection(vm, { shown, open }) {
  const path = `/vms/${encodeURIComponent(vm.name)}`;
  const stopped = ["stopped", "crashed"].includes(vm.state);
  const sizing = actionForm("PATCH", path, [
    field("vCPUs", h("input", { name: "vcpus", type: "number", min: "1", max: "255", value: String(vm.vcpus) })),
    field("Memory (MiB)", h("input", { name: "memory_mib", type: "number", min: "16", value: String(vm.memory_mib) })),
  ], "Change", async (values) => {
    const changed = await call("PATCH", path, { vcpus: Number(values.vcpus), memory_mib: Number(values.memory_mib) });
    notify(`VM ${changed.name}: ${changed.vcpus} vCPUs, ${changed.memory_mib} MiB from its next start.`);
    shown(changed);
  });
  const growing = (d) => actionForm("POST", `${path}/disks/${encodeURIComponent(d.name)}/resize`, [
    field("New size", h("input", { name: "size", required: true, placeholder: "20G" })),
  ], "Grow", async (values, form) => {
    const grown = await call("POST", `${path}/disks/${encodeURIComponent(d.name)}/resize`, { size: values.size });
    form.reset();
    notify(`Disk ${grown.disk} of ${vm.name} is now ${grown.size}.`);
  });
  const disks = table(["Disk", "Format", "File", ""], vm.disks.map((d, i) => h("tr", { "data-disk": d.name },
    h("td", {}, d.name), h("td", {}, d.format), h("td", {}, d.path),
    h("td", {}, growing(d), stopped && i > 0 ? removeDiskButton(vm, d, shown) : null))), "none");
  const nics = table(["NIC", "Connection", "MAC", "Model", ""], vm.nics.map((n) => h("tr", { "data-nic": n.mac },
    h("td", {}, n.name), h("td", {}, [n.mode, n.tap ?? n.bridge].filter(Boolean).join(" ")), h("td", {}, n.mac),
    h("td", {}, n.model ?? "the profile's"), h("td", {}, stopped ? removeNicButton(vm, n, shown) : null))), "none");
  const adding = stopped ? [addDiskForm(vm, shown), addNicForm(vm, shown)]
    : h("p", {}, "Stop the VM to add or remove disks and network cards.");
  return h("details", { "data-hardware": "", open }, h("summary", {}, "Hardware"), sizing, disks, nics, adding);
}

// A VM an instant restore made runs from the backup while QEMU copies the backup into its disks
// (GET /instant-restores/{vm}): shown while its instant restore is among its recent jobs, looked at
// again every few seconds while it copies (looking is also what ends a finished one: the backup is
// no longer served). A copy that failed (the VM stopped before it ended) is resumed from here.
const COPY_LOOK_MS = 2000;

function instantRestoreSection(name, signal) {
  const path = `/instant-restores/${encodeURIComponent(name)}`;
  const section = h("section", { "data-instant-restore": "" });
  const show = (copy) => {
    section.dataset.instantRestore = copy.status;
    const what = {
      hydrating: `Copying backup ${copy.backup_id} into the disks; the VM reads what is not copied yet from the backup.`,
      done: `Copy complete: the disks hold all of backup ${copy.backup_id}; the VM no longer reads the backup.`,
      failed: `The copy of backup ${copy.backup_id} stopped: ${copy.error}`,
    }[copy.status];
    const disks = Object.entries(copy.progress).map(([disk, [copied, total]]) => h("li", { "data-disk": disk },
      `${disk} `, h("progress", { max: String(total || 1), value: String(copied) }),
      ` ${bytes(copied)} of ${bytes(total)}`));
    const resume = copy.status === "failed"
      ? actionButton("Resume the copy", "POST", `${path}/resume`, () => call("POST", `${path}/resume`, {}), show)
      : null;
    fill(section, h("h2", {}, "Instant restore"), h("p", {}, what, " ", resume), disks.length ? h("ul", {}, disks) : null);
    if (copy.status === "hydrating") setTimeout(look, COPY_LOOK_MS);
  };
  // Redrawn, the page makes a new section: the one no longer shown stops looking.
  const look = () => { if (!signal.aborted && section.isConnected) get(path).then(show, notifyLost); };
  const notifyLost = (e) => fill(section, h("h2", {}, "Instant restore"), h("p", { class: "error" }, e.message));
  get(path).then(show, notifyLost);
  return section;
}

export async function vmPage(main, { name }, signal) {
  const path = `/vms/${encodeURIComponent(name)}`;
  const jobsOfVM = "/jobs?sort=-created_at&limit=10&filter=" + encodeURIComponent(`resource:eq:vm:${name}`);
  let offset = 0;   // into the VM's backups, newest first
  let around;   // what the last draw fetched besides the VM: an answer that is the VM is shown with it
  const render = (vm) => {
    const { tree, backups, jobs, recent } = around;
    const pages = pager(offset, BACKUPS_PER_PAGE, backups.total, (to) => { offset = to; attempt(draw); });
    // Redrawn, the hardware section stays open if it was: its forms are where the user works.
    const open = main.querySelector("details[data-hardware]")?.open ?? false;
    fill(main, 
      h("h1", {}, `VM ${vm.name} `, h("span", { class: `state-${vm.state}`, "data-vm-state": vm.state }, vm.state)),
      h("p", { class: "actions" }, `${vm.vcpus} vCPUs · ${vm.memory_mib} MiB · disks `,
        vm.disks.map((d) => `${d.name} (${d.format})`).join(", "), " ",
        vmActions(vm, draw, () => { location.hash = "#/vms"; })),
      hardwareSection(vm, { shown: render, open }),
      h("h2", {}, "Backups by day"), backupCalendar(recent),
      jobs.some((j) => j.kind === "restore.instant") ? instantRestoreSection(vm.name, signal) : null,
      h("h2", {}, "Recent jobs"),
      table(["Job", "State", "Started", "Result"], jobs.map((j) => h("tr", {},
        h("td", {}, h("a", { href: `#/job/${encodeURIComponent(j.id)}` }, j.kind)), h("td", {}, jobBar(j)), h("td", {}, age(j.started_at ?? j.created_at)),
        h("td", {}, j.error ?? (j.result?.backup_id ? `backup ${j.result.backup_id}` : "")))), "none"),
      snapshotSection(vm, tree, draw),
      backupSection(vm, backups, draw), pages);
  };
  const draw = async () => {
    const [vm, tree, backups, jobs, recent] = await Promise.all([get(path), get(`${path}/snapshots`),
      getPage(listPath("/backups", { vm: name, sort: "-started_at", limit: BACKUPS_PER_PAGE, offset })), get(jobsOfVM),
      get(listPath("/backups", { vm: name, limit: 1000,
                                 filters: [`started_at:ge:${calendarStart().toISOString()}`] }))]);
    around = { tree, backups, jobs, recent };
    render(vm);
  };
  await draw();
  live(main, signal, draw);
}
