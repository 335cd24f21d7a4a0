// One search across VMs (by name), backups (by ID or VM) and jobs (by kind or what they act on):
// the header's search box leads here. Each list is asked of the API, which does the matching.
import { getPage, listPath } from "../api.js";
import { age, fill, h, table } from "../dom.js";
import { jobBar } from "../ui.js";

const SHOWN = 50;

// Items matching any of the filters (each a separate query: a list's filters all have to hold), once each.
async function anyOf(path, filters, key, sort) {
  const pages = await Promise.all(filters.map((f) => getPage(listPath(path, { limit: SHOWN, sort, filters: [f] }))));
  const seen = new Map();
  for (const page of pages) for (const item of page.items) seen.set(item[key], item);
  return [...seen.values()];
}

export async function searchPage(main, { query }) {
  const text = (new URLSearchParams(query ?? "").get("q") ?? "").trim();
  document.getElementById("search").value = text;
  if (!text) {
    fill(main, h("h1", {}, "Search"), h("p", { class: "muted" }, "Type a VM's name, a backup's ID or a job's kind."));
    return;
  }
  const [vms, backups, jobs] = await Promise.all([
    anyOf("/vms", [`name:contains:${text}`], "name", "name"),
    anyOf("/backups", [`id:contains:${text}`, `vm_name:contains:${text}`], "id", "-started_at"),
    anyOf("/jobs", [`kind:contains:${text}`, `resource:contains:${text}`, `id:contains:${text}`], "id", "-created_at")]);
  const vmLink = (name) => h("a", { href: `#/vm/${encodeURIComponent(name)}` }, name);
  fill(main, h("h1", {}, `Search: ${text}`),
    h("h2", {}, `VMs (${vms.length})`),
    table(["VM", "State"], vms.map((v) => h("tr", { "data-found-vm": v.name },
      h("td", {}, vmLink(v.name)), h("td", { class: `state-${v.state}` }, v.state))), "none"),
    h("h2", {}, `Backups (${backups.length})`),
    table(["Backup", "VM", "Status", "Started"], backups.map((b) => h("tr", { "data-found-backup": b.id },
      h("td", {}, b.id), h("td", {}, vmLink(b.vm_name)), h("td", { class: `status-${b.status}` }, b.status),
      h("td", {}, age(b.started_at)))), "none"),
    h("h2", {}, `Jobs (${jobs.length})`),
    table(["Job", "On", "State", "Created"], jobs.map((j) => h("tr", { "data-found-job": j.id },
      h("td", {}, h("a", { href: `#/job/${encodeURIComponent(j.id)}` }, j.kind)), h("td", {}, j.resource),
      h("td", {}, jobBar(j)), h("td", {}, age(j.created_at)))), "none"));
}
