// A VM's backups: back up now; restore one as a new VM, instantly, over the VM or a disk to a target; browse
// its files; protect it from pruning, lock it until a date; delete. An action that changes a backup redraws
// its row from the API's answer, without asking for the list again.
import { call, download } from "../api.js";
import { age, bytes, h, table, when } from "../dom.js";
import { actionButton, actionForm, confirmAction, confirmedDeletion, field, notify, runJob } from "../ui.js";
import { filesAddress } from "./files.js";

function restoreAsNew(backup) {
  const path = `/backups/${backup.id}/restore`;
  const name = h("input", { name: "name", required: true, value: `${backup.vm_name}-restored` });
  return actionButton("Restore as new VM", "POST", path, async () => {
    const takes = [`A new VM is created from backup ${backup.id} (${when(backup.started_at)}), its disks verified.`];
    if (!await confirmAction(`Restore ${backup.id} as a new VM?`, takes, "Restore", field("New VM's name", name))) {
      return undefined;
    }
    return runJob("POST", path, { mode: "new", name: name.value, verify: true },
                  `Restoring ${backup.id} as VM ${name.value}…`);
  }, (result) => notify(`Restored ${result.backup_id} as VM ${result.vm} (${bytes(result.bytes_written)} written, verified).`));
}

function restoreOver(backup, after) {
  const path = `/backups/${backup.id}/restore`;
  const stop = h("input", { type: "checkbox", name: "stop" });
  return actionButton("Restore over VM", "POST", path, async () => {
    const takes = [`Every disk of VM ${backup.vm_name} is overwritten with backup ${backup.id} (${when(backup.started_at)}).`,
                   "What the disks hold now is lost, unless it is in a backup or snapshot."];
    return await confirmAction(`Overwrite VM ${backup.vm_name}?`, takes, "Overwrite",
                               field("Shut the VM down first if it runs", stop))
      ? runJob("POST", path, { mode: "over", stop: stop.checked, verify: true },
               `Restoring ${backup.id} over VM ${backup.vm_name}…`) : undefined;
  }, async (result) => {
    notify(`Restored ${result.backup_id} over VM ${result.vm}.`);
    await after();
  }, { class: "danger" });
}

function restoreDiskTo(backup, disk) {
  const path = `/backups/${backup.id}/disks/${encodeURIComponent(disk)}/restore`;
  const target = h("input", { name: "target", required: true, placeholder: "/srv/restore/disk.qcow2, /dev/sdb, nbd://…" });
  const format = h("select", { name: "format" }, h("option", { value: "qcow2" }, "qcow2"), h("option", { value: "raw" }, "raw"));
  const force = h("input", { type: "checkbox", name: "force" });
  return actionButton(`Restore ${disk} to…`, "POST", path, async () => {
    const takes = [`Disk ${disk} of backup ${backup.id} (${when(backup.started_at)}) is written to the target and verified.`,
                   "A file appears only when complete; a device or NBD export is overwritten only with force."];
    const extra = h("div", {}, field("Target (file, block device or NBD URL)", target), field("File format", format),
                    field("Replace an existing target", force));
    return await confirmAction(`Restore disk ${disk} of ${backup.id}?`, takes, "Restore", extra)
      ? runJob("POST", path, { target: target.value, format: format.value, force: force.checked, verify: true },
               `Restoring ${disk} of ${backup.id} to ${target.value}…`)
      : undefined;
  }, (result) => notify(`Restored ${result.disk} of ${result.backup_id} to ${result.target} `
                        + `(${bytes(result.bytes_written)} written, verified).`), { class: "danger" });
}

