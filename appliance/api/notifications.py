"""Notifications under /api/v1/notifications (the admin's, reading too: targets name receivers and
mail addresses) and the alarms under /api/v1/alarms (everyone's, each sees those of the VMs it sees).

Secrets go in with a target and never come back out: answers say `has_secret`.
"""
from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel

from appliance.access.visibility import visibility
from appliance.context import Appliance
from appliance.errors import ConflictError, NotFoundError
from appliance.notifications.delivery import DeliveryError
from appliance.notifications.quiet import QuietHours
from appliance.notifications.rules import RuleParamsError
from appliance.notifications.service import RuleUpdate, TargetSpec, target_dict

from .answers import raises
from .auth import Caller
from .listing import PageSize


class TestOut(BaseModel):
    delivered: bool
    payload: dict[str, Any]


def notification_router(appliance: Appliance) -> APIRouter:
    router = APIRouter(prefix="/api/v1/notifications", tags=["notifications"],
                       responses=raises(NotFoundError, ConflictError, RuleParamsError))
    notes = appliance.notifications

    @router.get("/targets")
    def list_targets() -> list[dict[str, Any]]:
        return [target_dict(t) for t in notes.targets()]

    @router.post("/targets", status_code=201)
    def add_target(spec: TargetSpec) -> dict[str, Any]:
        return target_dict(notes.put_target(spec, create=True))

    @router.get("/targets/{name}")
    def get_target(name: str) -> dict[str, Any]:
        return target_dict(notes.target(name))

    @router.put("/targets/{name}")
    def replace_target(name: str, spec: TargetSpec) -> dict[str, Any]:
        """Replace the target's settings; leave the secret out to keep the one it has."""
        if spec.name != name:
            raise ConflictError(f"the body names target {spec.name}, the path {name}: rename by removing and adding")
        return target_dict(notes.put_target(spec))

    @router.delete("/targets/{name}")
    def remove_target(name: str) -> dict[str, Any]:
        return target_dict(notes.remove_target(name))

    @router.post("/targets/{name}/test", response_model=TestOut, responses=raises(DeliveryError))
    def send_test(name: str) -> TestOut:
        """Send a test message now (quiet hours do not apply); 502 says why the receiver did not take it."""
        return TestOut(delivered=True, payload=notes.send_test(name))

    @router.get("/rules")
    def list_rules() -> list[dict[str, Any]]:
        return notes.rules()

    @router.get("/rules/{kind}")
    def get_rule(kind: str) -> dict[str, Any]:
        return notes.rule(kind)

    @router.patch("/rules/{kind}")
    def update_rule(kind: str, change: RuleUpdate) -> dict[str, Any]:
        return notes.update_rule(kind, change)

    @router.get("/quiet-hours", response_model=QuietHours | None)
    def get_quiet_hours() -> QuietHours | None:
        return notes.quiet_hours()

    @router.put("/quiet-hours", response_model=QuietHours)
    def set_quiet_hours(hours: QuietHours) -> QuietHours:
        notes.set_quiet_hours(hours)
        return hours

    @router.delete("/quiet-hours", status_code=204)
    def clear_quiet_hours() -> None:
        notes.set_quiet_hours(None)

    @router.get("/alarms")
    def list_alarms(firing: bool = False, limit: PageSize = 200) -> list[dict[str, Any]]:
        return notes.alarms(firing_only=firing, limit=limit)

    @router.get("/outbox")
    def list_outbox(state: Literal["pending", "delivered", "abandoned"] | None = None,
                    limit: PageSize = 200) -> list[dict[str, Any]]:
        return notes.outbox(state, limit)

    return router


def alarm_router(appliance: Appliance) -> APIRouter:
    router = APIRouter(prefix="/api/v1/alarms", tags=["notifications"])
    seen = visibility(appliance)

    @router.get("")
    def alarms(caller: Caller, firing: bool = False, limit: PageSize = 200) -> list[dict[str, Any]]:
        return [a for a in appliance.notifications.alarms(firing_only=firing, limit=limit)
                if seen.sees_resource(caller, a["resource"])]

    return router
