// Users (the admin's): create, change role, disable, reset TOTP, delete. Each action's answer is the
// user as it is now (a deletion: the user is gone): the table is redrawn from it, not asked for again.
import { call, get } from "../api.js";
import { fill, h, table, when } from "../dom.js";
import { actionButton, actionForm, confirmAction, field, withAnswer } from "../ui.js";

const ROLES = ["viewer", "operator", "admin"];
const roleChoice = (selected) => h("select", { name: "role" },
  ROLES.map((r) => h("option", { value: r, selected: r === selected }, r)));

function userRow(u, changed, removed) {
  const path = `/users/${encodeURIComponent(u.name)}`;
  const change = (body) => call("PATCH", path, body);
  const role = roleChoice(u.role);
  return h("tr", { "data-user": u.name },
    h("td", {}, u.name), h("td", {}, role), h("td", {}, u.disabled ? "disabled" : "active"),
    h("td", {}, u.totp_enabled ? "on" : "off"), h("td", {}, when(u.created_at)),
    h("td", { class: "actions" },
      actionButton("Set role", "PATCH", path, () => change({ role: role.value }), changed),
      actionButton(u.disabled ? "Enable" : "Disable", "PATCH", path, () => change({ disabled: !u.disabled }), changed),
      u.totp_enabled && actionButton("Reset TOTP", "PATCH", path, async () =>
        await confirmAction(`Reset TOTP of ${u.name}?`, [`${u.name} signs in with the password alone until they set it up again.`],
          "Reset") ? change({ reset_totp: true }) : undefined, changed),
      actionButton("Delete", "DELETE", path, async () =>
        await confirmAction(`Delete user ${u.name}?`, [`the account ${u.name}, its sessions and access tokens`,
          "Not taken: what the user did stays in the audit log."], "Delete") ? call("DELETE", path) : undefined,
      () => removed(u), { class: "danger" })));
}

export async function usersPage(main) {
  let users = await get("/users");
  const changed = (user) => { users = withAnswer(users, user); render(); };
  const removed = (user) => { users = users.filter((u) => u.name !== user.name); render(); };
  const create = actionForm("POST", "/users", [
    field("Name", h("input", { name: "name", required: true })),
    field("Password", h("input", { name: "password", type: "password", required: true, autocomplete: "new-password" })),
    field("Role", roleChoice("viewer")),
  ], "Create user", async (values, form) => {
    changed(await call("POST", "/users", { name: values.name, password: values.password, role: values.role }));
    form.reset();
  });
  const render = () => fill(main, h("h1", {}, "Users"),
    table(["User", "Role", "State", "TOTP", "Created", ""], users.map((u) => userRow(u, changed, removed))),
    h("h2", {}, "New user"), create);
  render();
}
