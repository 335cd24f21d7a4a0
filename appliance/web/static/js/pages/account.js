// One's own account: password, TOTP enrolment, and access tokens for scripts. Each action's answer
// (the account with TOTP on, the token issued or revoked) is drawn as it is: nothing is asked again.
import { call, get } from "../api.js";
import { fill, h, table, when } from "../dom.js";
import { actionButton, actionForm, confirmAction, field, notify, withAnswer } from "../ui.js";

function totpSection(me, confirmed) {
  if (me.totp_enabled) return h("p", {}, "TOTP is on: signing in asks for a code. An admin can reset it.");
  const setUp = h("div", {});
  const start = actionButton("Set up TOTP", "POST", "/auth/totp", () => call("POST", "/auth/totp"), (enrolment) => {
    fill(setUp,
      h("p", {}, "Add this key to an authenticator app, then type the code it shows."),
      h("p", {}, "Key: ", h("code", { "data-totp-secret": "" }, enrolment.secret)),
      h("p", { class: "muted" }, enrolment.uri),
      actionForm("POST", "/auth/totp/confirm",
        [field("Code", h("input", { name: "code", inputmode: "numeric", pattern: "[0-9]{6}", required: true }))],
        "Turn TOTP on", async (values) => {
          const account = await call("POST", "/auth/totp/confirm", { code: values.code });
          notify("TOTP is on.");
          confirmed(account);
        }));
  });
  return [h("p", {}, "TOTP is off."), start, setUp];
}

// `shown` outlives redraws: it holds a new token, shown once.
function tokenSection(tokens, changed, shown) {
  const create = actionForm("POST", "/tokens", [
    field("What uses it", h("input", { name: "name", required: true })),
    field("Expires in days (empty: never)", h("input", { name: "days", type: "number", min: "1" })),
  ], "Create token", async (values, form) => {
    const body = { name: values.name };
    if (values.days) body.expires_in_days = Number(values.days);
    const { token, ...issued } = await call("POST", "/tokens", body);
    form.reset();
    changed(issued);
    fill(shown, h("p", {}, "Copy it now, it is not shown again: ", h("code", { "data-new-token": "" }, token)));
  });
  const revoke = (t) => actionButton("Revoke", "DELETE", `/tokens/${t.id}`, async () =>
    await confirmAction(`Revoke token ${t.name}?`, [`Scripts using ${t.id} are refused from now on.`], "Revoke")
      ? call("DELETE", `/tokens/${t.id}`) : undefined, (revoked) => { fill(shown); changed(revoked); },
    { class: "danger" });
  return [
    table(["Token", "Name", "Owner", "Created", "Expires", "Last used", ""], tokens.map((t) => h("tr", {},
      h("td", {}, t.id), h("td", {}, t.name), h("td", {}, t.owner), h("td", {}, when(t.created_at)),
      h("td", {}, t.revoked_at ? `revoked ${when(t.revoked_at)}` : when(t.expires_at)), h("td", {}, when(t.last_used_at)),
      h("td", {}, t.revoked_at ? null : revoke(t)))), "no tokens"),
    create, shown,
  ];
}

export async function accountPage(main) {
  const newToken = h("div", {});
  let [me, tokens] = await Promise.all([get("/auth/me"), get("/tokens")]);
  const render = () => {
    fill(main, h("h1", {}, `Account ${me.name}`), h("p", {}, `Role: ${me.role}`),
      h("h2", {}, "Password"),
      actionForm("POST", "/auth/password", [
        field("Current", h("input", { name: "current", type: "password", required: true, autocomplete: "current-password" })),
        field("New", h("input", { name: "new", type: "password", required: true, autocomplete: "new-password" })),
      ], "Change password", async (values, form) => {
        await call("POST", "/auth/password", { current: values.current, new: values.new });
        form.reset();
        notify("Password changed.");
      }),
      h("h2", {}, "Two-factor sign-in (TOTP)"), totpSection(me, (account) => { me = account; render(); }),
      h("h2", {}, "Access tokens"),
      tokenSection(tokens, (token) => { tokens = withAnswer(tokens, token, "id"); render(); }, newToken));
  };
  render();
}
