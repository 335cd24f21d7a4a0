"""Notifications under /api/v1/notifications (the admin's, reading too: targets name receivers and
mail addresses) and the alarms under /api/v1/alarms (everyone's, each sees those of the VMs it sees).

Secrets go in with a target and never come back out: answers say `has_secret`.
"""
from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel

from appliance.access.visibility import visibility
from appliance.errors import ConflictError, NotFoundError
from appliance.notifications.delivery import DeliveryError
from appliance.notifications.quiet import QuietHours
from appliance.notifications.rules import RuleParamsError
from appliance.notifications.service import RuleUpdate, TargetSpec, target_dict

from .answers import raises
from .auth import Caller
from .dependencies import ApplianceDep
from .listing import PageSize


class TestOut(BaseModel):
    delivered: bool
    payload: dict[str, Any]


notification_routes = APIRouter(prefix="/api/v1/notifications", tags=["notifications"],
                                responses=raises(NotFoundError, ConflictError, RuleParamsError))


@notification_routes.get("/targets")
def list_targets(appliance: ApplianceDep) -> list[dict[str, Any]]:
    return [target_dict(t) for t in appliance.notifications.targets()]


@notification_routes.post("/targets", status_code=201)
def add_target(appliance: ApplianceDep, spec: TargetSpec) -> dict[str, Any]:
    return target_dict(appliance.notifications.put_target(spec, create=True))


@notification_routes.get("/targets/{name}")
def get_target(appliance: ApplianceDep, name: str) -> dict[str, Any]:
    return target_dict(appliance.notifications.target(name))


@notification_routes.put("/targets/{name}")
def replace_target(appliance: ApplianceDep, name: str, spec: TargetSpec) -> dict[str, Any]:
    """Replace the target's settings; leave the secret out to keep the one it has."""
    if spec.name != name:
        raise ConflictError(f"the body names target {spec.name}, the path {name}: rename by removing and adding")
    return target_dict(appliance.notifications.put_target(spec))


@notification_routes.delete("/targets/{name}")
def remove_target(appliance: ApplianceDep, name: str) -> dict[str, Any]:
    return target_dict(appliance.notifications.remove_target(name))


@notification_routes.post("/targets/{name}/test", response_model=TestOut, responses=raises(DeliveryError))
def send_test(appliance: ApplianceDep, name: str) -> TestOut:
    """Send a test message now (quiet hours do not apply); 502 says why the receiver did not take it."""
    return TestOut(delivered=True, payload=appliance.notifications.send_test(name))


@notification_routes.get("/rules")
def list_rules(appliance: ApplianceDep) -> list[dict[str, Any]]:
    return appliance.notifications.rules()


@notification_routes.get("/rules/{kind}")
def get_rule(appliance: ApplianceDep, kind: str) -> dict[str, Any]:
    return appliance.notifications.rule(kind)


@notification_routes.patch("/rules/{kind}")
def update_rule(appliance: ApplianceDep, kind: str, change: RuleUpdate) -> dict[str, Any]:
    return appliance.notifications.update_rule(kind, change)


@notification_routes.get("/quiet-hours", response_model=QuietHours | None)
def get_quiet_hours(appliance: ApplianceDep) -> QuietHours | None:
    return appliance.notifications.quiet_hours()


@notification_routes.put("/quiet-hours", response_model=QuietHours)
def set_quiet_hours(appliance: ApplianceDep, hours: QuietHours) -> QuietHours:
    appliance.notifications.set_quiet_hours(hours)
    return hours


@notification_routes.delete("/quiet-hours", status_code=204)
def clear_quiet_hours(appliance: ApplianceDep) -> None:
    appliance.notifications.set_quiet_hours(None)


@notification_routes.get("/alarms")
def list_alarms(appliance: ApplianceDep, firing: bool = False, limit: PageSize = 200) -> list[dict[str, Any]]:
    return appliance.notifications.alarms(firing_only=firing, limit=limit)


@notification_routes.get("/outbox")
def list_outbox(appliance: ApplianceDep, state: Literal["pending", "delivered", "abandoned"] | None = None,
                limit: PageSize = 200) -> list[dict[str, Any]]:
    return appliance.notifications.outbox(state, limit)


alarm_routes = APIRouter(prefix="/api/v1/alarms", tags=["notifications"])


@alarm_routes.get("")
def alarms(appliance: ApplianceDep, caller: Caller, firing: bool = False,
           limit: PageSize = 200) -> list[dict[str, Any]]:
    seen = visibility(appliance)
    return [a for a in appliance.notifications.alarms(firing_only=firing, limit=limit)
            if seen.sees_resource(caller, a["resource"])]


# Both, for one include line in create_app.
router = APIRouter()
router.include_router(notification_routes)
router.include_router(alarm_routes)
