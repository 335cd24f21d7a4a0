// The estate at a glance: VMs, the last backup of each, the store, jobs at work, failures and alarms.
import { get } from "../api.js";
import { age, bytes, fill, h, table, when } from "../dom.js";
import { jobBar, live } from "../ui.js";

const ACTIVE_JOBS = "/jobs?sort=-created_at&filter=" + encodeURIComponent("state:in:queued|running");
const FAILED_JOBS = "/jobs?sort=-created_at&limit=10&filter=state:eq:failed";
const ALARMS = "/events?sort=-id&limit=10&filter=" + encodeURIComponent("severity:in:warning|error");

function lastBackups(backups) {
  const last = new Map();
  for (const b of backups) {
    if (!last.has(b.vm_name) || b.started_at > last.get(b.vm_name).started_at) last.set(b.vm_name, b);
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
    const [vms, backups, stats, active, failed, alarms] = await Promise.all([
      get("/vms"), get("/backups"), get("/store/stats").catch((e) => ({ error: e.message })),
      get(ACTIVE_JOBS), get(FAILED_JOBS), get(ALARMS)]);
    const running = vms.filter((v) => v.state === "running").length;
    const last = lastBackups(backups);
    fill(main, 
      h("h1", {}, "Dashboard"),
      h("div", { class: "cards" },
        h("div", { "data-card": "vms" }, h("div", { class: "muted" }, "VMs"),
          h("div", { class: "big" }, `${running} running`), `${vms.length - running} not running`),
        h("div", { "data-card": "backups" }, h("div", { class: "muted" }, "Backups"),
          h("div", { class: "big" }, String(backups.filter((b) => b.status === "ok").length)),
          `${backups.filter((b) => b.status === "failed").length} failed`),
        storeCard(stats),
        h("div", { "data-card": "failed-jobs" }, h("div", { class: "muted" }, "Failed jobs"),
          h("div", { class: "big" }, String(failed.length)), "most recent ten")),
      h("h2", {}, "Jobs at work"),
      table(["Job", "On", "Progress", "Since"], active.map((j) => h("tr", {},
        h("td", {}, j.kind), h("td", {}, j.resource), h("td", {}, jobBar(j)), h("td", {}, age(j.created_at)))),
        "nothing running"),
      h("h2", {}, "Last backup of each VM"),
      table(["VM", "State", "Last backup", "Result"], vms.map((v) => {
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
