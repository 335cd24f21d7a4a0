"""Who may do what: users, passwords and TOTP, sessions and API tokens, roles, per-user
visibility of VMs, the audit log, and secrets at rest.
"""
