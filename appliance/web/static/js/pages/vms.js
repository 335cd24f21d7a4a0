// The VM list, filtered and paged by the API: create, and each VM's lifecycle.
import { call, get, getPage, listPath } from "../api.js";
import { fill, h } from "../dom.js";
import { ROWS_PER_PAGE, actionForm, attempt, field, pager } from "../ui.js";
import { vmActions } from "./vm_actions.js";

// "1G, 512M" -> ["1G", "512M"]
const sizes = (text) => text.split(/[\s,]+/).filter(Boolean);

function imageChoice(name, images, kind) {
  return h("select", { name }, h("option", { value: "" }, "none"),
    images.filter((i) => i.kind === kind).map((i) => h("option", { value: i.name }, i.name)));
}

// The VM's network card: none, QEMU's user-mode NAT, or a NIC on one of the appliance's networks
// (added once the VM exists, as any NIC of a stopped VM: the network reserves its address).
function nicChoice(networks) {
  return h("select", { name: "nic" }, h("option", { value: "" }, "none"), h("option", { value: "user" }, "NAT (user mode)"),
    networks.map((n) => h("option", { value: `network:${n.name}` }, `network ${n.name} (${n.subnet})`)));
}

function createForm(images, networks, created) {
  const fields = [
    field("Name", h("input", { name: "name", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9_.\\-]*" })),
    field("vCPUs", h("input", { name: "vcpus", type: "number", min: "1", value: "1" })),
    field("Memory (MiB)", h("input", { name: "memory_mib", type: "number", min: "16", value: "256" })),
    field("Disks (sizes)", h("input", { name: "disks", placeholder: "10G, 2G" })),
    field("Disk image", imageChoice("image", images, "disk")),
    field("ISO", imageChoice("iso", images, "iso")),
    field("Network card", nicChoice(networks)),
    h("details", {}, h("summary", {}, "Boot a kernel directly"),
      // A library image by name; only an admin may give a path on the appliance host instead.
      field("Kernel", h("input", { name: "kernel", size: "40", placeholder: "library image (admins: a host path)" })),
      field("Initrd", h("input", { name: "initrd", size: "40", placeholder: "library image (admins: a host path)" })),
      field("Kernel arguments", h("input", { name: "append", size: "40" }))),
  ];
  return actionForm("POST", "/vms", fields, "Create VM", async (values, form) => {
    const body = { name: values.name, vcpus: Number(values.vcpus), memory_mib: Number(values.memory_mib),
                   disks: sizes(values.disks) };
    for (const key of ["image", "iso", "kernel", "initrd", "append"]) if (values[key]) body[key] = values[key];
    if (values.nic === "user") body.nics = [{ mode: "user" }];
    await call("POST", "/vms", body);
    if (values.nic.startsWith("network:")) {
      const network = values.nic.slice("network:".length);
      await call("POST", `/vms/${encodeURIComponent(body.name)}/nics`, { network });
    }
    form.reset();
    await created(body.name);
  });
}

const STATES = ["running", "paused", "stopped", "crashed"];

// The page's query: a name filter and a state, asked of the API (which filters and pages them).
function vmQuery(name, state, offset) {
  const filters = [];
  if (name) filters.push(`name:contains:${name}`);
  if (state) filters.push(`state:eq:${state}`);
  return listPath("/vms", { limit: ROWS_PER_PAGE, offset, filters });
}

export async function vmsPage(main) {
  const filter = h("input", { type: "search", placeholder: "filter by name", "aria-label": "filter" });
  const state = h("select", { "aria-label": "state" }, h("option", { value: "" }, "any state"),
    STATES.map((s) => h("option", { value: s }, s)));
  const rows = h("tbody");
  const where = h("div");
  let offset = 0;
  // A VM's row. An action's answer carries the VM's new state (start, stop: the VM; delete: what it
  // took), so the row is drawn again from it, with no second call; only a deletion reloads the page.
  const row = (v) => {
    const tr = h("tr", { "data-vm": v.name },
      h("td", {}, h("a", { href: `#/vm/${encodeURIComponent(v.name)}` }, v.name)),
      h("td", { class: `state-${v.state}` }, v.state), h("td", {}, String(v.vcpus)), h("td", {}, `${v.memory_mib} MiB`),
      h("td", {}, v.disks.map((d) => d.name).join(", ")),
      h("td", { class: "actions" }, vmActions(v, (changed) => (changed?.state ? tr.replaceWith(row(changed)) : load()),
                                              () => load())));
    return tr;
  };
  const load = async () => {
    const { items, total } = await getPage(vmQuery(filter.value.trim(), state.value, offset));
    rows.replaceChildren(...items.map(row));
    if (!items.length) rows.replaceChildren(h("tr", {}, h("td", { colspan: "6", class: "muted" }, "no VMs")));
    fill(where, pager(offset, ROWS_PER_PAGE, total, (to) => { offset = to; attempt(load); }));
  };
  let typing;
  const refilter = () => { offset = 0; attempt(load); };
  filter.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(refilter, 250); });
  state.addEventListener("change", refilter);
  const [images, networks] = await Promise.all([get("/images"), get("/networks")]);
  const form = createForm(images, networks, (name) => { location.hash = `#/vm/${encodeURIComponent(name)}`; });
  fill(main, h("h1", {}, "VMs"), h("p", { class: "actions" }, filter, " ", state),
    h("table", {}, h("thead", {}, h("tr", {}, ["Name", "State", "vCPUs", "Memory", "Disks", ""].map((t) => h("th", {}, t)))),
      rows),
    where, form && h("h2", {}, "New VM"), form);
  await load();
}
