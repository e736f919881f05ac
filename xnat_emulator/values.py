"""Values the emulator's users type: sizes in specs and options, and the error a bad one raises.

The emulator is a package of its own, usable without xnatfs, so it carries this small parser
instead of borrowing the client's; ``BadValue`` is a ``ValueError`` so callers that do not know
the emulator still catch it.
"""

from __future__ import annotations

import re


class BadValue(ValueError):
    """A spec, option or folder the emulator cannot use; its message is one line for a user."""


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``4096``, ``64K``, ``500M``, ``1.5G``, ``20GiB`` → bytes (binary multiples)."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise BadValue(f"not a size: {text!r} (try 4096, 64K, 500M or 20G)")
    return int(float(m[1]) * 1024 ** " KMGT".index(m[2].upper() or " "))
