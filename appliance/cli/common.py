"""What every `cairn` sub-command shares: the appliance it works on, output, errors."""
from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import typer

from appliance.error_statuses import is_reported

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from appliance.context import Appliance

    from .client import Client

# A command's exit status, by the error's code: an error from the API names its code (its class
# on the appliance) in its body; an error raised here is looked up by its class, then its bases.
# Any other error, of appliance/error_statuses.py's table or the API's (refused or failed: the
# message says why), ends the command with status 1.
EXIT_CODES: dict[str, int] = {
    "ValueError": 2, "ValidationError": 2,            # the command line (or a request made of it) is not valid
    "QueryError": 2,                                  # --filter or --sort names no field, or bad syntax
    "UnauthorizedError": 4, "NotSignedInError": 4,    # no token, or one that expired or was revoked
    "ForbiddenError": 5,                              # signed in, but the user's role does not allow it
    "UnreachableError": 6,                            # the appliance did not answer
    "CertificateError": 7,                            # the appliance's certificate is not the one trusted
}
# Exit statuses outside that table: a store check that found damage, and Ctrl-C (128 + SIGINT).
DAMAGE_FOUND = 3
INTERRUPTED = 130


class CliError(Exception):
    """A problem the command line itself found (no credentials, an appliance that does not
    answer, an option that does not apply); its message says what to do."""


def error_codes(e: BaseException) -> list[str]:
    """The error's codes, most specific first: as the API named it, or its class and bases."""
    return getattr(e, "error_codes", None) or [cls.__name__ for cls in type(e).__mro__]


def exit_code(e: BaseException) -> int:
    """EXIT_CODES' status for the error when it names the error itself; else 1 for the error
    table's kinds (some are ValueErrors too, yet refusals: prune without a keep rule); else
    EXIT_CODES' status for its nearest base it names; else 1."""
    codes = error_codes(e)
    if codes[0] in EXIT_CODES:
        return EXIT_CODES[codes[0]]
    if not isinstance(e, CliError) and is_reported(e):
        return 1
    return next((EXIT_CODES[name] for name in codes if name in EXIT_CODES), 1)


def is_user_error(e: BaseException) -> bool:
    """An error to report in its own words: the command line's, or one of the error table's
    kinds (which the API answers in words too), or an invalid value."""
    return isinstance(e, CliError | ValueError) or is_reported(e)


class LazyConsole:
    """A rich Console, made (and rich imported) when something is first printed with it: a
    listing that prints JSON, and nothing else, does without rich (~15 ms to import)."""

    def __init__(self, **options: Any):
        self.options_given = options

    @functools.cached_property
    def console(self) -> Console:
        from rich.console import Console

        return Console(**self.options_given)

    def __getattr__(self, name: str) -> Any:   # print, is_terminal, width...: the console's
        return getattr(self.console, name)


out = LazyConsole(emoji=False)   # ":ab:" in a fingerprint is text, not an emoji
err = LazyConsole(stderr=True, emoji=False, soft_wrap=True)   # a message is one line: the terminal wraps it
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table.")
# A backup's disk selection (appliance/backups/selection.py), repeatable.
INCLUDE_OPT = typer.Option([], "--include", help="Read only the disks one of these selects: a name pattern "
                           "(vdb, 'vd[b-d]') or kind:<tag> (qcow2, raw, file, block, network, readonly...).")
EXCLUDE_OPT = typer.Option([], "--exclude", help="Then leave out the disks one of these selects (same syntax).")


