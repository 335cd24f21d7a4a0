"""Every name a user chooses, and the rule it follows, in one place.

A name becomes a path (a VM's folder, an image file, an instant restore's folder), a word of
QEMU's command line or of QMP (where a comma starts another option), an argument of `ip` or
dnsmasq, a line of a log, a header of an answer. So a name is matched whole against the narrow
rule of its kind and refused before anything uses it; the message says the rule. Whole means
re.fullmatch or `\\Z`: with re.match, `^...$` lets a trailing newline through.

VM, disk, image, NIC and interface names are vmm's (vmm/spec.py, vmm/network.py): QEMU is what
they must suit, and vmm checks them itself whoever calls it. The appliance's own names are here;
`check` raises the caller's error type, so each API keeps its status and error code.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from vmm.spec import VM_NAME_RE

from .errors import CairnError


class InvalidNameError(CairnError):
    """A name that breaks its rule; nothing was done with it."""
    status = 422


@dataclass(frozen=True)
class NameRule:
    pattern: re.Pattern[str]
    says: str   # the rule in words, for the error message

    def check(self, what: str, name: object, error: type[Exception] = InvalidNameError) -> str:
        if not isinstance(name, str) or not self.pattern.fullmatch(name):
            raise error(f"invalid {what} name {name!r}: {self.says}")
        return name


# Like a VM's (it may become a folder or a QEMU word): pools, networks, hosts, host snapshots.
VM_LIKE = NameRule(VM_NAME_RE, "use 1-63 characters a-z 0-9 _ -, starting with a letter")
# Users and groups (they are compared with owners and listed in the audit log).
ACCOUNT = NameRule(re.compile(r"[a-z_][a-z0-9_.-]{0,63}"), "lower-case letters, digits, _ . - (up to 64)")
# Snapshots and scheduling groups: shown and named in requests, kept in the catalog.
LABEL = NameRule(re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}"),
                 "use 1-63 characters A-Z a-z 0-9 _ . : -, starting with a letter or digit")
# The rule as a request field: checked while the request is read (before a job is queued), and
# said in the OpenAPI as the field's pattern.
Label = Annotated[str, Field(pattern=f"^{LABEL.pattern.pattern}$", description=f"a name: {LABEL.says}")]


def check_vm_name(name: object) -> str:
    """A new VM's name (a restore's, an instant restore's, a clone's), checked before any path is made of it."""
    return VM_LIKE.check("VM", name)


def check_text(what: str, text: str, max_length: int) -> str:
    """Free text a user labels something with (an access key's purpose): any language, but no
    control character (a newline would forge lines of a log or a listing)."""
    if not text.strip() or len(text) > max_length:
        raise InvalidNameError(f"{what} must be 1-{max_length} characters")
    if any(unicodedata.category(c).startswith("C") for c in text):
        raise InvalidNameError(f"{what} {text!r} holds a control character")
    return text
