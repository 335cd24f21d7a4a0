"""`cairn user`: manage the API's users locally (root on the data dir), e.g. to recover a lost admin password."""
from __future__ import annotations

import typer
from rich.table import Table

from appliance.access.roles import Role

from .common import JsonOpt, emit_json, out, reports_errors, state

user_app = typer.Typer(help="Users of the web API.", no_args_is_help=True)
PasswordOpt = typer.Option(..., prompt=True, hide_input=True, confirmation_prompt=True,
                           help="Asked for when not given.")
NewRoleOpt = typer.Option(Role.VIEWER, help="viewer, operator or admin.")
RoleChangeOpt = typer.Option(None, help="A new role.")
DisabledOpt = typer.Option(None, "--disabled/--enabled", help="Lock the user out, or not.")
ResetTotpOpt = typer.Option(False, "--reset-totp", help="Drop the user's TOTP enrolment.")
GroupOpt = typer.Option([], "--group", help="A group of the user (repeat): replaces their groups; they see "
                                            "the VMs shared with them.")
NoGroupsOpt = typer.Option(False, "--no-groups", help="Take the user out of every group.")


@user_app.command("list")
@reports_errors
def user_list(as_json: bool = JsonOpt) -> None:
    """List users with their role and whether they use TOTP."""
    users = state.appliance.users.list()
    if as_json:
        emit_json([{"name": u.name, "role": u.role, "disabled": u.disabled, "totp_enabled": u.totp_enabled,
                    "groups": u.groups, "created_at": u.created_at} for u in users])
        return
    table = Table("name", "role", "disabled", "totp", "groups", "created")
    for u in users:
        table.add_row(u.name, u.role, "yes" if u.disabled else "", "yes" if u.totp_enabled else "",
                      ", ".join(u.groups), u.created_at.strftime("%Y-%m-%d %H:%M"))
    out.print(table)


@user_app.command("add")
@reports_errors
def user_add(name: str, role: Role = NewRoleOpt, password: str = PasswordOpt) -> None:
    """Create a user."""
    state.appliance.users.create(name, password, role)
    out.print(f"created {role.value} {name}")


@user_app.command("passwd")
@reports_errors
def user_passwd(name: str, password: str = PasswordOpt) -> None:
    """Set a user's password (their sessions end)."""
    state.appliance.users.update(name, password=password)
    out.print(f"password of {name} changed")


@user_app.command("set")
@reports_errors
def user_set(name: str, role: Role | None = RoleChangeOpt, disabled: bool | None = DisabledOpt,
             reset_totp: bool = ResetTotpOpt, group: list[str] = GroupOpt, no_groups: bool = NoGroupsOpt) -> None:
    """Change a user's role, lock, TOTP or groups."""
    groups = [] if no_groups else group or None
    user = state.appliance.users.update(name, role=role, disabled=disabled, reset_totp=reset_totp, groups=groups)
    out.print(f"{user.name}: {user.role}{', disabled' if user.disabled else ''}"
              f"{', TOTP' if user.totp_enabled else ''}"
              f"{', groups ' + ', '.join(user.groups) if user.groups else ''}", highlight=False)


@user_app.command("delete")
@reports_errors
def user_delete(name: str) -> None:
    """Delete a user with their sessions and access keys."""
    state.appliance.users.delete(name)
    out.print(f"deleted {name}")