function instantRestore(backup) {
  const path = `/backups/${backup.id}/instant-restore`;
  const name = h("input", { name: "name", required: true, value: `${backup.vm_name}-instant` });
  return actionButton("Instant restore", "POST", path, async () => {
    const takes = [`A new VM runs from backup ${backup.id} at once; its disks are copied in while it runs.`];
    return await confirmAction(`Start backup ${backup.id} as a VM now?`, takes, "Start", field("New VM's name", name))
      ? runJob("POST", path, { name: name.value }, `Starting VM ${name.value} on backup ${backup.id}…`) : undefined;
  }, (state) => notify(`VM ${state.vm} runs from backup ${state.backup_id}; its disks are being copied in (${state.status}).`));
}

// The last boot test of each backup run from this page, and its screen (a data: URL: the page's
// policy lets images come from the appliance or data: only), kept across the page's redraws.
const bootTests = new Map();

async function screenOf(result) {
  if (!result.has_screen) return null;
  const png = await download(`/backups/${result.backup_id}/boot-tests/${result.id}/screen`);
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(png);
  });
}

// `results`: where the section shows boot tests' results.
function bootTest(backup, results) {
  const path = `/backups/${backup.id}/boot-test`;
  return actionButton("Boot test", "POST", path, () => {
    notify(`Booting backup ${backup.id} in an isolated VM…`);
    return call("POST", path, {});
  }, async (result) => {
    const shown = { ...result, screen: await screenOf(result) };
    bootTests.set(backup.id, shown);
    notify(result.passed ? `Backup ${backup.id} boots: ${result.reason}.` : `Backup ${backup.id} did not boot: ${result.reason}.`,
           !result.passed);
    const card = bootTestResult(shown);
    const before = results.querySelector(`[data-boot-test="${CSS.escape(backup.id)}"]`);
    if (before) before.replaceWith(card);
    else results.append(card);
  });
}

// What the booted backup showed on its console, as the boot test saw it.
function bootTestResult(result) {
  return h("section", { class: "card", "data-boot-test": result.backup_id, "data-passed": String(result.passed) },
    h("h3", {}, `Boot test of ${result.backup_id}: `,
      h("span", { class: result.passed ? "status-ok" : "status-failed" }, result.passed ? "passed" : "failed"),
      ` in ${result.seconds.toFixed(1)} s`),
    h("p", {}, result.reason),
    result.screen && h("img", { class: "screen-shot", src: result.screen, alt: `the screen of backup ${result.backup_id} booted` }),
    h("pre", { class: "screen-text", tabindex: "0", "aria-label": "the booted backup's console" },
      result.console || "(the console showed nothing)"));
}

// Never pruned, and not deleted until unprotected: the answer is the backup as it is then.
function protection(backup, redrawRow) {
  const path = `/backups/${backup.id}/protection`;
  const method = backup.protected ? "DELETE" : "PUT";
  return actionButton(backup.protected ? "Unprotect" : "Protect", method, path, () => call(method, path), (answer) => {
    notify(answer.protected ? `Backup ${answer.id} is protected: no prune removes it, and it cannot be deleted until unprotected.`
      : `Backup ${answer.id} is no longer protected: retention rules and deletion apply to it again.`);
    redrawRow(answer);
  });
}

// A retention lock (the admin's): nobody deletes the backup before the date, nor shortens the lock.
function lock(backup) {
  const path = `/store/backups/${backup.id}/lock`;
  const inMonth = new Date(Date.now() + 30 * 86400_000);
  const until = h("input", { type: "date", name: "until", required: true,
                             value: inMonth.toISOString().slice(0, 10) });
  return actionButton("Lock until…", "POST", path, async () => {
    const takes = [`Backup ${backup.id} cannot be deleted, pruned or collected until the end of that day (UTC).`,
                   "A lock cannot be shortened, only extended."];
    return await confirmAction(`Lock backup ${backup.id}?`, takes, "Lock", field("Until", until))
      ? call("POST", path, { until: `${until.value}T23:59:59Z` }) : undefined;
  }, (locked) => notify(`Backup ${locked.backup_id} is locked until ${when(locked.locked_until)}.`));
}

