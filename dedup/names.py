"""Validation of names that become path elements, and backup id generation.

VM names, disk names and backup ids are used verbatim as directory and file
names, so they are restricted to a charset that cannot escape the store or
hide files: no separators, no leading dot, no whitespace.
"""

import re
import secrets
from datetime import UTC, datetime

from .errors import InvalidNameError

MAX_NAME_LENGTH = 128
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+@-]*")


def check_name(what: str, value: object) -> str:
    """Return value if it is a safe name, else raise InvalidNameError.

    `what` says which kind of name it is ("vm name", "disk name", ...) so the
    message tells the caller which argument was wrong.
    """
    if not isinstance(value, str):
        raise InvalidNameError(f"{what} must be a string, got {type(value).__name__}")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidNameError(f"{what} {value[:32]!r}... is longer than {MAX_NAME_LENGTH} characters")
    if not _NAME.fullmatch(value):
        raise InvalidNameError(
            f"invalid {what} {value!r}: use letters, digits and . _ + @ -, not starting with . + @ or -"
        )
    return value


def new_backup_id(now: datetime | None = None) -> str:
    """A backup id that sorts by time: UTC timestamp plus a random suffix,
    e.g. 20261121T073012Z-3f9a. The suffix keeps ids unique when two backups
    start in the same second."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"
