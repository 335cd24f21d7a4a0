// Backup and snapshot policies: the list, a preview of the next runs and of what retention would
// keep, create, enable or disable, delete. Each action's answer is the policy as it is then (or what
// deleting it took): the list is redrawn from it, without asking for it again.
import { call, get, listPath } from "../api.js";
import { age, fill, h, table, when } from "../dom.js";
import { may } from "../roles.js";
import { actionButton, actionForm, confirmAction, field, notify, runJob } from "../ui.js";

const KEEP = ["last", "hourly", "daily", "weekly", "monthly", "yearly"];
const words = (text) => text.split(/[\s,]+/).filter(Boolean);

const SELECTING = ["backup", "snapshot", "sync"];   // the kinds that act on VMs; verify and gc act on the store

function describe(p) {
  if (p.kind === "verify") return `the store: verify ${p.sample_percent}% of the chunks`;
  if (p.kind === "gc") return "the store: collect unreferenced chunks";
  const who = [...p.vms.map((v) => `VMs ${v}`), ...p.tags.map((t) => `tag ${t}`)].join(", ");
  if (p.kind === "sync") return `${who}; copy to ${p.target ?? "this appliance"} from ${p.source ?? "this appliance"}`;
  const what = p.kind === "snapshot" ? `keep ${p.keep} snapshots`
    : p.retention ? `keep ${KEEP.filter((k) => p.retention[`keep_${k}`]).map((k) => `${k} ${p.retention[`keep_${k}`]}`).join(", ")}`
      : "keep all";
  return `${who}; ${what}`;
}

// What the policy's next run would do per VM, and for a backup policy with retention, what it keeps.
async function preview(out, shown) {
  const p = out.policy;
  const next = await get(`/policies/${out.id}/preview?count=5`);
  const parts = [h("h2", {}, `Preview of ${p.name}`),
    h("p", {}, "Next runs: ", next.next_runs.map(when).join(" · ")),
    table(["VM", "Next run would"], Object.entries(next.vms).map(([vm, does]) => h("tr", {}, h("td", {}, vm),
      h("td", {}, does))), "selects no VM now")];
  if (p.kind === "backup" && p.retention && may("POST", "/store/prune")) {
    for (const vm of Object.keys(next.vms)) {
      const report = await runJob("POST", "/store/prune", { vm, dry_run: true, ...p.retention },
                                  `Working out what retention keeps of ${vm}…`);
      parts.push(h("p", { "data-retention": vm }, `Retention on ${vm}: keeps `,
        String(report.decisions.filter((d) => d.keep).length), " of ", String(report.decisions.length), " backups"));
    }
  }
  fill(shown, parts);
}

// One form for a new policy and for changing one: edit() fills it with a policy's values, and saving
// then replaces that policy (PUT) instead of adding one; `saved(answer)` shows what was saved.
function policyForm(saved) {
  let editing = null;
  const kind = h("select", { name: "kind" }, ["backup", "snapshot", "verify", "gc"].map((k) =>
    h("option", { value: k }, k === "gc" ? "GC" : k)));
  const heading = h("h2", {}, "New policy");
  const form = actionForm("POST", "/policies", [
    field("Kind", kind), field("Name", h("input", { name: "name", required: true })),
    field("Schedule (cron, UTC)", h("input", { name: "schedule", required: true, value: "0 2 * * *" })),
    h("label", { "data-for": "backup snapshot" }, "VM patterns", h("input", { name: "vms", placeholder: "web*, db1" })),
    h("label", { "data-for": "backup snapshot" }, "Tags", h("input", { name: "tags" })),
    h("label", { "data-for": "verify" }, "Verify % of chunks",
      h("input", { name: "sample_percent", type: "number", min: "0.1", max: "100", step: "any", value: "100" })),
    h("label", { "data-for": "snapshot" }, "Snapshots kept", h("input", { name: "keep", type: "number", min: "1", value: "7" })),
    ...KEEP.map((k) => h("label", { "data-for": "backup" }, `keep ${k}`,
      h("input", { name: `keep_${k}`, type: "number", min: "0", value: "0" }))),
  ], "Create policy", async (values) => {
    values.kind ??= editing.policy.kind;   // a disabled field is not in the form's values
    const body = { ...(editing?.policy ?? {}), kind: values.kind, name: values.name, schedule: values.schedule };
    if (SELECTING.includes(values.kind)) Object.assign(body, { vms: words(values.vms), tags: words(values.tags) });
    if (values.kind === "verify") body.sample_percent = Number(values.sample_percent);
    if (values.kind === "snapshot") body.keep = Number(values.keep);
    const retention = Object.fromEntries(KEEP.map((k) => [`keep_${k}`, Number(values[`keep_${k}`] || 0)]));
    if (values.kind === "backup") body.retention = Object.values(retention).some(Boolean) ? retention : null;
    const answer = editing ? await call("PUT", `/policies/${editing.id}`, body) : await call("POST", "/policies", body);
    notify(`Policy ${answer.policy.name} ${editing ? "saved" : "created"}.`);
    reset();
    await saved(answer);
  });
  if (!form) return { section: null, edit: null };
  // Only the fields of the policy's kind show: a snapshot policy has no retention, a backup policy no count.
  const showKind = () => {
    for (const label of form.querySelectorAll("[data-for]")) {
      label.hidden = !label.dataset.for.split(" ").includes(kind.value);
    }
  };
  kind.addEventListener("change", showKind);
  showKind();
  const submit = form.querySelector("button[type=submit]");
  const cancel = h("button", { type: "button", hidden: true, onclick: () => reset() }, "Cancel");
  submit.after(cancel);
  const reset = () => {
    editing = null;
    form.reset();
    showKind();
    form.elements.kind.disabled = false;
    heading.textContent = "New policy";
    submit.textContent = "Create policy";
    cancel.hidden = true;
  };
  const edit = (out) => {
    const p = out.policy;
    editing = out;
    form.reset();
    form.elements.kind.value = p.kind;
    showKind();
    form.elements.kind.disabled = true;   // the kind is what the policy is: another kind is another policy
    form.elements.name.value = p.name;
    form.elements.schedule.value = p.schedule;
    form.elements.vms.value = (p.vms ?? []).join(", ");
    form.elements.tags.value = (p.tags ?? []).join(", ");
    if (p.kind === "verify") form.elements.sample_percent.value = String(p.sample_percent);
    if (p.kind === "snapshot") form.elements.keep.value = String(p.keep);
    for (const k of KEEP) form.elements[`keep_${k}`].value = String(p.retention?.[`keep_${k}`] ?? 0);
    heading.textContent = `Change policy ${p.name}`;
    submit.textContent = "Save policy";
    cancel.hidden = false;
    form.elements.schedule.focus();
  };
  return { section: [heading, form], edit };
}

