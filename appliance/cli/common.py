"""What every `cairn` sub-command shares: the appliance it works on, output, errors."""
from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from appliance.context import Appliance
from appliance.errors import CairnError
from chain import ChainError
from dedup import StoreError
from restore import RestoreError
from transports import SourceError
from transports.fleece import ExportError
from vmm import VMError

USER_ERRORS = (CairnError, StoreError, RestoreError, VMError, ExportError, SourceError, ChainError)

out = Console()
err = Console(stderr=True)
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table.")


class State:
    data_dir: str | None = None

    @functools.cached_property
    def appliance(self) -> Appliance:
        return Appliance.open(self.data_dir)


state = State()


def reports_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A user error ends the command with its message and exit code 1, no traceback."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            err.print(f"[red]error:[/red] {e}", highlight=False)
            raise typer.Exit(1) from None
        except ValueError as e:
            err.print(f"[red]error:[/red] {e}", highlight=False)
            raise typer.Exit(2) from None
    return wrapper


def emit_json(data: Any) -> None:
    out.out(json.dumps(data, indent=2, default=str), highlight=False)


def byte_progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=err, transient=False, disable=not err.is_terminal)