// Deleting answers what it took: a backup waiting in the recycle bin stays listed as "recycled", one
// deleted at once leaves the list.
function remove(backup, redrawRow, removeRow) {
  const path = `/backups/${backup.id}`;
  return actionButton("Delete", "DELETE", path, () => confirmedDeletion(`Delete backup ${backup.id}?`, path), (impact) => {
    notify(impact.mode === "delayed" ? `Backup ${backup.id} is in the recycle bin until ${when(impact.purge_at)}.`
      : `Backup ${backup.id} is deleted.`);
    if (impact.mode === "delayed") redrawRow({ ...backup, status: "recycled" });
    else removeRow();
  }, { class: "danger" });
}

// The ways to restore a backup, in one menu so a row stays one line of actions: as a new VM, as a
// VM at once, over the VM, one disk to a target. Only those the user may make; none, no menu.
function restoreMenu(vm, backup, redraw) {
  const items = [restoreAsNew(backup), instantRestore(backup), restoreOver(backup, redraw),
                 ...vm.disks.map((d) => restoreDiskTo(backup, d.name))].filter(Boolean);
  if (!items.length) return null;
  const menu = h("details", { class: "menu" }, h("summary", {}, "Restore…"), h("div", {}, items));
  // An item chosen closes the menu (its dialog or notice says what happens next).
  menu.addEventListener("click", (event) => { if (event.target.closest("button")) menu.open = false; });
  return menu;
}

function backupRow(vm, b, results, redraw) {
  const row = h("tr", { "data-backup": b.id, "data-protected": String(b.protected) },
    h("td", {}, b.id, b.protected && [" ", h("span", { class: "badge protected", title: "never pruned; not deleted until unprotected" },
                                             "protected")]),
    h("td", {}, b.kind), h("td", { class: `status-${b.status}`, title: b.error ?? "" }, b.status),
    h("td", { title: when(b.started_at) }, age(b.started_at)), h("td", {}, bytes(b.size)),
    h("td", {}, bytes(b.bytes_stored)), h("td", {}, b.error ?? b.notes.join("; ")),
    h("td", { class: "actions" }, b.status === "ok" && [restoreMenu(vm, b, redraw),
      bootTest(b, results), protection(b, redrawRow), lock(b),
      vm.disks.map((d) => h("a", { href: filesAddress(b.id, d.name), class: "files" }, `files of ${d.name}`))],
      !["running", "recycled"].includes(b.status) && remove(b, redrawRow, () => shown()?.remove())));
  // The row the page shows now: a live redraw may have drawn the section anew while the action ran.
  const shown = () => (row.isConnected ? row : document.querySelector(`tr[data-backup="${CSS.escape(b.id)}"]`));
  function redrawRow(answer) {
    shown()?.replaceWith(backupRow(vm, answer, results, redraw));
  }
  return row;
}

// `backups`: a page of the VM's backups, newest first, and their total. `redraw` draws the whole page
// again: only restoring over the VM needs it (the VM's disks and state are not in the answer).
export function backupSection(vm, backups, redraw) {
  const start = actionForm("POST", `/vms/${encodeURIComponent(vm.name)}/backups`,
    [field("Full (read everything)", h("input", { type: "checkbox", name: "full", value: "yes" }))], "Back up now",
    async (values) => {
      // The answer is the job: the page's live events draw the backup as the job runs and ends.
      const job = await call("POST", `/vms/${encodeURIComponent(vm.name)}/backups`, { full: values.full === "yes" });
      notify(`Backup job ${job.id} of ${vm.name} is ${job.state}.`);
    });
  const results = h("div", { "data-boot-tests": "" },
    backups.items.filter((b) => bootTests.has(b.id)).map((b) => bootTestResult(bootTests.get(b.id))));
  return [
    h("h2", {}, `Backups (${backups.total})`), start,
    table(["Backup", "Kind", "Status", "Started", "Size", "Stored", "Notes", ""],
          backups.items.map((b) => backupRow(vm, b, results, redraw)), "no backups yet"),
    results,
  ];
}
