// Jobs, newest first, with live progress, and the recent events.
import { call, get } from "../api.js";
import { fill, h, table, when } from "../dom.js";
import { actionButton, jobBar, live } from "../ui.js";

const ACTIVE = ["queued", "running"];

// A job's row; cancelling redraws it from the API's answer (the job as it is then).
function jobRow(j) {
  const cancel = `/jobs/${j.id}/cancel`;
  const row = h("tr", { "data-job-row": j.id },
    h("td", {}, when(j.created_at)), h("td", {}, h("a", { href: `#/job/${encodeURIComponent(j.id)}` }, j.kind)), h("td", {}, j.resource), h("td", {}, jobBar(j)),
    h("td", {}, j.steps.map((s) => `${s.name}: ${s.state}`).join(", ")),
    h("td", {}, j.error ?? (j.result ? Object.entries(j.result).filter(([, v]) => typeof v !== "object")
      .map(([k, v]) => `${k}: ${v}`).join(", ") : "")),
    h("td", {}, ACTIVE.includes(j.state) && !j.cancel_requested
      ? actionButton("Cancel", "POST", cancel, () => call("POST", cancel), (answer) => row.replaceWith(jobRow(answer)))
      : null));
  return row;
}

export async function jobsPage(main, _params, signal) {
  const draw = async () => {
    const [jobs, events] = await Promise.all([get("/jobs?sort=-created_at&limit=50"),
                                              get("/events?sort=-id&limit=20")]);
    fill(main, 
      h("h1", {}, "Jobs"),
      table(["Created", "Job", "On", "State", "Steps", "Result", ""], jobs.map(jobRow), "no jobs yet"),
      h("h2", {}, "Events"),
      table(["When", "Severity", "Kind", "What"], events.map((e) => h("tr", {},
        h("td", {}, when(e.created_at)), h("td", {}, e.severity), h("td", {}, e.kind), h("td", {}, e.message))),
        "none"));
  };
  await draw();
  live(main, signal, draw);
}
