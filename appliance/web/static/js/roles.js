// Which role an API call needs, as appliance/access/roles.py says: the rule is read from the API
// (GET /auth/rules) once signed in, so that a user is offered only what the API lets them do and
// the console keeps no copy of the rule of its own.
import { call, session } from "./api.js";

let rule = null;

// Reads the rule (once per page load); the shell waits for it before drawing a page.
export async function loadRule() {
  rule ??= await call("GET", "/auth/rules");
  return rule;
}

const under = (path, prefixes) => prefixes.some((p) => path === p || path.startsWith(`${p}/`));

function needed(method, path) {
  path = `/api/v1${path.split("?")[0]}`;
  if (under(path, rule.admin_only)) return "admin";
  if (under(path, rule.self_service) || rule.read_methods.includes(method)) return "viewer";
  if (under(path, rule.admin_writes) || rule.admin_write_patterns.some((p) => new RegExp(p).test(path))) return "admin";
  return "operator";
}

// Whether the signed-in user may make this API call (path as given to api.call, without /api/v1).
export function may(method, path) {
  const current = session.get();
  if (!current || !rule) return false;
  return rule.roles.indexOf(current.user.role) >= rule.roles.indexOf(needed(method, path));
}