class State:
    """What the root command decided: which appliance the sub-command works on."""
    data_dir: str | None = None
    # The appliance's API URL when the command works through it, else None: this machine's data
    # dir, in this process. `url_asked` is whether this command named it (--url, $CAIRN_URL) or
    # it is the last `cairn login`'s.
    url: str | None = None
    url_asked = False

    @functools.cached_property
    def client(self) -> Client:
        if self.url is not None:
            from .remote import RemoteClient

            return RemoteClient.signed_in(self.url)
        from appliance.settings import Settings

        from .machine import MachineClient

        settings = Settings.resolve(self.data_dir)
        return MachineClient(settings.data_dir, settings.api_socket, self._in_process)

    def _in_process(self) -> Client:
        from .local import LocalClient

        return LocalClient(self.local)

    @property
    def appliance(self) -> Appliance:
        """This machine's appliance, for the commands that work on its data dir only (hosts,
        pools, networks, notifications, VM access and groups): named an appliance, they refuse
        and say where they work."""
        if self.url is not None:
            raise CliError(f"`{command_path()}` works on an appliance's data dir, not through its API ({self.url}): "
                           "run it on the appliance's host (--data-dir, or after `cairn logout`), or use the console")
        return self.local

    def this_host(self) -> Appliance:
        """This machine's appliance, for the commands of an appliance's host itself (serve, db,
        user recovery): see `host_only`."""
        self.host_only()
        return self.local

    def host_only(self) -> None:
        """A command of the appliance's host itself: named an appliance by --url or $CAIRN_URL, it
        refuses; after a `cairn login`, it works here and says so."""
        if self.url is not None and self.url_asked:
            raise CliError(f"`{command_path()}` works on the appliance's host itself (its data dir), not through "
                           f"the API of {self.url}: run it there, without --url or $CAIRN_URL")
        if self.url is not None:
            err.print(f"note: `{command_path()}` works on this machine's data dir, not on {self.url} (signed in)",
                      highlight=False)

    @functools.cached_property
    def local(self) -> Appliance:
        from appliance.context import Appliance

        return Appliance.open(self.data_dir)

    def here(self, what: str) -> None:
        """Say that a command working on an appliance through its API uses `what` from this
        machine all the same (a store named by --store, a directory), so nobody thinks it went there."""
        if self.url is not None:
            err.print(f"note: {what}: this works here, not through {self.url}", highlight=False)


state = State()


def command_path() -> str:
    """The running command as typed, e.g. `cairn user add`."""
    from typer._click.globals import get_current_context

    context = get_current_context(silent=True)
    return context.command_path if context else "cairn"


def password_from_stdin() -> str:
    """--password-stdin's password: stdin's first line."""
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise CliError("--password-stdin: stdin gave no password (one line, then a newline or its end)")
    return line


def reports_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A user error ends the command with its message and its exit code (EXIT_CODES), no traceback."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if not is_user_error(e):
                raise
            from rich.markup import escape

            # The message is text, not markup: QEMU's errors hold "[...]" that rich would parse.
            err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)
            raise typer.Exit(exit_code(e)) from None
    return wrapper


def emit_json(data: Any) -> None:
    """Models, dataclasses and plain data as the API writes them (ISO times, enums by value)."""
    from pydantic_core import to_jsonable_python

    print(json.dumps(to_jsonable_python(data), indent=2))   # as it is: no markup, no wrapping, no rich


FOLDED_WIDTH = 12   # a `wide` column's narrowest, folded: what a table's width must leave it


def table(*columns: str, wide: Sequence[str] = (), numbers: Sequence[str] = ()) -> Table:
    """A listing for `print_table`: its cells are never wrapped or cut (an ID is typed back, a
    size read whole), except the `wide` columns' free text, which wraps to the width left."""
    from rich import box
    from rich.table import Table

    made = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0), show_edge=False)
    for name in columns:
        made.add_column(name, no_wrap=name not in wide, overflow="fold", ratio=1 if name in wide else None,
                        justify="right" if name in numbers else "left")
    return made


def print_table(made: Table) -> None:
    """Within the terminal's width (80 columns when not a terminal) when the table fits there
    with its whole cells and its free text folded; wider otherwise, never cutting a cell (the
    terminal wraps the line)."""
    from rich.measure import Measurement

    console = out.console
    unbounded = console.options.update(max_width=1 << 16)
    needed = len(made.columns) - 1   # a space between columns
    for column in made.columns:
        widest = max(Measurement.get(console, unbounded, cell).maximum for cell in [column.header, *column.cells])
        if column.no_wrap:   # as wide as its widest cell: rich would otherwise shrink it to its longest word
            column.min_width = widest
            needed += widest
        else:   # free text folds, down to a width still worth reading
            column.min_width = min(widest, FOLDED_WIDTH)
            needed += column.min_width
    width = console.width
    console.width = max(width, needed)   # print's own width= can only narrow
    try:
        console.print(made, crop=False)
    finally:
        console.width = width
