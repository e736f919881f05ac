"""One resource as a few zips at once: name patterns that split it into disjoint parts.

One zip is one connection, and on a WAN one connection is not the link: a TCP stream is held
to its window over the round trip, which is why the mount reads a big file by several ranges
at once. A resource of 6,000 files as one zip over the WAN profile (100 Mbit/s a connection,
400 in all) took 4.24x the link limit. XNAT zips the files of one resource that a pattern
names (``files/{prefix}*?format=zip``, ``FileList.handleMultipleCatalogs``, docs/xnat-api.md
§7) at the cost of one catalog parse, as a whole zip, so a big resource comes as a few such
zips in parallel. Near the server (``zipstream.near``) one stream is not held back, and a
resource is one zip.

On the server the pattern is a Java regex (its last ``*`` made ``.*``) that an entry's URI
must match whole, so what a prefix selects is computed here with the same regex over the
listing, never assumed: prefixes hold letters, digits, ``_``, ``-``, ``/`` and ``.`` alone
(the same regex in Java and Python; ``.`` matches any character, which the computation
includes), and the parts selected must be disjoint. A file no part selects (a name that is
its part's prefix itself) comes by a GET of its own. A listed name ending in ``.zip`` keeps
the resource whole: when the last file of XNAT's (hash) order has such a name, it sends no
zip at all.
"""

from __future__ import annotations

import heapq
import itertools
import re
import string
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from xnatfs.reader.zipstream import near

ZIP_PARTS = 4
"""Zips of one resource at once, at most: enough to fill a WAN link that holds each stream to
a quarter of it (the benchmarks' profile), few enough that a resource's catalog is parsed a
handful of times."""
PART_MIN_BYTES = 16 << 20
"""A part below this is not split further: a zip's request and catalog parse cost about as
much as a GET, and a small zip is over before a second connection would help."""
MAX_PARTS = 16
"""Parts of one resource, at most, however its names fall."""

_SAFE = frozenset(string.ascii_letters + string.digits + "_-/.")


@dataclass(frozen=True, slots=True)
class Part:
    """One zip of a resource: the pattern asked for, and every listed file it selects."""

    pattern: str
    sends: frozenset[str]


@dataclass(slots=True)
class _Node:
    prefix: str
    sends: frozenset[str]
    todo: int  # bytes of the wanted files it sends


def parts_for(round_trip: float, jobs: int) -> int:
    """How many zips a big resource is split into, for a server ``round_trip`` seconds
    away (the quickest exchange so far) and a run of ``jobs`` connections."""
    return 1 if near(round_trip) else min(ZIP_PARTS, jobs)


def split(listed: Collection[str], todo: Mapping[str, int], parts: int = ZIP_PARTS
          ) -> list[Part] | None:
    """Parts for the files of ``todo`` (path in the resource -> size), biggest first, so
    that none is much above ``1/parts`` of the bytes; None: one zip of the whole resource is
    as good (too little to split, names that do not split, a ``.zip`` name)."""
    total = sum(todo.values())
    if parts < 2 or total < 2 * PART_MIN_BYTES or \
            any(name.lower().endswith(".zip") for name in listed):
        return None
    target = max(total / parts, PART_MIN_BYTES)
    order = itertools.count()
    root = _Node("", frozenset(listed), total)
    heap: list[tuple[int, int, _Node]] = [(-total, next(order), root)]
    final: list[_Node] = []
    while heap:
        _, _, node = heapq.heappop(heap)
        children = None
        if node.todo > target and len(final) + len(heap) < MAX_PARTS:
            children = _children(node, todo)
        if children is None or len(final) + len(heap) + len(children) > MAX_PARTS:
            final.append(node)
            continue
        for child in children:
            heapq.heappush(heap, (-child.todo, next(order), child))
    if len(final) < 2:
        return None
    final.sort(key=lambda n: -n.todo)
    return [Part(n.prefix + "*", n.sends) for n in final]


def _children(node: _Node, todo: Mapping[str, int]) -> list[_Node] | None:
    """The node split at the next character of its names, each child's prefix run on to its
    names' common prefix; None when that cannot be done exactly (an unsafe character, parts
    that overlap, or a wanted file that no child selects but its own prefix)."""
    depth = len(node.prefix)
    groups: dict[str, list[str]] = {}
    for name in node.sends:
        if name.startswith(node.prefix) and len(name) > depth:
            groups.setdefault(name[depth], []).append(name)
    if len(groups) < 2 and not any(len(n) == depth for n in node.sends):
        # one branch only: run the prefix on, then split there
        if not groups:
            return None
        (names,) = groups.values()
        prefix = _safe_common(names, depth)
        if len(prefix) == depth:
            return None
        grown = _Node(prefix, _selected(prefix, node.sends), node.todo)
        return _children(grown, todo) if grown.sends == node.sends else None
    children = []
    for char, names in groups.items():
        if char not in _SAFE:
            return None
        prefix = _safe_common(names, depth)
        sends = _selected(prefix, node.sends)
        children.append(_Node(prefix, sends, sum(todo.get(n, 0) for n in sends)))
    covered = sum(len(c.sends) for c in children)
    if len(frozenset().union(*(c.sends for c in children))) != covered:
        return None  # a "." of one prefix selects files of another
    loose = node.sends.difference(*(c.sends for c in children))
    if any(name in todo for name in loose):
        return None
    return [c for c in children if c.todo]


def _safe_common(names: list[str], depth: int) -> str:
    """The names' common prefix, cut before the first character a pattern cannot hold."""
    lo, hi = min(names), max(names)  # what these two share, all of them share
    at = depth
    while at < len(lo) and at < len(hi) and lo[at] == hi[at] and lo[at] in _SAFE:
        at += 1
    return lo[:at]


def _selected(prefix: str, among: frozenset[str]) -> frozenset[str]:
    """What XNAT sends for ``prefix*``: the names the regex ``prefix.*`` matches whole."""
    if "." not in prefix:
        return frozenset(n for n in among if n.startswith(prefix))
    regex = re.compile(prefix + ".*")
    return frozenset(n for n in among if regex.fullmatch(n))
