"""Command-line values shared by every subcommand: sizes and positive numbers.

Each parser raises one line naming what was expected, as a UsageError that argparse also
takes as a bad value (``type=``), so every caller ends in one line and exit code 2.
"""

from __future__ import annotations

import argparse
import re

from xnatfs.errors import UsageError


class BadValue(UsageError, argparse.ArgumentTypeError):
    """A UsageError that argparse also reports as a bad option value."""


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``4096``, ``64K``, ``500M``, ``1.5G``, ``20GiB`` → bytes (binary multiples)."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise BadValue(f"not a size: {text!r} (try 4096, 64K, 500M or 20G)")
    return int(float(m[1]) * 1024 ** " KMGT".index(m[2].upper() or " "))


def human_size(n: float) -> str:
    """``1536`` → ``1.5 KiB``: sizes and rates as the commands print them."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise BadValue(f"expected a positive whole number, not {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise BadValue(f"expected a positive number of seconds, not {text!r}")
    return value
