"""Who may do what: three roles, and the rule that maps each API request to the role it needs.

The rule is applied to every route of the app (appliance.api_auth.authorize), so a new router is
protected the moment it is included: reading needs a viewer, changing needs an operator, and the
admin areas below need an admin. A router whose writes are the admin's adds its prefix here."""
from __future__ import annotations

import re
from enum import StrEnum


class Role(StrEnum):
    VIEWER = "viewer"       # reads everything it is shown
    OPERATOR = "operator"   # runs VMs, backups, snapshots, restores
    ADMIN = "admin"         # also users, stores, policies, the audit log

    def allows(self, needed: Role) -> bool:
        return _RANK[self] >= _RANK[needed]


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}

PUBLIC = {("GET", "/api/v1/health"), ("POST", "/api/v1/auth/login"),
          # The OpenAPI document and its browser view: what the API is, not what it holds.
          ("GET", "/api/v1/openapi.json"), ("GET", "/api/v1/docs"), ("GET", "/api/v1/docs/oauth2-redirect")}
# One's own account (session, password, TOTP, own tokens): any signed-in user.
SELF_SERVICE = ("/api/v1/auth", "/api/v1/tokens")
# Reading these needs an admin too.
ADMIN_ONLY = ("/api/v1/users", "/api/v1/audit", "/api/v1/notifications")
# Reading these is for everyone; changing them is the admin's.
ADMIN_WRITES = ("/api/v1/store", "/api/v1/stores", "/api/v1/policies", "/api/v1/backup-policies",
                "/api/v1/snapshot-policies", "/api/v1/deletion-rules", "/api/v1/recycle-bin", "/api/v1/pools",
                "/api/v1/networks")
# Changing these is the admin's too: a restore to any path on the appliance's host, importing a
# host file into the image library, and adding or removing hosts (a host's definition names key
# files on the appliance): see appliance/access/host_paths.py. Restoring a domain into a host
# writes its disks anywhere there. Running VMs on a host is not.
# Who owns a VM and which group shares it (appliance/access/visibility.py) is the admin's to say.

ADMIN_WRITE_PATTERNS = (re.compile(r"^/api/v1/backups/[^/]+/disks/[^/]+/restore/?$"),
                        re.compile(r"^/api/v1/hosts(/[^/]+)?/?$"),
                        re.compile(r"^/api/v1/hosts/[^/]+/restores/?$"),
                        re.compile(r"^/api/v1/vms/[^/]+/access/?$"),
                        re.compile(r"^/api/v1/images/[^/]+/import/?$"))
READ_METHODS = {"GET", "HEAD", "OPTIONS"}


def required_role(method: str, path: str) -> Role | None:
    """The least role that may make this request; None for the public ones."""
    if (method, path.rstrip("/") or "/") in PUBLIC:
        return None
    if _under(path, ADMIN_ONLY):
        return Role.ADMIN
    if _under(path, SELF_SERVICE) or method in READ_METHODS:
        return Role.VIEWER
    if _under(path, ADMIN_WRITES) or any(p.match(path) for p in ADMIN_WRITE_PATTERNS):
        return Role.ADMIN
    return Role.OPERATOR


def the_rule() -> dict[str, list[str]]:
    """required_role's rule as data, for the console to offer only what the API allows without
    a copy of the rule of its own (GET /api/v1/auth/rules). Patterns are JavaScript-compatible."""
    return {"roles": [r.value for r in sorted(_RANK, key=_RANK.__getitem__)],
            "self_service": list(SELF_SERVICE), "admin_only": list(ADMIN_ONLY), "admin_writes": list(ADMIN_WRITES),
            "admin_write_patterns": [p.pattern for p in ADMIN_WRITE_PATTERNS], "read_methods": sorted(READ_METHODS)}


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)
