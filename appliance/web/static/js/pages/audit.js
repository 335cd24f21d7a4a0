// The audit log: every change made through the API, who made it, from where, and how it ended;
// filtered by user and outcome, searched in the paths and errors, newest first.
import { get } from "../api.js";
import { fill, h, table, when } from "../dom.js";
import { attempt } from "../ui.js";

const RESULTS = ["ok", "denied", "rejected", "failed"];
const PER_PAGE = 100;

export async function auditPage(main) {
  const text = h("input", { type: "search", name: "text", placeholder: "search paths and errors", "aria-label": "search" });
  const actor = h("input", { type: "search", name: "actor", placeholder: "user", "aria-label": "user" });
  const result = h("select", { name: "result", "aria-label": "outcome" }, h("option", { value: "" }, "any outcome"),
    RESULTS.map((r) => h("option", { value: r }, r)));
  const rows = h("div");
  let offset = 0;
  const load = async () => {
    const query = new URLSearchParams({ limit: String(PER_PAGE + 1), offset: String(offset) });
    for (const input of [text, actor, result]) if (input.value.trim()) query.set(input.name, input.value.trim());
    const found = await get(`/audit?${query}`);
    // One more than a page asked for: whether there is a next page, without counting them all.
    const shown = found.slice(0, PER_PAGE);
    fill(rows, table(["When", "User", "Client", "Call", "Status", "Outcome", "Error"], shown.map((a) =>
      h("tr", { "data-audit": a.id },
        h("td", {}, when(a.at)), h("td", {}, a.actor), h("td", {}, a.client ?? "–"),
        h("td", {}, h("code", {}, `${a.method} ${a.path}`)), h("td", {}, String(a.status)),
        h("td", { class: a.result === "ok" ? "status-ok" : "status-failed" }, a.result), h("td", {}, a.error ?? ""))),
      "no entries match"),
      (offset > 0 || found.length > PER_PAGE) && h("p", { class: "pager" },
        h("button", { type: "button", disabled: offset === 0, onclick: () => { offset -= PER_PAGE; attempt(load); } },
          "‹ Newer"), " ",
        h("button", { type: "button", disabled: found.length <= PER_PAGE,
                      onclick: () => { offset += PER_PAGE; attempt(load); } }, "Older ›")));
  };
  let typing;
  const refilter = () => { offset = 0; attempt(load); };
  for (const input of [text, actor]) {
    input.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(refilter, 250); });
  }
  result.addEventListener("change", refilter);
  fill(main, h("h1", {}, "Audit log"), h("p", { class: "actions" }, text, " ", actor, " ", result), rows);
  await load();
}
