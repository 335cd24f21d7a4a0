// A VM's snapshot tree, drawn as a tree, with create, revert and delete (by commit or pull) on any node.
import { bytes, h, when } from "../dom.js";
import { actionButton, actionForm, confirmAction, field, runJob } from "../ui.js";

function childrenOf(tree) {
  const children = new Map();
  for (const s of tree.snapshots) {
    if (!children.has(s.parent)) children.set(s.parent, []);
    children.get(s.parent).push(s);
  }
  return children;
}

function revert(path, vm, snap, running, after) {
  const takes = [`The disks of ${vm} go back to snapshot ${snap.name} (${when(snap.created)}).`,
                 "What was written since the last snapshot before now, and not in a snapshot, is discarded."];
  if (snap.memory) takes.push("The VM is restarted from the snapshot's memory state.");
  else if (running) takes.push("This snapshot has no memory state: stop the VM first.");
  return actionButton("Revert", "POST", `${path}/${snap.id}/revert`, async () =>
    await confirmAction(`Revert ${vm} to ${snap.name}?`, takes, "Revert")
      ? runJob("POST", `${path}/${snap.id}/revert`, {}, `Reverting ${vm} to ${snap.name}…`) : undefined, after);
}

function remove(path, vm, snap, after) {
  const via = h("select", { name: "via" }, h("option", { value: "" }, "whichever moves less data"),
    h("option", { value: "commit" }, "commit: the newer layer's data moves down into this one"),
    h("option", { value: "pull" }, "pull: this layer's data is copied up into the newer ones"));
  const takes = [`The point in time ${snap.name} (${when(snap.created)}) is gone; no later state loses data.`,
                 `Its layer, ${bytes(snap.size)}, is merged into a neighbour, which takes a while on large layers.`];
  return actionButton("Delete", "DELETE", `${path}/${snap.id}`, async () => {
    if (!await confirmAction(`Delete snapshot ${snap.name} of ${vm}?`, takes, "Delete", field("Merge by", via))) {
      return undefined;
    }
    return runJob("DELETE", `${path}/${snap.id}`, via.value ? { via: via.value } : {},
                  `Deleting snapshot ${snap.name} of ${vm}…`);
  }, after, { class: "danger" });
}

export function snapshotSection(vm, tree, redraw) {
  const path = `/vms/${encodeURIComponent(vm.name)}/snapshots`;
  const running = ["running", "paused"].includes(vm.state);
  const children = childrenOf(tree);
  const now = h("li", { "data-now": "" }, h("span", { class: "node now" }, "now: the VM's current state"));
  const branch = (parent) => {
    const items = (children.get(parent) ?? []).map((snap) => h("li", { "data-snapshot": snap.name },
      h("span", { class: "node" }, h("strong", {}, snap.name), h("span", { class: "muted" }, when(snap.created)),
        bytes(snap.size), snap.memory && h("span", { class: "badge" }, "memory"),
        snap.automatic && h("span", { class: "badge" }, "automatic"),
        revert(path, vm.name, snap, running, redraw), remove(path, vm.name, snap, redraw)),
      branch(snap.id)));
    if (parent === tree.current.parent) items.push(now);
    return items.length ? h("ul", {}, items) : null;
  };
  const drawn = branch(null);
  drawn.classList.add("tree");
  const create = actionForm("POST", path, [
    field("Name", h("input", { name: "name", placeholder: "automatic if empty" })),
    field("With memory", h("input", { name: "memory", type: "checkbox", value: "yes", disabled: !running })),
  ], "Take snapshot", async (values, form) => {
    await runJob("POST", path, { name: values.name || null, memory: values.memory === "yes" },
                 `Taking a snapshot of ${vm.name}…`);
    form.reset();
    await redraw();
  });
  return [h("h2", {}, `Snapshots (${tree.snapshots.length}, ${bytes(tree.total_size)})`), drawn, create];
}