function remove(out, removed) {
  const path = `/policies/${out.id}`;
  return actionButton("Delete", "DELETE", path, async () => {
    const impact = await call("DELETE", `${path}?dry_run=true`);
    return await confirmAction(`Delete policy ${out.policy.name}?`, impact.takes, "Delete")
      ? call("DELETE", path) : undefined;
  }, () => removed(out), { class: "danger" });
}

// The newest job each policy started (one query for all of them), and each one's next run.
async function runsOf(policies) {
  if (!policies.length) return { last: new Map(), next: new Map() };
  const ids = policies.map((out) => out.id);
  const [jobs, previews] = await Promise.all([
    get(listPath("/jobs", { sort: "-created_at", limit: 1000, filters: [`policy_id:in:${ids.join("|")}`] })),
    Promise.all(policies.map((out) => (out.policy.enabled ? get(`/policies/${out.id}/preview?count=1`) : null)))]);
  const last = new Map();
  for (const job of jobs) if (!last.has(job.policy_id)) last.set(job.policy_id, job);
  return { last, next: new Map(ids.map((id, i) => [id, previews[i]?.next_runs[0] ?? null])) };
}

const byName = (a, b) => (a.policy.name < b.policy.name ? -1 : a.policy.name > b.policy.name ? 1 : 0);

export async function policiesPage(main) {
  const shown = h("div", { id: "policy-preview" });
  let policies = [];
  let runs = { last: new Map(), next: new Map() };
  const row = (out) => {
    const p = out.policy;
    const path = `/policies/${out.id}`;
    const job = runs.last.get(out.id);
    return h("tr", { "data-policy": p.name },
      h("td", {}, p.name), h("td", {}, p.kind), h("td", {}, p.schedule), h("td", {}, describe(p)),
      h("td", {}, p.enabled ? "enabled" : "disabled"),
      h("td", {}, job ? h("a", { href: `#/job/${encodeURIComponent(job.id)}`, class: `state-${job.state}`,
                                 title: job.error ?? "" }, `${job.state} ${age(job.created_at)}`) : "never"),
      h("td", {}, when(runs.next.get(out.id))),
      h("td", { class: "actions" },
        actionButton("Preview", "GET", `${path}/preview`, () => preview(out, shown)),
        form.edit && h("button", { type: "button", onclick: () => form.edit(out) }, "Edit"),
        actionButton(p.enabled ? "Disable" : "Enable", "PUT", path,
          () => call("PUT", path, { ...p, enabled: !p.enabled }), changed),
        remove(out, removed)));
  };
  const render = () => fill(main, h("h1", {}, "Policies"),
    table(["Policy", "Kind", "Schedule", "What", "State", "Last run", "Next run", ""], policies.map(row), "no policies"),
    shown, form.section);
  // A policy as an answer gives it: drawn at once; its next run, which only the scheduler knows, is
  // asked of that one policy and filled in when it comes.
  const changed = async (out) => {
    policies = [...policies.filter((p) => p.id !== out.id), out].sort(byName);
    runs.next.delete(out.id);
    render();
    if (!out.policy.enabled) return;
    runs.next.set(out.id, (await get(`/policies/${out.id}/preview?count=1`)).next_runs[0] ?? null);
    render();
  };
  const removed = (out) => {
    policies = policies.filter((p) => p.id !== out.id);
    render();
  };
  const form = policyForm(changed);
  policies = await get("/policies?sort=name");
  runs = await runsOf(policies);
  render();
}
