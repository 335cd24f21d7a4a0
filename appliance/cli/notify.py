"""`cairn notify ...`: where alarm messages go (targets), which alarms send them (rules), quiet hours,
and what fired. Changes are written to the catalog; `cairn serve`'s notifier acts on them.

Secrets are read from a file (--secret-file, --password-file), never from the command line,
where other users of the machine could read them in the process list.
"""
from __future__ import annotations

from datetime import time
from pathlib import Path
from typing import Any

import typer

from appliance.notifications.quiet import QuietHours
from appliance.notifications.service import (
    EmailTarget,
    NotificationService,
    RuleUpdate,
    WebhookTarget,
    target_dict,
)

from .common import JsonOpt, emit_json, out, print_table, reports_errors, state, table

notify_app = typer.Typer(help="Alarms and notifications: targets, rules, quiet hours.", no_args_is_help=True)
target_app = typer.Typer(help="Webhooks and mail recipients that alarm messages go to.", no_args_is_help=True)
rule_app = typer.Typer(help="The alarm rules: enable, disable, set parameters and targets.", no_args_is_help=True)
quiet_app = typer.Typer(help="Quiet hours: warnings wait until they end.", no_args_is_help=True)
notify_app.add_typer(target_app, name="target")
notify_app.add_typer(rule_app, name="rule")
notify_app.add_typer(quiet_app, name="quiet-hours")

SecretFileOpt = typer.Option(None, "--secret-file", exists=True, dir_okay=False,
                             help="File holding the HMAC secret the messages are signed with (16+ characters).")
PasswordFileOpt = typer.Option(None, "--password-file", exists=True, dir_okay=False,
                               help="File holding the SMTP password.")
ToOpt = typer.Option(..., "--to", help="Recipient (repeat for more).")
CaFileOpt = typer.Option(None, exists=True, dir_okay=False, help="CA certificate (PEM) the server's certificate "
                         "is signed by, if the system's CAs do not vouch for it.")
ParamOpt = typer.Option([], "--param", help="NAME=VALUE (repeat), e.g. threshold_percent=85.")
TargetOpt = typer.Option([], "--target", help="Send only to these targets (repeat).")


def _service() -> NotificationService:
    return state.appliance.notifications


def _read(path: Path | None) -> str | None:
    return path.read_text().strip() if path else None


@target_app.command("add-webhook")
@reports_errors
def add_webhook(name: str, url: str, secret_file: Path | None = SecretFileOpt,
                disabled: bool = typer.Option(False, "--disabled")) -> None:
    """Add a webhook: alarm messages are POSTed to URL as JSON, signed when a secret is given."""
    _service().put_target(WebhookTarget(name=name, url=url, secret=_read(secret_file), enabled=not disabled),
                          create=True)
    out.print(f"added webhook {name}; try it: cairn notify target test {name}")


@target_app.command("add-mail")
@reports_errors
def add_mail(name: str, host: str = typer.Option(..., help="SMTP server."),
             sender: str = typer.Option(..., "--from", help="Sender address."),
             to: list[str] = ToOpt,
             port: int = typer.Option(587), username: str | None = typer.Option(None),
             password_file: Path | None = PasswordFileOpt,
             ca_file: Path | None = CaFileOpt,
             no_starttls: bool = typer.Option(False, "--no-starttls", help="Plain SMTP: only for a local relay."),
             disabled: bool = typer.Option(False, "--disabled")) -> None:
    """Add a mail target: alarm messages are sent over SMTP, upgraded with STARTTLS."""
    _service().put_target(EmailTarget(name=name, host=host, port=port, sender=sender, recipients=to,
                                      username=username, password=_read(password_file),
                                      ca_file=str(ca_file) if ca_file else None, starttls=not no_starttls,
                                      enabled=not disabled), create=True)
    out.print(f"added mail target {name}; try it: cairn notify target test {name}")


@target_app.command("list")
@reports_errors
def list_targets(as_json: bool = JsonOpt) -> None:
    targets = [target_dict(t) for t in _service().targets()]
    if as_json:
        emit_json(targets)
        return
    listing = table("name", "kind", "enabled", "secret", "where", wide=("where",))
    for t in targets:
        where = t.get("url") or f"{', '.join(t['recipients'])} via {t['host']}:{t['port']}"
        listing.add_row(t["name"], t["kind"], "yes" if t["enabled"] else "no", "yes" if t["has_secret"] else "-", where)
    print_table(listing)


