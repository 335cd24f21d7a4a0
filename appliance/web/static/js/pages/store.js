// The store: what it holds, and its upkeep: verify, garbage collection, pruning (previewed first).
import { call, get, listPath } from "../api.js";
import { lineChart } from "../chart.js";
import { bytes, fill, h, parseTime, table, when } from "../dom.js";
import { may } from "../roles.js";
import { ROWS_PER_PAGE, actionButton, actionForm, confirmAction, field, live, runJob } from "../ui.js";

const KEEP = ["last", "hourly", "daily", "weekly", "monthly", "yearly"];

function statsTable(s) {
  const rows = [["Backups", `${s.backups} (${s.unreadable_backups} unreadable)`],
    ["Backed up (logical)", bytes(s.logical_bytes)], ["of which zeros", bytes(s.zero_bytes)],
    ["Unique data", `${bytes(s.unique_bytes)} in ${s.chunks} chunks`], ["Stored on disk", bytes(s.stored_bytes)],
    ["Dedup ratio", `×${s.dedup_ratio.toFixed(2)}`], ["Compression ratio", `×${s.compression_ratio.toFixed(2)}`],
    ["Unreferenced", `${s.unreferenced_chunks} chunks, ${bytes(s.unreferenced_bytes)}`],
    ["Missing chunks", String(s.missing_chunks)]];
  return h("table", { "data-stats": "" }, h("tbody", {}, rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)))));
}

function gcReport(r) {
  return h("p", { "data-gc-report": "" }, `${r.dry_run ? "Would remove" : "Removed"} ${r.chunks_removed} chunks`
    + ` (${bytes(r.bytes_removed)}); ${r.chunks_kept} kept, ${r.chunks_within_grace} unreferenced but too new.`);
}

function pruneSection(vms, show) {
  const rules = KEEP.map((k) => field(`keep ${k}`, h("input", { name: `keep_${k}`, type: "number", min: "0", value: "0" })));
  const vm = field("VM", h("select", { name: "vm" }, vms.map((v) => h("option", { value: v }, v))));
  return actionForm("POST", "/store/prune", [vm, ...rules], "Preview prune", async (values) => {
    const body = { vm: values.vm, dry_run: true };
    for (const k of KEEP) body[`keep_${k}`] = Number(values[`keep_${k}`] || 0);
    const report = await runJob("POST", "/store/prune", body, `Working out what pruning ${values.vm} would remove…`);
    const removed = report.decisions.filter((d) => !d.keep);
    show(h("div", { "data-prune-preview": "" },
      table(["Backup", "Created", "Decision", "Why"], report.decisions.map((d) => h("tr", {},
        h("td", {}, d.backup_id), h("td", {}, when(d.created)), h("td", { class: d.keep ? "" : "status-failed" },
          d.keep ? "keep" : "remove"), h("td", {}, d.reasons.join(", "))))),
      removed.length ? actionButton(`Prune ${removed.length} backups of ${values.vm}`, "POST", "/store/prune",
        async () => await confirmAction(`Prune ${removed.length} backups of ${values.vm}?`,
          removed.map((d) => `backup ${d.backup_id} (${when(d.created)})`), "Prune")
          ? runJob("POST", "/store/prune", { ...body, dry_run: false }, `Pruning ${values.vm}…`) : undefined,
        (done) => show(h("p", {}, `Removed ${done.decisions.filter((d) => !d.keep).length} backups.`)),
        { class: "danger" }) : h("p", {}, "Nothing would be removed.")));
  });
}

// The store's growth as its backups made it: after each of the latest backups (oldest first), the
// bytes they added in all and the data reduction (what they cover / what they added: dedup and
// compression together). Deletions and
// GC are not in this history; Prometheus keeps the store's own size over time (docs/monitoring.md).
function growthCharts(newestFirst) {
  const backups = [...newestFirst].reverse();
  let logical = 0;
  let stored = 0;
  const growth = [];
  const ratio = [];
  for (const b of backups.filter((x) => x.status === "ok")) {
    logical += b.size;
    stored += b.bytes_stored;
    const t = parseTime(b.finished_at ?? b.started_at);
    growth.push({ t, v: stored });
    if (stored) ratio.push({ t, v: logical / stored });
  }
  if (growth.length < 2) return h("p", { class: "muted" }, "The charts show once there are two backups.");
  return h("div", { class: "charts", "data-charts": "" },
    h("figure", {}, lineChart(growth, bytes, "bytes stored by backups over time"),
      h("figcaption", {}, `Stored by the last ${backups.length} backups, in all`)),
    h("figure", {}, lineChart(ratio, (v) => `×${v < 100 ? v.toFixed(1) : v.toExponential(1)}`, "data reduction over time"),
      h("figcaption", {}, "Data reduction: backed up / stored (dedup and compression)")));
}

export async function storePage(main, _params, signal) {
  const result = h("div", { id: "store-result" });
  const show = (el) => result.replaceChildren(el);
  const draw = async () => {
    // The VMs with backups: one (their latest) backup each.
    const [stats, latest, history] = await Promise.all([get("/store/stats"),
      get(listPath("/backups", { latest: true, sort: "vm_name", limit: ROWS_PER_PAGE })),
      get(listPath("/backups", { sort: "-started_at", limit: ROWS_PER_PAGE }))]);
    const vms = latest.map((b) => b.vm_name);
    const percent = h("input", { type: "number", min: "0.1", max: "100", value: "100", name: "sample_percent" });
    fill(main, h("h1", {}, "Store"), statsTable(stats),
      h("h2", {}, "Over time"), growthCharts(history),
      h("h2", {}, "Upkeep"),
      h("p", { class: "actions" },
        may("POST", "/store/verify-jobs") && field("Verify % of chunks", percent),
        actionButton("Verify", "POST", "/store/verify-jobs",
          () => call("POST", "/store/verify-jobs", { sample_percent: Number(percent.value) }),
          () => show(h("p", {}, h("a", { href: "#/jobs" }, "Verify job started: follow it under Jobs.")))),
        actionButton("GC preview", "POST", "/store/gc",
          () => runJob("POST", "/store/gc", { dry_run: true }, "Working out what GC would remove…"),
          (r) => show(gcReport(r))),
        actionButton("Run GC", "POST", "/store/gc-jobs", () => call("POST", "/store/gc-jobs", {}),
          () => show(h("p", {}, h("a", { href: "#/jobs" }, "GC job started: follow it under Jobs."))))),
      h("h2", {}, "Prune"), vms.length ? pruneSection(vms, show) : h("p", { class: "muted" }, "No backups to prune."),
      result);
  };
  await draw();
  live(main, signal, draw);
}
