// A VM's lifecycle actions, shared by the VM list and the VM's page: start, stop, force off, console, delete;
// and the VM page's changes to a stopped VM's disks and network cards.
import { call } from "../api.js";
import { h } from "../dom.js";
import { may } from "../roles.js";
import { actionButton, actionForm, confirmAction, confirmedDeletion, field, notify } from "../ui.js";

const RUNNING = ["running", "paused"];
const STOP_TIMEOUT = 60;   // seconds the guest gets to shut down before QEMU is ended
// How a stop went (the answer's `how`, which the vm.stop job's task log says too).
const HOW_STOPPED = {
  powerdown: "the guest shut down", quit: "QEMU was ended without the guest shutting down",
  kill: "QEMU did not quit and was killed", "already-stopped": "it was not running",
  unknown: "its host does not say whether the guest shut down",
};

// A start or stop answers the VM once its job ended: the notice says how, and names the job.
const told = (after) => async (vm) => {
  const how = vm.how ? `stopped: ${HOW_STOPPED[vm.how] ?? vm.how}` : vm.state;
  notify(`VM ${vm.name} ${how} (job ${vm.job_id}).`);
  await after(vm);
};

export function vmActions(vm, after, onDeleted = after) {
  const path = `/vms/${encodeURIComponent(vm.name)}`;
  if (RUNNING.includes(vm.state)) {
    return [
      may("POST", `${path}/console`) && h("a", { href: `#/console/${encodeURIComponent(vm.name)}`, class: "console" }, "Console"),
      actionButton("Stop", "POST", `${path}/stop`, () => {
        notify(`Asked the guest of VM ${vm.name} to shut down (ACPI power button): QEMU is ended if it has not `
               + `within ${STOP_TIMEOUT} s (Force off: at once).`);
        return call("POST", `${path}/stop`, { timeout: STOP_TIMEOUT });
      }, told(after)),
      actionButton("Force off", "POST", `${path}/stop`, async () => {
        const takes = ["The guest is cut off like a power failure: what it has not written to its disks is lost."];
        return await confirmAction(`Force VM ${vm.name} off?`, takes, "Force off")
          ? call("POST", `${path}/stop`, { force: true, timeout: 0 }) : undefined;
      }, told(after), { class: "danger" }),
    ];
  }
  return [
    actionButton("Start", "POST", `${path}/start`, () => call("POST", `${path}/start`), told(after)),
    actionButton("Delete", "DELETE", path, () => confirmedDeletion(`Delete VM ${vm.name}?`, path), onDeleted,
                 { class: "danger" }),
  ];
}

// A stopped VM's disks and network cards, added and removed: each call answers the VM as it is
// now, which `shown(vm)` puts on the page (no second request).
const NIC_MODELS = ["virtio-net-pci", "e1000", "rtl8139"];

// A form's values without its empty fields: the API's defaults apply to those.
const given = (values) => Object.fromEntries(Object.entries(values).filter(([, v]) => v !== ""));

export function addDiskForm(vm, shown) {
  const path = `/vms/${encodeURIComponent(vm.name)}/disks`;
  return actionForm("POST", path, [
    field("Size", h("input", { name: "size", placeholder: "10G" })),
    field("Format", h("select", { name: "format" }, h("option", { value: "" }, "qcow2"), h("option", { value: "raw" }, "raw"))),
    field("From library image", h("input", { name: "image", placeholder: "optional" })),
  ], "Add disk", async (values) => {
    const changed = await call("POST", path, given(values));
    const disk = changed.disks.at(-1);
    notify(`VM ${changed.name} has disk ${disk.name} (${disk.format}) from its next start.`);
    await shown(changed);
  });
}

export function removeDiskButton(vm, disk, shown) {
  const path = `/vms/${encodeURIComponent(vm.name)}/disks/${encodeURIComponent(disk.name)}`;
  return actionButton("Remove", "DELETE", path, async () => {
    const deleteFile = h("input", { type: "checkbox", name: "delete_file" });
    const takes = [`The guest no longer sees disk ${disk.name} from its next start.`, `Its file stays unless deleted: ${disk.path}`];
    const extra = h("label", {}, deleteFile, " Delete its file too");
    return await confirmAction(`Remove disk ${disk.name} of VM ${vm.name}?`, takes, "Remove", extra)
      ? call("DELETE", `${path}?delete_file=${deleteFile.checked}`) : undefined;
  }, shown, { class: "danger" });
}

export function addNicForm(vm, shown) {
  const path = `/vms/${encodeURIComponent(vm.name)}/nics`;
  return actionForm("POST", path, [
    field("Network", h("input", { name: "network", placeholder: "none: user mode" })),
    field("Model", h("select", { name: "model" }, h("option", { value: "" }, "the profile's"),
      NIC_MODELS.map((m) => h("option", { value: m }, m)))),
    field("MAC", h("input", { name: "mac", placeholder: "random" })),
  ], "Add NIC", async (values) => {
    const changed = await call("POST", path, given(values));
    const nic = changed.nics.at(-1);
    notify(`VM ${changed.name} has NIC ${nic.name} (${nic.mac}) from its next start.`);
    await shown(changed);
  });
}

export function removeNicButton(vm, nic, shown) {
  const path = `/vms/${encodeURIComponent(vm.name)}/nics/${encodeURIComponent(nic.mac)}`;
  return actionButton("Remove", "DELETE", path, async () => {
    const takes = [`The guest no longer sees NIC ${nic.name} (${nic.mac}) from its next start; on a network, its address is released.`];
    return await confirmAction(`Remove NIC ${nic.name} of VM ${vm.name}?`, takes, "Remove") ? call("DELETE", path) : undefined;
  }, shown, { class: "danger" });
}
