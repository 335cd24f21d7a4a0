"""Test networks live in their own network namespace, so the host's interfaces are never touched."""
from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Iterator
from contextlib import suppress

import pytest

from vmm.network import create_netns, delete_netns, run


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh, empty network namespace. Afterwards the processes in it (the networks' dnsmasq)
    are killed and it is deleted with its bridges and taps."""
    name = f"cairn-test-{secrets.token_hex(4)}"
    create_netns(name)
    try:
        yield name
    finally:
        for pid in run(["ip", "netns", "pids", name]).split():
            with suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        delete_netns(name)
