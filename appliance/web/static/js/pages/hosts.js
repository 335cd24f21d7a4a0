// Other hypervisors (libvirt, or plain QEMU over SSH) and their VMs, which the appliance backs up,
// starts and stops; and the scheduling groups that say which VMs run together or apart. Each action's
// answer (the host, VM or group as it is now; a removal: it is gone) is drawn without asking again.
import { call, get } from "../api.js";
import { fill, h, table } from "../dom.js";
import { actionButton, actionForm, field, notify, runJob, withAnswer } from "../ui.js";

const words = (text) => text.split(/[\s,]+/).filter(Boolean);
const PLACEMENTS = ["vm-anti-affinity", "vm-affinity", "vm-host-anti-affinity", "vm-host-affinity"];

function hostForm(added) {
  return actionForm("POST", "/hosts", [
    field("Name", h("input", { name: "name", required: true })),
    field("Kind", h("select", { name: "kind" }, h("option", { value: "libvirt" }, "libvirt"),
      h("option", { value: "ssh" }, "SSH"))),
    field("URI", h("input", { name: "uri", required: true, size: "28", placeholder: "qemu+ssh://root@node2/system" })),
    field("Key file (ssh)", h("input", { name: "key_file", placeholder: "/etc/cairn/keys/node2" })),
    field("known_hosts", h("input", { name: "known_hosts" })),
    field("Its /var/lib/libvirt as seen here", h("input", { name: "libvirt_dir", placeholder: "/var/lib/libvirt" })),
  ], "Add host", async (values, form) => {
    const body = { name: values.name, kind: values.kind, uri: values.uri };
    for (const key of ["key_file", "known_hosts", "libvirt_dir"]) if (values[key]) body[key] = values[key];
    added(await call("POST", "/hosts", body));
    form.reset();
  });
}

// The VMs of one host, each with start, stop and back up (a job, followed to its end); a VM started
// or stopped is redrawn from the answer, the VM as it is then.
async function hostVMs(host, shown) {
  const base = `/hosts/${encodeURIComponent(host.name)}/vms`;
  let vms = await get(base);
  const changed = (vm) => { vms = withAnswer(vms, vm); render(); };
  const render = () => fill(shown, h("h2", {}, `VMs on ${host.name}`),
    table(["VM", "State", "vCPUs", "Memory", "Disks", ""], vms.map((v) => {
      const path = `${base}/${encodeURIComponent(v.name)}`;
      return h("tr", { "data-host-vm": v.name },
        h("td", {}, v.name), h("td", { class: `state-${v.state}` }, v.state), h("td", {}, String(v.vcpus)),
        h("td", {}, `${v.memory_mib} MiB`), h("td", {}, v.disks.map((d) => d.target).join(", ")),
        h("td", { class: "actions" },
          v.state !== "running" && actionButton("Start", "POST", `${path}/start`, () => call("POST", `${path}/start`), changed),
          v.state === "running" && actionButton("Stop", "POST", `${path}/stop`, () => call("POST", `${path}/stop`, {}), changed),
          actionButton("Back up", "POST", `${path}/backups`,
            () => runJob("POST", `${path}/backups`, {}, `Backing up ${v.name} of ${host.name}…`),
            (result) => notify(`Backed up ${v.name} of ${host.name}: backup ${result.backup_id}.`))));
    }), "no VMs on this host"));
  render();
}

function groupForm(saved) {
  return actionForm("PUT", "/scheduling-groups/x", [
    field("Name", h("input", { name: "name", required: true })),
    field("Rule", h("select", { name: "policy" }, PLACEMENTS.map((p) => h("option", { value: p }, p)))),
    field("Enforcement", h("select", { name: "enforcement" }, h("option", { value: "mandatory" }, "mandatory"),
      h("option", { value: "preferred" }, "preferred"))),
    field("VMs", h("input", { name: "vms", required: true, placeholder: "db1, db2" })),
    field("Hosts (vm-host rules)", h("input", { name: "hosts" })),
  ], "Save group", async (values, form) => {
    saved(await call("PUT", `/scheduling-groups/${encodeURIComponent(values.name)}`, {
      policy: values.policy, enforcement: values.enforcement, vms: words(values.vms), hosts: words(values.hosts) }));
    form.reset();
  });
}

export async function hostsPage(main) {
  const shown = h("div", { "data-host-vms": "" });
  let [hosts, groups] = await Promise.all([get("/hosts"), get("/scheduling-groups")]);
  const addHost = hostForm((host) => { hosts = withAnswer(hosts, host); render(); });
  const saveGroup = groupForm((group) => { groups = withAnswer(groups, group); render(); });
  const render = () => fill(main, h("h1", {}, "Hosts"),
    table(["Host", "Kind", "URI", ""], hosts.map((host) => {
      const path = `/hosts/${encodeURIComponent(host.name)}`;
      const removed = () => {
        hosts = hosts.filter((other) => other.name !== host.name);
        if (shown.dataset.host === host.name) fill(shown);
        render();
      };
      return h("tr", { "data-host": host.name },
        h("td", {}, host.name), h("td", {}, host.kind), h("td", {}, h("code", {}, host.uri)),
        h("td", { class: "actions" },
          actionButton("VMs", "GET", `${path}/vms`, () => { shown.dataset.host = host.name; return hostVMs(host, shown); }),
          actionButton("Remove", "DELETE", path, () => call("DELETE", path), removed, { class: "danger" })));
    }), "no other hosts: VMs run on this appliance"),
    addHost, shown,
    h("h2", {}, "Scheduling groups"),
    table(["Group", "Rule", "Enforcement", "VMs", "Hosts", ""], groups.map((g) => {
      const path = `/scheduling-groups/${encodeURIComponent(g.name)}`;
      const removed = () => { groups = groups.filter((other) => other.name !== g.name); render(); };
      return h("tr", { "data-group": g.name },
        h("td", {}, g.name), h("td", {}, g.policy), h("td", {}, g.enforcement), h("td", {}, g.vms.join(", ")),
        h("td", {}, g.hosts.join(", ") || "–"),
        h("td", { class: "actions" }, actionButton("Delete", "DELETE", path, () => call("DELETE", path), removed,
                                                   { class: "danger" })));
    }), "no scheduling groups"),
    saveGroup);
  render();
}
