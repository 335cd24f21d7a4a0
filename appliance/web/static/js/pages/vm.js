// One VM: its definition and lifecycle, the jobs at work on it, its snapshot tree and its backups.
import { call, get, getPage, listPath } from "../api.js";
import { age, fill, h, table } from "../dom.js";
import { actionForm, attempt, field, jobBar, live, notify, pager } from "../ui.js";
import { backupCalendar, calendarStart } from "../calendar.js";
import { backupSection } from "./backups.js";
import { snapshotSection } from "./snapshots.js";
import { vmActions } from "./vm_actions.js";

const BACKUPS_PER_PAGE = 100;

// CPUs and memory (for a stopped VM: they apply at its next start), and growing a disk.
function hardwareSection(vm, redraw) {
  const path = `/vms/${encodeURIComponent(vm.name)}`;
  const sizing = actionForm("PATCH", path, [
    field("vCPUs", h("input", { name: "vcpus", type: "number", min: "1", max: "255", value: String(vm.vcpus) })),
    field("Memory (MiB)", h("input", { name: "memory_mib", type: "number", min: "16", value: String(vm.memory_mib) })),
  ], "Change", async (values) => {
    const changed = await call("PATCH", path, { vcpus: Number(values.vcpus), memory_mib: Number(values.memory_mib) });
    notify(`VM ${changed.name}: ${changed.vcpus} vCPUs, ${changed.memory_mib} MiB from its next start.`);
    await redraw();
  });
  const growing = vm.disks.map((d) => actionForm("POST", `${path}/disks/${encodeURIComponent(d.name)}/resize`, [
    field(`Disk ${d.name} new size`, h("input", { name: "size", required: true, placeholder: "20G" })),
  ], `Grow ${d.name}`, async (values) => {
    const grown = await call("POST", `${path}/disks/${encodeURIComponent(d.name)}/resize`, { size: values.size });
    notify(`Disk ${grown.disk} of ${vm.name} is now ${grown.size}.`);
    await redraw();
  }));
  if (!sizing && !growing.some(Boolean)) return null;
  return h("details", { "data-hardware": "" }, h("summary", {}, "Hardware"), sizing, growing);
}

export async function vmPage(main, { name }, signal) {
  const path = `/vms/${encodeURIComponent(name)}`;
  const jobsOfVM = "/jobs?sort=-created_at&limit=10&filter=" + encodeURIComponent(`resource:eq:vm:${name}`);
  let offset = 0;   // into the VM's backups, newest first
  const draw = async () => {
    const [vm, tree, backups, jobs, recent] = await Promise.all([get(path), get(`${path}/snapshots`),
      getPage(listPath("/backups", { vm: name, sort: "-started_at", limit: BACKUPS_PER_PAGE, offset })), get(jobsOfVM),
      get(listPath("/backups", { vm: name, limit: 1000,
                                 filters: [`started_at:ge:${calendarStart().toISOString()}`] }))]);
    const pages = pager(offset, BACKUPS_PER_PAGE, backups.total, (to) => { offset = to; attempt(draw); });
    fill(main, 
      h("h1", {}, `VM ${vm.name} `, h("span", { class: `state-${vm.state}`, "data-vm-state": vm.state }, vm.state)),
      h("p", { class: "actions" }, `${vm.vcpus} vCPUs · ${vm.memory_mib} MiB · disks `,
        vm.disks.map((d) => `${d.name} (${d.format})`).join(", "), " ",
        vmActions(vm, draw, () => { location.hash = "#/vms"; })),
      hardwareSection(vm, draw),
      h("h2", {}, "Backups by day"), backupCalendar(recent),
      h("h2", {}, "Recent jobs"),
      table(["Job", "State", "Started", "Result"], jobs.map((j) => h("tr", {},
        h("td", {}, h("a", { href: `#/job/${encodeURIComponent(j.id)}` }, j.kind)), h("td", {}, jobBar(j)), h("td", {}, age(j.started_at ?? j.created_at)),
        h("td", {}, j.error ?? (j.result?.backup_id ? `backup ${j.result.backup_id}` : "")))), "none"),
      snapshotSection(vm, tree, draw),
      backupSection(vm, backups, draw), pages);
  };
  await draw();
  live(main, signal, draw);
}
