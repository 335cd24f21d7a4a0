// A VM's lifecycle actions, shared by the VM list and the VM's page: start, stop, force off, console, delete.
import { call, get } from "../api.js";
import { bytes, h } from "../dom.js";
import { may } from "../roles.js";
import { actionButton, confirmAction } from "../ui.js";

const RUNNING = ["running", "paused"];

async function deleteVM(vm) {
  const path = `/vms/${encodeURIComponent(vm.name)}`;
  const [tree, backups] = await Promise.all([get(`${path}/snapshots`), get(`/backups?vm=${encodeURIComponent(vm.name)}`)]);
  const takes = [
    `the definition of VM ${vm.name}`,
    ...vm.disks.map((d) => `disk ${d.name}: ${d.path} (${d.format})`),
    `its snapshot tree: ${tree.snapshots.length} snapshots, ${bytes(tree.total_size)} in all`,
    `Not taken: its ${backups.length} backups stay in the store and can be restored.`,
  ];
  if (!await confirmAction(`Delete VM ${vm.name}?`, takes, "Delete")) return undefined;
  return call("DELETE", path);
}

export function vmActions(vm, after, onDeleted = after) {
  const path = `/vms/${encodeURIComponent(vm.name)}`;
  if (RUNNING.includes(vm.state)) {
    return [
      may("POST", `${path}/console`) && h("a", { href: `#/console/${encodeURIComponent(vm.name)}`, class: "console" }, "Console"),
      actionButton("Stop", "POST", `${path}/stop`, () => call("POST", `${path}/stop`, { timeout: 60 }), after),
      actionButton("Force off", "POST", `${path}/stop`, async () => {
        const takes = ["The guest is cut off like a power failure: what it has not written to its disks is lost."];
        return await confirmAction(`Force VM ${vm.name} off?`, takes, "Force off")
          ? call("POST", `${path}/stop`, { force: true, timeout: 0 }) : undefined;
      }, after, { class: "danger" }),
    ];
  }
  return [
    actionButton("Start", "POST", `${path}/start`, () => call("POST", `${path}/start`), after),
    actionButton("Delete", "DELETE", path, () => deleteVM(vm), onDeleted,
                 { class: "danger" }),
  ];
}
