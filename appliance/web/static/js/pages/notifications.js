// Notifications: where alarms go (webhooks and mail), which alarms are raised (rules), the quiet
// hours that hold them back, a test message per target, and the alarms and deliveries so far. Each
// action answers the target, rule or quiet hours as they are now (clearing quiet hours: nothing): the
// page is redrawn from that, not asked for again.
import { call, get } from "../api.js";
import { fill, h, table, when } from "../dom.js";
import { actionButton, actionForm, field, notify, withAnswer } from "../ui.js";

const BASE = "/notifications";
const words = (text) => text.split(/[\s,]+/).filter(Boolean);

function targetForm(added) {
  const kind = h("select", { name: "kind" }, h("option", { value: "webhook" }, "webhook"),
    h("option", { value: "email" }, "mail (SMTP)"));
  return actionForm("POST", `${BASE}/targets`, [
    field("Kind", kind), field("Name", h("input", { name: "name", required: true })),
    field("URL (webhook)", h("input", { name: "url", type: "url", size: "30", placeholder: "https://hooks.example/cairn" })),
    field("HMAC secret (webhook)", h("input", { name: "secret", type: "password", minlength: "16", autocomplete: "off" })),
    field("SMTP server (mail)", h("input", { name: "host" })),
    field("Port", h("input", { name: "port", type: "number", value: "587", min: "1", max: "65535" })),
    field("From", h("input", { name: "sender", type: "email" })),
    field("To", h("input", { name: "recipients", placeholder: "ops@example.org, …" })),
    field("User", h("input", { name: "username", autocomplete: "off" })),
    field("Password", h("input", { name: "password", type: "password", autocomplete: "off" })),
  ], "Add target", async (values, form) => {
    const body = values.kind === "webhook"
      ? { kind: "webhook", name: values.name, url: values.url, secret: values.secret || null }
      : { kind: "email", name: values.name, host: values.host, port: Number(values.port), sender: values.sender,
          recipients: words(values.recipients), username: values.username || null, password: values.password || null };
    added(await call("POST", `${BASE}/targets`, body));
    form.reset();
  });
}

function describeTarget(t) {
  return t.kind === "webhook" ? `${t.url}${t.has_secret ? " (signed)" : " (unsigned)"}`
    : `${t.host}:${t.port} from ${t.sender} to ${t.recipients.join(", ")}`;
}

// A rule's parameters as fields ("fill_percent" -> a number field), changed by PATCH.
function ruleRow(rule, targets, changed) {
  const path = `${BASE}/rules/${rule.kind}`;
  const params = Object.entries(rule.params).map(([key, value]) =>
    h("input", { name: key, "aria-label": key, title: key, size: "6", value: String(value ?? "") }));
  const chosen = h("select", { name: "targets", multiple: true, "aria-label": "targets" },
    targets.map((t) => h("option", { value: t.name, selected: rule.targets.includes(t.name) }, t.name)));
  const save = actionButton("Save", "PATCH", path, () => call("PATCH", path, {
    params: Object.fromEntries(params.map((i) => [i.name, i.value === "" ? null : Number.isNaN(Number(i.value))
      ? i.value : Number(i.value)])),
    targets: Array.from(chosen.selectedOptions, (o) => o.value),
  }), (saved) => { notify(`Rule ${saved.kind} saved.`); changed(saved); });
  return h("tr", { "data-rule": rule.kind },
    h("td", {}, rule.kind), h("td", {}, rule.severity), h("td", {}, rule.description),
    h("td", {}, params.map((i) => h("label", { class: "param" }, `${i.name} `, i))),
    h("td", {}, targets.length ? chosen : h("span", { class: "muted" }, "every target")),
    h("td", { class: "actions" },
      actionButton(rule.enabled ? "Disable" : "Enable", "PATCH", path,
        () => call("PATCH", path, { enabled: !rule.enabled }), changed), save));
}

const clock = (time) => time.slice(0, 5);   // "22:00:00" -> "22:00"

