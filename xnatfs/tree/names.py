"""Server names → filesystem names that are safe, unique in their folder, and stable.

XNAT labels are not validated (spaces, ``/``, ``..``, NUL and very long names all occur), and two
items can share a label. Every name a user sees passes through here: no name can leave its
folder, and collisions are resolved by a suffix taken from the item's server ID, in an order that
depends only on the listing, so the same listing always gives the same names.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Hashable, Iterable
from typing import TypeVar

MAX_NAME_BYTES = 255
_UNSAFE = re.compile(r"[/\x00]")
_NON_WORD = re.compile(r"\W", re.ASCII)
_EXT = re.compile(r"(?:\.[A-Za-z][A-Za-z0-9]{0,7}){1,2}$")
K = TypeVar("K", bound=Hashable)


def safe_name(raw: str, fallback: str = "_") -> str:
    """One path component: no ``/`` or NUL, never ``.``/``..``/empty, at most 255 bytes."""
    name = _UNSAFE.sub("_", raw)
    if name == "":
        name = _UNSAFE.sub("_", fallback) or "_"
    if name in (".", ".."):
        name = "_" + name
    return _fit(name)


def _fit(name: str, suffix: str = "") -> str:
    """``name`` with ``suffix`` before its extension, shortened to 255 bytes if need be."""
    stem, ext = _split_ext(name)
    if len((name + suffix).encode()) <= MAX_NAME_BYTES:
        return stem + suffix + ext
    tail = "~" + hashlib.sha1(name.encode()).hexdigest()[:8] + suffix + ext
    room = MAX_NAME_BYTES - len(tail.encode())
    return stem.encode()[:room].decode(errors="ignore") + tail


def _split_ext(name: str) -> tuple[str, str]:
    """``a.nii.gz`` → (``a``, ``.nii.gz``): tools like nibabel go by the extension."""
    m = _EXT.search(name)
    return (name[: m.start()], m.group()) if m and m.start() > 0 else (name, "")


def scan_folder_name(scan_id: str, scan_type: str) -> str:
    """XNAT's own zip layout: ``{ID}-{type}`` with every non-word character of the type as _."""
    return f"{scan_id}-{_NON_WORD.sub('_', scan_type)}" if scan_type else scan_id


def assign_names(
    items: Iterable[tuple[str, K, str]], reserved: Iterable[str] = ()
) -> dict[str, K]:
    """Unique safe names for ``(raw name, key, tiebreak)`` items, e.g. tiebreak = server ID.

    The item that sorts first (by safe name, then tiebreak) keeps the plain name; the others
    get ``~tiebreak`` (then a counter), as do items whose name is in ``reserved``.
    """
    taken = set(reserved)
    out: dict[str, K] = {}
    staged = sorted(((safe_name(raw, tie), tie, key) for raw, key, tie in items),
                    key=lambda t: (t[0], t[1]))
    for name, tie, key in staged:
        candidate = name
        n = 1
        while candidate in taken:
            suffix = f"~{_tie(tie)}" + (f"~{n}" if n > 1 else "")
            candidate = _fit(name, suffix)
            n += 1
        taken.add(candidate)
        out[candidate] = key
    return out


def _tie(tie: str) -> str:
    """The tiebreak as a name suffix; a long one (an ID may be any label) as a short hash, so
    the suffix always leaves room in 255 bytes."""
    text = _UNSAFE.sub("_", tie)
    return text if len(text.encode()) <= 32 else hashlib.sha1(tie.encode()).hexdigest()[:8]
