"""The alarm rules: what each watches, how bad it is, and the parameters an admin may set.

Every rule kind exists from the start with its defaults; the catalog keeps only what an admin
changed (records.NotificationRuleRecord). Severity decides what quiet hours hold back:
warnings wait for the morning, errors are sent at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.errors import CairnError, NotFoundError


class RuleKind(StrEnum):
    BACKUP_FAILED = "backup.failed"
    BACKUP_MISSED = "backup.missed"
    VERIFY_DAMAGE = "verify.damage"
    STORE_FILL = "store.fill"
    BOOT_TEST_FAILED = "boottest.failed"
    HA_GAVE_UP = "ha.gave_up"
    HOST_UNREACHABLE = "host.unreachable"
    CERTIFICATE_EXPIRY = "certificate.expiry"


class Severity(StrEnum):
    WARNING = "warning"
    ERROR = "error"


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackupMissedParams(NoParams):
    grace_minutes: int = Field(60, ge=1, le=7 * 24 * 60,
                               description="how long after a policy's run is due its backup may still arrive")


class StoreFillParams(NoParams):
    threshold_percent: float = Field(90.0, gt=0, le=100,
                                     description="fires when the store's filesystem is fuller than this")


class HostUnreachableParams(NoParams):
    check_every_seconds: int = Field(300, ge=10, le=86400, description="how often each host is asked")


class CertificateExpiryParams(NoParams):
    days: int = Field(14, ge=1, le=365, description="fires this many days before the certificate expires")
    certificate: str | None = Field(None, description="PEM file to watch; default: the data dir's tls/cert.pem")


@dataclass(frozen=True)
class RuleInfo:
    kind: RuleKind
    severity: Severity
    description: str
    params: type[NoParams]


RULES: dict[RuleKind, RuleInfo] = {info.kind: info for info in (
    RuleInfo(RuleKind.BACKUP_FAILED, Severity.ERROR,
             "a VM's backup job failed; resolved by its next successful backup", NoParams),
    RuleInfo(RuleKind.BACKUP_MISSED, Severity.WARNING,
             "a backup policy's scheduled run produced no backup of a VM it selects", BackupMissedParams),
    RuleInfo(RuleKind.VERIFY_DAMAGE, Severity.ERROR,
             "verify found damaged backups; resolved once no backup is marked damaged", NoParams),
    RuleInfo(RuleKind.STORE_FILL, Severity.WARNING,
             "the store's filesystem is fuller than the threshold", StoreFillParams),
    RuleInfo(RuleKind.BOOT_TEST_FAILED, Severity.ERROR,
             "the latest boot test of a VM's backup failed", NoParams),
    RuleInfo(RuleKind.HA_GAVE_UP, Severity.ERROR,
             "HA stopped restarting a VM that kept crashing; resolved when HA is enabled again", NoParams),
    RuleInfo(RuleKind.HOST_UNREACHABLE, Severity.WARNING,
             "a registered libvirt or ssh host does not answer", HostUnreachableParams),
    RuleInfo(RuleKind.CERTIFICATE_EXPIRY, Severity.WARNING,
             "the appliance's TLS certificate expires soon (an error once it has expired)", CertificateExpiryParams),
)}


class RuleParamsError(CairnError):
    status = 422


def rule_info(kind: str) -> RuleInfo:
    try:
        return RULES[RuleKind(kind)]
    except ValueError:
        raise NotFoundError(f"no alarm rule {kind!r}; the rules are: {', '.join(RULES)}") from None


def rule_params(kind: str, params: dict[str, Any]) -> NoParams:
    """The rule's parameters, checked; the error names each bad one and says what it takes."""
    info = rule_info(kind)
    try:
        return info.params.model_validate(params)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'params'}: {x['msg']}" for x in e.errors())
        allowed = ", ".join(info.params.model_fields) or "none"
        raise RuleParamsError(f"rule {kind}: {problems} (its parameters: {allowed})") from e