function quietHoursForm(hours, changed) {
  const path = `${BASE}/quiet-hours`;
  const form = actionForm("PUT", path, [
    field("From", h("input", { name: "start", type: "time", required: true, value: hours ? clock(hours.start) : "22:00" })),
    field("To", h("input", { name: "end", type: "time", required: true, value: hours ? clock(hours.end) : "07:00" })),
    field("Time zone", h("input", { name: "timezone", value: hours?.timezone
      ?? Intl.DateTimeFormat().resolvedOptions().timeZone })),
    field("Hold errors too", h("input", { name: "hold_errors", type: "checkbox", value: "yes",
                                          checked: Boolean(hours?.hold_errors) })),
  ], "Save quiet hours", async (values) => {
    const saved = await call("PUT", path, { start: values.start, end: values.end, timezone: values.timezone,
                                            hold_errors: values.hold_errors === "yes" });
    notify("Quiet hours saved.");
    changed(saved);
  });
  return [h("p", { "data-quiet-hours": "" }, hours ? `Messages wait from ${clock(hours.start)} to ${clock(hours.end)} (${hours.timezone})`
    + `${hours.hold_errors ? ", errors too" : "; errors go at once"}.` : "No quiet hours: messages go at once."),
  form, hours && actionButton("No quiet hours", "DELETE", path, () => call("DELETE", path), changed)];
}

export async function notificationsPage(main) {
  const [alarms, outbox] = await Promise.all([get(`${BASE}/alarms?limit=20`), get(`${BASE}/outbox?limit=20`)]);
  let [targets, rules, hours] = await Promise.all([get(`${BASE}/targets`), get(`${BASE}/rules`),
    get(`${BASE}/quiet-hours`)]);
  const addTarget = targetForm((target) => { targets = withAnswer(targets, target); render(); });
  const ruleChanged = (rule) => { rules = withAnswer(rules, rule, "kind"); render(); };
  // A DELETE answers null: no quiet hours.
  const hoursChanged = (saved) => { hours = saved; render(); };
  const render = () => {
    fill(main, h("h1", {}, "Notifications"),
      h("h2", {}, "Targets"),
      table(["Target", "Kind", "Where", "State", ""], targets.map((t) => {
        const path = `${BASE}/targets/${encodeURIComponent(t.name)}`;
        return h("tr", { "data-target": t.name },
          h("td", {}, t.name), h("td", {}, t.kind), h("td", {}, describeTarget(t)),
          h("td", {}, t.enabled ? "enabled" : "disabled"),
          h("td", { class: "actions" },
            actionButton("Send test message", "POST", `${path}/test`, () => call("POST", `${path}/test`),
              () => notify(`Target ${t.name} took the test message.`)),
            actionButton("Delete", "DELETE", path, () => call("DELETE", path), (removed) => {
              targets = targets.filter((other) => other.name !== removed.name);
              render();
            }, { class: "danger" })));
      }), "no targets: alarms go nowhere"),
      addTarget,
      h("h2", {}, "Rules"),
      table(["Alarm", "Severity", "When", "Parameters", "Sent to", ""], rules.map((r) => ruleRow(r, targets, ruleChanged))),
      h("h2", {}, "Quiet hours"), quietHoursForm(hours, hoursChanged),
      h("h2", {}, "Recent alarms"),
      table(["Raised", "Alarm", "On", "State", "What"], alarms.map((a) => h("tr", {},
        h("td", {}, when(a.started_at)), h("td", {}, a.rule), h("td", {}, a.resource),
        h("td", { class: a.firing ? "status-failed" : "status-ok" }, a.firing ? "firing" : `resolved ${when(a.resolved_at)}`),
        h("td", {}, a.summary))),
        "none"),
      h("h2", {}, "Deliveries"),
      table(["Created", "Target", "Event", "State", "Attempts", "Last error"], outbox.map((d) => h("tr", {},
        h("td", {}, when(d.created_at)), h("td", {}, d.target), h("td", {}, d.summary ?? d.event),
        h("td", {}, d.state), h("td", {}, String(d.attempts)), h("td", {}, d.last_error ?? ""))), "none"));
  };
  render();
}
