// One VM: its definition and lifecycle, the jobs at work on it, its snapshot tree and its backups.
import { get, getPage, listPath } from "../api.js";
import { age, fill, h, table } from "../dom.js";
import { attempt, jobBar, live, pager } from "../ui.js";
import { backupSection } from "./backups.js";
import { snapshotSection } from "./snapshots.js";
import { vmActions } from "./vm_actions.js";

const BACKUPS_PER_PAGE = 100;

export async function vmPage(main, { name }, signal) {
  const path = `/vms/${encodeURIComponent(name)}`;
  const jobsOfVM = "/jobs?sort=-created_at&limit=10&filter=" + encodeURIComponent(`resource:eq:vm:${name}`);
  let offset = 0;   // into the VM's backups, newest first
  const draw = async () => {
    const [vm, tree, backups, jobs] = await Promise.all([get(path), get(`${path}/snapshots`),
      getPage(listPath("/backups", { vm: name, sort: "-started_at", limit: BACKUPS_PER_PAGE, offset })), get(jobsOfVM)]);
    const pages = pager(offset, BACKUPS_PER_PAGE, backups.total, (to) => { offset = to; attempt(draw); });
    fill(main, 
      h("h1", {}, `VM ${vm.name} `, h("span", { class: `state-${vm.state}`, "data-vm-state": vm.state }, vm.state)),
      h("p", { class: "actions" }, `${vm.vcpus} vCPUs · ${vm.memory_mib} MiB · disks `,
        vm.disks.map((d) => `${d.name} (${d.format})`).join(", "), " ",
        vmActions(vm, draw, () => { location.hash = "#/vms"; })),
      h("h2", {}, "Recent jobs"),
      table(["Job", "State", "Started", "Result"], jobs.map((j) => h("tr", {},
        h("td", {}, j.kind), h("td", {}, jobBar(j)), h("td", {}, age(j.started_at ?? j.created_at)),
        h("td", {}, j.error ?? (j.result?.backup_id ? `backup ${j.result.backup_id}` : "")))), "none"),
      snapshotSection(vm, tree, draw),
      backupSection(vm, backups, draw), pages);
  };
  await draw();
  live(main, signal, draw);
}
