"""Quiet hours: a nightly window in which warnings wait until the morning; errors are sent at once
(unless `hold_errors`). A message held back is delivered when the window ends."""
from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .rules import Severity


class QuietHours(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: time = Field(description="local time the window opens, e.g. 22:00")
    end: time = Field(description="local time it closes, e.g. 07:00 (the next morning when before start)")
    timezone: str = Field("UTC", description="IANA time zone of start and end, e.g. Europe/Berlin")
    hold_errors: bool = Field(False, description="hold errors too, not only warnings")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}: give an IANA name such as Europe/Berlin or UTC") from None
        return value

    def release(self, now: datetime, severity: Severity) -> datetime:
        """When a message of this severity raised `now` may go: now, or the end of the window it falls in."""
        if severity == Severity.ERROR and not self.hold_errors:
            return now
        local = now.astimezone(ZoneInfo(self.timezone))
        for day in (local.date() - timedelta(days=1), local.date()):   # a window opened yesterday may still run
            opens = datetime.combine(day, self.start, local.tzinfo)
            closes = datetime.combine(day + timedelta(days=self.end <= self.start), self.end, local.tzinfo)
            if opens <= local < closes:
                return closes.astimezone(now.tzinfo)
        return now
