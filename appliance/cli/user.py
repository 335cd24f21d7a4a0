"""`cairn user`: manage the API's users locally (root on the data dir), e.g. to recover a lost
admin password. These commands work on the appliance's host itself; through an appliance's API,
users are managed under /api/v1/users (the console's Users page)."""
from __future__ import annotations

import secrets
import sys
from typing import Any

import typer

from appliance.access.roles import Role

from .common import JsonOpt, emit_json, err, out, password_from_stdin, print_table, reports_errors, state, table

user_app = typer.Typer(help="Users of the web API, on the appliance's host (e.g. to recover a lost admin).",
                       no_args_is_help=True)
PasswordOpt = typer.Option(None, "--password", help="The password. Other users of this machine can read a command "
                                                    "line: prefer --password-stdin or the prompt.")
PasswordStdinOpt = typer.Option(False, "--password-stdin", help="Read the password from stdin (one line).")
NewRoleOpt = typer.Option(Role.VIEWER, help="viewer, operator or admin.")
RoleChangeOpt = typer.Option(None, help="A new role.")
DisabledOpt = typer.Option(None, "--disabled/--enabled", help="Lock the user out, or not.")
ResetTotpOpt = typer.Option(False, "--reset-totp", help="Drop the user's TOTP enrolment.")
GroupOpt = typer.Option([], "--group", help="A group of the user (repeat): replaces their groups; they see "
                                            "the VMs shared with them.")
NoGroupsOpt = typer.Option(False, "--no-groups", help="Take the user out of every group.")


def user_dict(u: Any) -> dict[str, Any]:
    return {"name": u.name, "role": u.role, "disabled": u.disabled, "totp_enabled": u.totp_enabled,
            "groups": u.groups, "created_at": u.created_at}


@user_app.command("list")
@reports_errors
def user_list(as_json: bool = JsonOpt) -> None:
    """List users with their role and whether they use TOTP."""
    users = state.this_host().users.list()
    if as_json:
        emit_json([user_dict(u) for u in users])
        return
    listing = table("name", "role", "disabled", "totp", "created", "groups", wide=("groups",))
    for u in users:
        listing.add_row(u.name, u.role, "yes" if u.disabled else "", "yes" if u.totp_enabled else "",
                        u.created_at.strftime("%Y-%m-%d %H:%M"), ", ".join(u.groups))
    print_table(listing)


def password_of(given: str | None, from_stdin: bool) -> tuple[str, bool]:
    """The password to set, and whether it was made up here: given (--password, --password-stdin),
    asked for twice at a terminal, or, without a terminal to ask at, a random one."""
    if given is not None:
        return given, False
    if from_stdin:
        return password_from_stdin(), False
    if sys.stdin.isatty():
        return str(typer.prompt("password", hide_input=True, confirmation_prompt=True, err=True)), False
    return secrets.token_urlsafe(18), True


def say_password(name: str, password: str, made_up: bool, done: str) -> None:
    out.print(done, highlight=False)
    if made_up:
        out.print(f"password of {name} (shown this once; no terminal to ask for one, --password-stdin takes yours): "
                  f"{password}", highlight=False, soft_wrap=True)
        err.print(f"give it to {name}, who changes it after signing in (the console, or POST /api/v1/auth/password)",
                  highlight=False)


@user_app.command("add")
@reports_errors
def user_add(name: str, role: Role = NewRoleOpt, password: str | None = PasswordOpt,
             password_stdin: bool = PasswordStdinOpt, as_json: bool = JsonOpt) -> None:
    """Create a user. The password is --password-stdin's, or asked for at a terminal; without
    one, a random password is made and printed once."""
    secret, made_up = password_of(password, password_stdin)
    user = state.this_host().users.create(name, secret, role)
    if as_json:
        emit_json({**user_dict(user), "password": secret if made_up else None})
    else:
        say_password(name, secret, made_up, f"created {role.value} {name}")


@user_app.command("passwd")
@reports_errors
def user_passwd(name: str, password: str | None = PasswordOpt, password_stdin: bool = PasswordStdinOpt) -> None:
    """Set a user's password (their sessions end): --password-stdin's, or asked for at a
    terminal; without one, a random password is made and printed once."""
    secret, made_up = password_of(password, password_stdin)
    state.this_host().users.update(name, password=secret)
    say_password(name, secret, made_up, f"password of {name} changed")


@user_app.command("set")
@reports_errors
def user_set(name: str, role: Role | None = RoleChangeOpt, disabled: bool | None = DisabledOpt,
             reset_totp: bool = ResetTotpOpt, group: list[str] = GroupOpt, no_groups: bool = NoGroupsOpt) -> None:
    """Change a user's role, lock, TOTP or groups."""
    groups = [] if no_groups else group or None
    user = state.this_host().users.update(name, role=role, disabled=disabled, reset_totp=reset_totp, groups=groups)
    out.print(f"{user.name}: {user.role}{', disabled' if user.disabled else ''}"
              f"{', TOTP' if user.totp_enabled else ''}"
              f"{', groups ' + ', '.join(user.groups) if user.groups else ''}", highlight=False)


@user_app.command("delete")
@reports_errors
def user_delete(name: str) -> None:
    """Delete a user with their sessions and access keys."""
    state.this_host().users.delete(name)
    out.print(f"deleted {name}")
