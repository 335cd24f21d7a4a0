// The estate at a glance: VMs, the last backup of each, the store, jobs at work, failures and alarms.
import { count, get, getPage, listPath } from "../api.js";
import { age, bytes, fill, h, table, when } from "../dom.js";
import { ROWS_PER_PAGE, jobBar, live } from "../ui.js";

const ACTIVE_JOBS = "/jobs?sort=-created_at&filter=" + encodeURIComponent("state:in:queued|running");
const FAILED_JOBS = "/jobs?sort=-created_at&limit=10&filter=state:eq:failed";
const ALARMS = "/events?sort=-id&limit=10&filter=" + encodeURIComponent("severity:in:warning|error");

// The newest backup of each VM shown (names first..last: the API's `latest` backups in that range of names).
async function lastBackups(vms) {
  const last = new Map();
  if (!vms.length) return last;
  const range = [`vm_name:ge:${vms[0].name}`, `vm_name:le:${vms[vms.length - 1].name}`];
  for (let offset = 0, total = 1; offset < total; offset += ROWS_PER_PAGE) {
    const page = await getPage(listPath("/backups", { latest: true, sort: "vm_name", limit: ROWS_PER_PAGE, offset,
                                                      filters: range }));
    for (const b of page.items) last.set(b.vm_name, b);
    total = page.total;
  }
  return last;
}

function storeCard(stats) {
  if (stats.error) return h("div", {}, h("div", { class: "muted" }, "Store"), stats.error);
  return h("div", { "data-card": "store" }, h("div", { class: "muted" }, "Store"),
    h("div", { class: "big" }, bytes(stats.stored_bytes)),
    `${bytes(stats.logical_bytes)} backed up in ${stats.backups} backups · dedup ×${stats.dedup_ratio.toFixed(2)}`
    + ` · compression ×${stats.compression_ratio.toFixed(2)}`);
}

export async function dashboardPage(main, _params, signal) {
  const draw = async () => {
    const [vms, running, good, bad, stats, active, failed, alarms] = await Promise.all([
      getPage(listPath("/vms", { limit: ROWS_PER_PAGE })), count("/vms", ["state:eq:running"]),
      count("/backups", ["status:eq:ok"]), count("/backups", ["status:eq:failed"]),
      get("/store/stats").catch((e) => ({ error: e.message })), get(ACTIVE_JOBS), get(FAILED_JOBS), get(ALARMS)]);
    const last = await lastBackups(vms.items);
    fill(main, 
      h("h1", {}, "Dashboard"),
      h("div", { class: "cards" },
        h("div", { "data-card": "vms" }, h("div", { class: "muted" }, "VMs"),
          h("div", { class: "big" }, `${running} running`), `${vms.total - running} not running`),
        h("div", { "data-card": "backups" }, h("div", { class: "muted" }, "Backups"),
          h("div", { class: "big" }, String(good)), `${bad} failed`),
        storeCard(stats),
        h("div", { "data-card": "failed-jobs" }, h("div", { class: "muted" }, "Failed jobs"),
          h("div", { class: "big" }, String(failed.length)), "most recent ten")),
      h("h2", {}, "Jobs at work"),
      table(["Job", "On", "Progress", "Since"], active.map((j) => h("tr", {},
        h("td", {}, j.kind), h("td", {}, j.resource), h("td", {}, jobBar(j)), h("td", {}, age(j.created_at)))),
        "nothing running"),
      h("h2", {}, "Last backup of each VM"),
      vms.total > vms.items.length && h("p", { class: "muted" },
        `The first ${vms.items.length} of ${vms.total} VMs; `, h("a", { href: "#/vms" }, "all on the VMs page"), "."),
      table(["VM", "State", "Last backup", "Result"], vms.items.map((v) => {
        const b = last.get(v.name);
        return h("tr", { "data-vm": v.name },
          h("td", {}, h("a", { href: `#/vm/${encodeURIComponent(v.name)}` }, v.name)),
          h("td", { class: `state-${v.state}` }, v.state),
          h("td", { title: b ? when(b.started_at) : "" }, b ? age(b.finished_at ?? b.started_at) : "never"),
          h("td", { class: b ? `status-${b.status}` : "muted", title: b?.error ?? "" }, b ? `${b.status} (${b.kind})` : "–"));
      }), "no VMs yet"),
      h("h2", {}, "Failed jobs"),
      table(["When", "Job", "On", "Error"], failed.map((j) => h("tr", {},
        h("td", {}, when(j.finished_at ?? j.created_at)), h("td", {}, j.kind), h("td", {}, j.resource),
        h("td", {}, j.error ?? ""))), "none"),
      h("h2", {}, "Alarms"),
      table(["When", "Severity", "What"], alarms.map((e) => h("tr", {},
        h("td", {}, when(e.created_at)), h("td", { class: e.severity === "error" ? "status-failed" : "" }, e.severity),
        h("td", {}, e.message))), "none"));
  };
  await draw();
  live(main, signal, draw);
}
