"""Progress bars on stderr (shown at a terminal only), every size and speed in binary units.

Imported by the commands that show them, when they run: rich's progress machinery is no part of
a quick listing's start-up.
"""
from __future__ import annotations

from typing import Any

from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from appliance.units import human, rate

from .common import err


class RateColumn(ProgressColumn):
    """Transfer speed in binary units (rich's TransferSpeedColumn speaks MB/s)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("?" if speed is None else rate(speed), style="progress.data.speed")


def byte_progress() -> Progress:
    """Bars of bytes: done of total, speed, time left."""
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True), RateColumn(),
                    TimeRemainingColumn(), console=err.console, transient=False, disable=not err.is_terminal)


def count_progress() -> Progress:
    """Bars of things counted (packs, backups): done of total, time taken."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err.console, transient=False, disable=not err.is_terminal)


class JobBars:
    """A job's progress bar, and one bar per disk whose bytes its steps report (a progress
    event's `detail`), as the job's event stream tells them, here or through the API."""

    def __init__(self, kind: str):
        self.kind = kind
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                 TextColumn("{task.fields[amount]}"), TimeRemainingColumn(), console=err.console,
                                 transient=False, disable=not err.is_terminal)
        self.job = self.progress.add_task(kind, total=1.0, amount="")
        self.disks: dict[str, TaskID] = {}

    def __enter__(self) -> JobBars:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def show(self, progress: float, step: str, detail: dict[str, Any] | None) -> None:
        self.progress.update(self.job, completed=progress, description=f"{self.kind}: {step}")
        if detail:
            disk, done, total = detail["disk"], detail["done"], detail["total"]
            if disk not in self.disks:
                self.disks[disk] = self.progress.add_task(f"  {disk}", total=total, amount="")
            self.progress.update(self.disks[disk], completed=done, total=total,
                                 amount=f"{human(done)} of {human(total)}")
