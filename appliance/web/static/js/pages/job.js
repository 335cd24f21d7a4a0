// One job's task log: what it was asked to do, its steps in order with their states, its progress
// (live), the messages it left on the way, and how it ended: its result, or its error and the step
// that failed.
import { get, listPath } from "../api.js";
import { age, fill, h, table, when } from "../dom.js";
import { jobBar, live } from "../ui.js";

const STEP_MARK = { pending: "·", running: "…", done: "✓", failed: "✗", cancelled: "–", undone: "↺", undo_failed: "✗" };

// {a: 1, b: {c: 2}} -> rows "a 1", "b.c 2": parameters and results as the API gave them, readable.
function keyValues(object, prefix = "") {
  return Object.entries(object ?? {}).flatMap(([key, value]) => (value !== null && typeof value === "object"
    && !Array.isArray(value) ? keyValues(value, `${prefix}${key}.`)
    : [h("tr", {}, h("th", { scope: "row" }, `${prefix}${key}`),
         h("td", {}, Array.isArray(value) ? value.join(", ") : String(value)))]));
}

export async function jobPage(main, { id }, signal) {
  const draw = async () => {
    const [job, events] = await Promise.all([get(`/jobs/${encodeURIComponent(id)}`),
      get(listPath("/events", { sort: "id", limit: 500, filters: [`job_id:eq:${id}`] }))]);
    const failedStep = job.steps.find((s) => s.state === "failed");
    fill(main,
      h("p", {}, h("a", { href: "#/jobs" }, "‹ all jobs")),
      h("h1", {}, `Job ${job.kind} on ${job.resource} `, jobBar(job)),
      h("p", { class: "muted" }, `Created ${when(job.created_at)}`,
        job.started_at ? ` · started ${when(job.started_at)}` : "",
        job.finished_at ? ` · finished ${when(job.finished_at)} (${age(job.finished_at)})` : "",
        job.policy_id ? ` · run by policy ${job.policy_id}` : ""),
      job.error && h("section", { class: "card error", "data-job-error": "" },
        h("h2", {}, failedStep ? `Failed at step ${failedStep.name}` : "Failed"), h("p", {}, job.error)),
      h("h2", {}, "Steps"),
      h("ol", { class: "steps", "data-steps": "" }, job.steps.map((s) => h("li", { class: `step-${s.state}`, "data-step": s.name },
        h("span", { class: "mark", "aria-hidden": "true" }, STEP_MARK[s.state] ?? "·"), ` ${s.name} `,
        h("span", { class: "muted" }, s.state), s.error ? h("div", { class: "status-failed" }, s.error) : null))),
      h("h2", {}, "Log"),
      table(["When", "Severity", "Message"], events.map((e) => h("tr", { "data-event": e.kind },
        h("td", {}, when(e.created_at)), h("td", { class: e.severity === "error" ? "status-failed" : "" }, e.severity),
        h("td", {}, e.message))), "no messages"),
      h("h2", {}, "Asked"), h("table", { class: "pairs" }, h("tbody", {}, keyValues(job.params))),
      job.result && [h("h2", {}, "Result"), h("table", { class: "pairs", "data-result": "" }, h("tbody", {}, keyValues(job.result)))]);
  };
  await draw();
  live(main, signal, draw);
}
