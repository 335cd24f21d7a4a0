"""Sizes in and out, in one unit system: binary (1 KiB = 1024 bytes, 1 MiB = 1024 KiB, ...).

A size is read as 512M, 10G or 10GiB, all binary; 10GB is refused rather than guessed, since it
means 10^10 bytes to some and 10 GiB to others. Every size Cairn prints (tables, messages,
progress bars) comes from `human`, so what it prints can be typed back.
"""
from __future__ import annotations

import re

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(i?b)?|b)?\s*")


def parse_size(text: str) -> int:
    """'10G', '512M', '1GiB', '4096' -> bytes."""
    m = _SIZE.fullmatch(text.lower())
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 512M, 10G)")
    number, unit, suffix = m.groups()
    if suffix == "b":
        raise ValueError(f"{text!r}: sizes are binary here: write {number}{unit.upper()} or "
                         f"{number}{unit.upper()}iB (1 {unit.upper()}iB = {_UNITS[unit]} bytes)")
    size = int(float(number) * _UNITS[unit or ""])
    if size <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return size


def human(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def rate(bytes_per_second: float) -> str:
    """1572864 -> '1.5 MiB/s'."""
    return f"{human(bytes_per_second)}/s"
