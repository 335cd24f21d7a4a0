// The rule of appliance/access/roles.py, so that a user is offered only what the API lets them do.
import { session } from "./api.js";

const RANK = { viewer: 0, operator: 1, admin: 2 };
const SELF_SERVICE = ["/auth", "/tokens"];
const ADMIN_ONLY = ["/users", "/audit", "/notifications"];
const ADMIN_WRITES = ["/store", "/stores", "/policies", "/backup-policies", "/snapshot-policies", "/deletion-rules",
  "/recycle-bin", "/pools", "/networks"];
const ADMIN_WRITE_PATTERNS = [/^\/backups\/[^/]+\/disks\/[^/]+\/restore\/?$/, /^\/hosts(\/[^/]+)?\/?$/,
  /^\/vms\/[^/]+\/access\/?$/, /^\/images\/[^/]+\/import\/?$/];
const READ_METHODS = ["GET", "HEAD", "OPTIONS"];

const under = (path, prefixes) => prefixes.some((p) => path === p || path.startsWith(`${p}/`));

function needed(method, path) {
  path = path.split("?")[0];
  if (under(path, ADMIN_ONLY)) return "admin";
  if (under(path, SELF_SERVICE) || READ_METHODS.includes(method)) return "viewer";
  if (under(path, ADMIN_WRITES) || ADMIN_WRITE_PATTERNS.some((p) => p.test(path))) return "admin";
  return "operator";
}

// Whether the signed-in user may make this API call (path as given to api.call, without /api/v1).
export function may(method, path) {
  const current = session.get();
  return Boolean(current) && RANK[current.user.role] >= RANK[needed(method, path)];
}
