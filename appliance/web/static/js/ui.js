// Widgets shared by the pages: notices, confirmation of destructive actions, buttons offered only to
// those who may use them, and a job's live progress.
import { ApiError, call, changesMade, follow } from "./api.js";
import { bytes, h } from "./dom.js";
import { may } from "./roles.js";

export function notify(message, isError = false) {
  const notice = document.getElementById("notice");
  notice.textContent = message;
  notice.className = isError ? "error" : "";
  notice.hidden = !message;
  delete notice.dataset.code;
}

// An error, in the API's words; its code (e.g. ConflictError) is kept on the notice for scripts and
// support, not shown: the message says what is wrong and what to do.
export function notifyError(e) {
  notify(describeError(e), true);
  if (e.code) document.getElementById("notice").dataset.code = e.code;
}

// What went wrong, in the API's words: for a request that did not validate, each field and what is
// wrong with it ("disks 0: not a size: '12Q'"), not only that the request is not valid.
export function describeError(e) {
  if (!e.code) return String(e);
  const fields = Array.isArray(e.details) ? e.details.filter((d) => d && d.msg) : [];
  if (!fields.length) return e.message;
  return fields.map((d) => {
    const where = (d.loc ?? []).filter((part, i) => !(i === 0 && ["body", "query", "path"].includes(part))).join(" ");
    return `${where ? `${where}: ` : ""}${String(d.msg).replace(/^Value error, /, "")}`;
  }).join("; ");
}

// Runs an action, saying what went wrong in the API's own words if it fails; returns its result or undefined.
export async function attempt(action) {
  try {
    return await action();
  } catch (e) {
    notifyError(e);
    return undefined;
  }
}

// Shows what an action will take with it and resolves true only if the user confirms.
export function confirmAction(title, takes, okLabel = "Confirm", extra = null) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-takes").replaceChildren(...takes.map((t) => h("li", {}, t)));
  document.getElementById("confirm-extra").replaceChildren(...(extra ? [extra] : []));
  document.getElementById("confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

// Ask the API what deleting takes with it (its dry run), show that, and delete only when confirmed.
export async function confirmedDeletion(title, path) {
  const impact = await call("DELETE", `${path}?dry_run=true`);
  const takes = [...impact.takes];
  if (impact.frees_bytes !== null) takes.push(`frees ${bytes(impact.frees_bytes)}`);
  if (impact.mode === "delayed") takes.push("It waits in the recycle bin first, restorable until it is purged.");
  return await confirmAction(title, takes, "Delete") ? call("DELETE", path) : undefined;
}

// A list with an action's answer in it (one round trip): the answer takes the place of the item of
// the same `key`, or, new, comes last.
export const withAnswer = (list, answer, key = "name") => (list.some((item) => item[key] === answer[key])
  ? list.map((item) => (item[key] === answer[key] ? answer : item)) : [...list, answer]);

// A button for one API call, or nothing for a user whose role may not make it. `action` does the work
// (disabled meanwhile), answering undefined if nothing was done (not confirmed, or failed: attempt()
// shows why); otherwise `done(result)` shows its outcome (null for an API answer without a body).
export function actionButton(label, method, path, action, done = () => {}, attrs = {}) {
  if (!may(method, path)) return null;
  const button = h("button", {
    type: "button", ...attrs,
    onclick: async () => {
      button.disabled = true;
      notify("");
      const result = await attempt(action);
      button.disabled = false;
      if (result !== undefined) await done(result);
    },
  }, label);
  return button;
}

// A form that is offered only to a user who may make its API call; onsubmit gets the form's values.
export function actionForm(method, path, fields, submitLabel, onsubmit) {
  if (!may(method, path)) return null;
  const form = h("form", { class: "inline" }, fields, h("button", { type: "submit" }, submitLabel));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const submit = form.querySelector("button[type=submit]");
    submit.disabled = true;
    notify("");
    await attempt(() => onsubmit(Object.fromEntries(new FormData(form)), form));
    submit.disabled = false;
  });
  return form;
}

export const field = (label, input) => h("label", {}, label, input);

// The jobs runJob() follows: the action that started one shows its outcome, so their events do not
// also redraw the page (which would throw away what the user is typing).
const followed = new Set();

// Every long operation is a job: the API answers 202 with it. This starts one, shows it in the notice
// (what it does, its state and progress bar) and follows it on its own event stream to its end;
// it resolves with the job's result, or throws its error as the API would, for attempt() to show.
export async function runJob(method, path, body, doing) {
  const job = await call(method, path, body);
  followed.add(job.id);
  const bar = jobBar(job);
  const notice = document.getElementById("notice");
  notice.replaceChildren(`${doing} `, bar);
  notice.className = "";
  notice.hidden = false;
  let ended = job;
  await follow(`/events/stream?job=${encodeURIComponent(job.id)}`, (kind, event) => {
    if (kind === "job.progress") bar.querySelector("progress").value = event.data.progress;
    else if (kind === "job.step") bar.querySelector("span").textContent = `running: ${event.data.step}`;
    else if (kind === "job.end") ended = event;
  });
  if (ended.state !== "succeeded") {
    throw new ApiError(409, `Job${ended.state[0].toUpperCase()}${ended.state.slice(1)}`, ended.error ?? ended.state);
  }
  notify("");
  return ended.result;
}

// A job's state and progress bar; live() moves the bar.
export function jobBar(job) {
  return h("span", { class: "job", "data-job": job.id, "data-kind": job.kind, title: job.error ?? "" },
    h("span", { class: `state-${job.state}` }, job.state), " ",
    h("progress", { max: "1", value: String(job.progress) }));
}

// One event stream per page: progress ticks move the bars of jobBar()s; any other event (a job
// queued, started or ended, a backup done) redraws the page, once typing in it has stopped, except
// those of the jobs runJob() follows.
export function live(main, signal, redraw) {
  let pending;
  const later = () => {
    clearTimeout(pending);
    pending = setTimeout(() => {
      if (signal.aborted) return;
      if (main.contains(document.activeElement) && document.activeElement.matches("input, select")) {
        later();
        return;
      }
      // A change answered while the page was fetched may have been drawn over with what its lists
      // said before it: then the page is drawn again, from lists fetched after it.
      const before = changesMade();
      attempt(redraw).then(() => { if (changesMade() !== before && !signal.aborted) later(); });
    }, 300);
  };
  follow("/events/stream", (kind, event) => {
    if (kind === "job.progress") {
      for (const bar of main.querySelectorAll(`[data-job="${CSS.escape(event.job_id)}"] progress`)) {
        bar.value = event.data.progress;
      }
    } else if (kind !== "job.step" && !followed.has(event.job_id)) {
      later();
    }
  }, signal).catch((e) => {
    if (e.name !== "AbortError") notify(`Live updates stopped (${e.message}): reload the page to resume them.`, true);
  });
}

// The rows a list page shows at most: the API's largest page, so a thousand VMs still fit on one.
export const ROWS_PER_PAGE = 1000;

// Where a paged list is, "1–100 of 2345", with buttons to the previous and next pages: go(offset)
// shows another. Nothing while one page holds every item.
export function pager(offset, limit, total, go) {
  if (offset === 0 && total <= limit) return null;
  const last = Math.min(offset + limit, total);
  return h("p", { class: "pager", "data-pager": "" },
    h("button", { type: "button", disabled: offset === 0, onclick: () => go(Math.max(0, offset - limit)) }, "‹ Previous"),
    ` ${total ? offset + 1 : 0}–${last} of ${total} `,
    h("button", { type: "button", disabled: last >= total, onclick: () => go(offset + limit) }, "Next ›"));
}