@target_app.command("remove")
@reports_errors
def remove_target(name: str) -> None:
    _service().remove_target(name)
    out.print(f"removed target {name}; its undelivered messages are abandoned")


@target_app.command("test")
@reports_errors
def test_target(name: str) -> None:
    """Send a test message now; fails with the receiver's answer if it does not take it."""
    _service().send_test(name)
    out.print(f"test message delivered to {name}")


@rule_app.command("list")
@reports_errors
def list_rules(as_json: bool = JsonOpt) -> None:
    rules = _service().rules()
    if as_json:
        emit_json(rules)
        return
    listing = table("rule", "severity", "enabled", "parameters", "targets", "what it watches",
                    wide=("parameters", "targets", "what it watches"))
    for r in rules:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        listing.add_row(r["kind"], r["severity"], "yes" if r["enabled"] else "no", params,
                        ", ".join(r["targets"]) or "all", r["description"])
    print_table(listing)


@rule_app.command("set")
@reports_errors
def set_rule(kind: str,
             enable: bool | None = typer.Option(None, "--enable/--disable", help="Run the rule or not."),
             param: list[str] = ParamOpt, target: list[str] = TargetOpt,
             all_targets: bool = typer.Option(False, "--all-targets", help="Send to every enabled target."),
             as_json: bool = JsonOpt) -> None:
    """Change a rule; what is not given stays as it is."""
    params: dict[str, Any] = {}
    for item in param:
        name, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--param {item}: give NAME=VALUE")
        params[name] = value
    targets = [] if all_targets else (target or None)
    rule = _service().update_rule(kind, RuleUpdate(enabled=enable, params=params or None, targets=targets))
    emit_json(rule) if as_json else out.print(f"rule {kind}: {'enabled' if rule['enabled'] else 'disabled'}, "
                                              f"{rule['params']}, targets {', '.join(rule['targets']) or 'all'}")


@quiet_app.command("set")
@reports_errors
def set_quiet(start: str = typer.Argument(..., help="HH:MM"), end: str = typer.Argument(..., help="HH:MM"),
              timezone: str = typer.Option("UTC", help="IANA time zone, e.g. Europe/Berlin."),
              hold_errors: bool = typer.Option(False, "--hold-errors", help="Hold errors too, not only warnings.")
              ) -> None:
    hours = QuietHours(start=time.fromisoformat(start), end=time.fromisoformat(end), timezone=timezone,
                       hold_errors=hold_errors)
    _service().set_quiet_hours(hours)
    out.print(f"quiet hours {start}-{end} {timezone}: {'all messages' if hold_errors else 'warnings'} wait")


@quiet_app.command("clear")
@reports_errors
def clear_quiet() -> None:
    _service().set_quiet_hours(None)
    out.print("no quiet hours: every message goes at once")


@quiet_app.command("show")
@reports_errors
def show_quiet(as_json: bool = JsonOpt) -> None:
    hours = _service().quiet_hours()
    if as_json:
        emit_json(hours.model_dump(mode="json") if hours else None)
    else:
        out.print(f"{hours.start:%H:%M}-{hours.end:%H:%M} {hours.timezone}" if hours else "no quiet hours")


@notify_app.command("alarms")
@reports_errors
def alarms(firing: bool = typer.Option(False, "--firing", help="Only those firing now."),
           as_json: bool = JsonOpt) -> None:
    """Alarms, newest first."""
    found = _service().alarms(firing_only=firing)
    if as_json:
        emit_json(found)
        return
    listing = table("id", "rule", "severity", "state", "since", "summary", wide=("summary",))
    for a in found:
        listing.add_row(str(a["id"]), a["rule"], a["severity"], "firing" if a["firing"] else "resolved",
                        a["started_at"][:16].replace("T", " "), a["summary"])
    print_table(listing)


@notify_app.command("outbox")
@reports_errors
def outbox(state_filter: str | None = typer.Option(None, "--state", help="pending, delivered or abandoned."),
           as_json: bool = JsonOpt) -> None:
    """Messages owed and sent, newest first, with the last error of those not delivered yet."""
    messages = _service().outbox(state_filter)
    if as_json:
        emit_json(messages)
        return
    listing = table("target", "event", "state", "attempts", "next attempt", "summary / last error",
                    wide=("summary / last error",), numbers=("attempts",))
    for m in messages:
        listing.add_row(m["target"], m["event"], m["state"], str(m["attempts"]), m["next_attempt_at"][:16].replace("T", " "),
                        m["last_error"] or m["summary"] or "")
    print_table(listing)
