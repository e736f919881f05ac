"""Which files a run takes: tree paths, filters on what a folder is, and a shard.

Filters decide on a folder's context (project, subject, session, scan, resource) before it is
listed, so the walk never lists a folder no wanted file can come from; file paths are matched
with shell patterns. A shard splits the selection by a hash of the tree path alone, so
machines of a job array agree on the split without talking to each other.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from xnatfs.errors import UsageError
from xnatfs.tree.model import Context, parse_time, split_path

# Levels at or below which a context field is final; a folder whose final fields fail a filter
# cannot hold a wanted file. Below a ``resources`` folder only the resource label still changes.
_SUBJECT_FINAL = frozenset({"subject", "session", "scan", "assessor", "reconstruction"})
_SESSION_FINAL = frozenset({"session", "scan", "assessor", "reconstruction"})
_SCAN_FINAL = frozenset({"scan", "assessor", "reconstruction"})



class Glob:
    """A shell pattern; ``*`` also matches ``/`` (as in ``find -path``)."""

    def __init__(self, pattern: str, option: str, *, fold_case: bool) -> None:
        if not pattern or "\0" in pattern:
            raise UsageError(f"{option}: empty pattern")
        if _unclosed_bracket(pattern):
            raise UsageError(f"{option} {pattern!r}: unclosed '[' (write [[] for a literal '[')")
        self.pattern = pattern
        flags = re.IGNORECASE if fold_case else 0
        self._regex = re.compile(fnmatch.translate(pattern), flags | re.DOTALL)

    def __call__(self, text: str) -> bool:
        return self._regex.match(text) is not None

    def __repr__(self) -> str:
        return f"Glob({self.pattern!r})"


def _unclosed_bracket(pattern: str) -> bool:
    """A ``[`` that opens no set: fnmatch would silently match it literally."""
    i = 0
    while (i := pattern.find("[", i)) != -1:
        j = i + 1
        if j < len(pattern) and pattern[j] in "!^":
            j += 1
        if j < len(pattern) and pattern[j] == "]":
            j += 1
        close = pattern.find("]", j)
        if close == -1:
            return True
        i = close + 1
    return False


def parse_date(text: str) -> float:
    """``--since``: ``2024-03-01`` or ``2024-03-01 12:30[:00]`` (or with a ``T``), local time."""
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise UsageError(f"--since {text!r}: not a date (use YYYY-MM-DD [HH:MM])") from None


@dataclass(frozen=True)
class Filters:
    """Which files of the selected folders to take. Several patterns for one option are
    alternatives; different options must all hold. Options about a session or a scan take only
    files that have one: ``--scan-type`` keeps scan files only, ``--session``, ``--xsi-type`` and
    ``--since`` keep files inside sessions only, ``--subject`` drops project resources."""

    scan_types: tuple[Glob, ...] = ()
    resources: tuple[Glob, ...] = ()
    subjects: tuple[Glob, ...] = ()
    sessions: tuple[Glob, ...] = ()
    xsi_types: tuple[Glob, ...] = ()
    includes: tuple[Glob, ...] = ()
    excludes: tuple[Glob, ...] = ()
    since: float | None = None

    @classmethod
    def from_options(
        cls,
        *,
        scan_type: Iterable[str] = (),
        resource: Iterable[str] = (),
        subject: Iterable[str] = (),
        session: Iterable[str] = (),
        xsi_type: Iterable[str] = (),
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
        since: str | None = None,
    ) -> Filters:
        """Filters from command-line values; a bad pattern or date is a UsageError.

        Labels and types match without regard to case (XNAT data is cased inconsistently:
        ``DICOM``, ``dicom``); tree paths in ``--include``/``--exclude`` match exactly."""

        def globs(values: Iterable[str], option: str, fold: bool = True) -> tuple[Glob, ...]:
            return tuple(Glob(v, option, fold_case=fold) for v in values)

        return cls(
            scan_types=globs(scan_type, "--scan-type"),
            resources=globs(resource, "--resource"),
            subjects=globs(subject, "--subject"),
            sessions=globs(session, "--session"),
            xsi_types=globs(xsi_type, "--xsi-type"),
            includes=globs((p.lstrip("/") for p in include), "--include", fold=False),
            excludes=globs((p.lstrip("/") for p in exclude), "--exclude", fold=False),
            since=parse_date(since) if since else None,
        )

    def rejects_folder(self, name: str, ctx: Context) -> bool:
        """True when no file below this folder can pass (so: don't list it)."""
        return self._rejects(ctx, settled=name == "resources" or bool(ctx.resource))

    def admits_file(self, path: str, ctx: Context) -> bool:
        if self._rejects(ctx, settled=True):
            return False
        if self.includes and not any(g(path) for g in self.includes):
            return False
        return not any(g(path) for g in self.excludes)

    def _rejects(self, ctx: Context, *, settled: bool) -> bool:
        """``settled``: every field but the resource label is final for this context."""
        level = ctx.level
        if self.subjects and (settled or level in _SUBJECT_FINAL) and not _any(
                self.subjects, ctx.subject):
            return True
        if settled or level in _SESSION_FINAL:
            if self.sessions and not _any(self.sessions, ctx.session):
                return True
            if self.xsi_types and not _any(self.xsi_types, ctx.xsi_type,
                                           ctx.xsi_type.rpartition(":")[2]):
                return True
            if self.since is not None and not self._recent(ctx):
                return True
        if self.scan_types and (settled or level in _SCAN_FINAL) and not (
                ctx.scan_id and _any(self.scan_types, ctx.scan_type, ctx.series_description)):
            return True
        return bool(self.resources and ctx.resource and not _any(self.resources, ctx.resource))

    def _recent(self, ctx: Context) -> bool:
        """Acquired or archived on or after ``since`` (new data either way)."""
        assert self.since is not None
        stamps = (parse_time(ctx.date), parse_time(ctx.inserted))
        return any(t is not None and t >= self.since for t in stamps)


def _any(globs: tuple[Glob, ...], *values: str) -> bool:
    return any(g(v) for g in globs for v in values if v)


@dataclass(frozen=True, slots=True)
class Shard:
    """``K/N``: the files whose tree path hashes to K-1 modulo N. The hash depends on the path
    alone, so N machines agree on the split without talking to each other."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not m or not 1 <= int(m[1]) <= int(m[2]):
            raise UsageError(f"--shard {text!r}: expected K/N with 1 <= K <= N, e.g. 2/8")
        return cls(int(m[1]), int(m[2]))

    def takes(self, path: str) -> bool:
        if self.count == 1:
            return True
        digest = hashlib.sha256(path.encode("utf-8", "surrogatepass")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index - 1


@dataclass(frozen=True)
class Selection:
    """Tree paths to take (each a project, subject, session, ..., or one file), filters and a
    shard."""

    paths: tuple[str, ...]
    filters: Filters = Filters()
    shard: Shard = Shard(1, 1)


def normalise_path(path: str) -> str:
    """``/P1//S1/`` → ``P1/S1``; ``.`` and ``..`` are not tree names, so they are refused."""
    parts = split_path(path)
    if any(p in (".", "..") for p in parts):
        raise UsageError(f"bad tree path {path!r}: '.' and '..' are not allowed")
    return "/".join(parts)
