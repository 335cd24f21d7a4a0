"""What every `cairn` sub-command shares: the appliance it works on, output, errors."""
from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape

from appliance.error_statuses import is_reported

if TYPE_CHECKING:
    from rich.progress import Progress

    from appliance.context import Appliance


out = Console()
err = Console(stderr=True)
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table.")
# A backup's disk selection (appliance/backups/selection.py), repeatable.
INCLUDE_OPT = typer.Option([], "--include", help="Read only the disks one of these selects: a name pattern "
                           "(vdb, 'vd[b-d]') or kind:<tag> (qcow2, raw, file, block, network, readonly...).")
EXCLUDE_OPT = typer.Option([], "--exclude", help="Then leave out the disks one of these selects (same syntax).")


class State:
    data_dir: str | None = None

    @functools.cached_property
    def appliance(self) -> Appliance:
        from appliance.context import Appliance

        return Appliance.open(self.data_dir)


state = State()


def reports_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A user error (any kind of appliance/error_statuses.py's table) ends the command with its
    message and exit code 1, no traceback."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if is_reported(e):   # a kind of the error table, which the API answers in words too
                code = 1
            elif isinstance(e, ValueError):
                code = 2
            else:
                raise
            # The message is text, not markup: QEMU's errors hold "[...]" that rich would parse.
            err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
            raise typer.Exit(code) from None
    return wrapper


def emit_json(data: Any) -> None:
    out.out(json.dumps(data, indent=2, default=str), highlight=False)


def byte_progress() -> Progress:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=err, transient=False, disable=not err.is_terminal)

