// A VM's lifecycle actions, shared by the VM list and the VM's page: start, stop, force off, console, delete.
import { call } from "../api.js";
import { h } from "../dom.js";
import { may } from "../roles.js";
import { actionButton, confirmAction, confirmedDeletion } from "../ui.js";

const RUNNING = ["running", "paused"];

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
    actionButton("Delete", "DELETE", path, () => confirmedDeletion(`Delete VM ${vm.name}?`, path), onDeleted,
                 { class: "danger" }),
  ];
}
