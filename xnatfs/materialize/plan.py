"""What to download: selected tree paths, filters and a shard, turned into planned files.

The tree is the one source of layout: a planned file's ``path`` is its tree path, exactly what
the mount shows. Walking is concurrent: every folder that needs a listing (a project, a session,
a resources folder) is listed on a thread pool, and each file is handed to ``emit`` as soon as
its folder is known, so downloads start while the rest of the project is still being listed.
Folders that no file of the selection can come from (a subject or session the filters reject)
are never listed at all.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from xnatfs.errors import AuthError, ConnectError, ServerError, UsageError, XnatfsError
from xnatfs.tree.model import Context, Node, RemoteFile, Tree, parse_time, split_path

log = logging.getLogger(__name__)
T = TypeVar("T")
# A session's folder comes from several listings, any of which a flaky proxy may cut short;
# the client retries 5xx and refused connections, this retries the whole folder.
LISTING_RETRY_PAUSES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)

# Levels at or below which a context field is final; a folder whose final fields fail a filter
# cannot hold a wanted file. Below a ``resources`` folder only the resource label still changes.
_SUBJECT_FINAL = frozenset({"subject", "session", "scan", "assessor", "reconstruction"})
_SESSION_FINAL = frozenset({"session", "scan", "assessor", "reconstruction"})
_SCAN_FINAL = frozenset({"scan", "assessor", "reconstruction"})


@dataclass(frozen=True, slots=True)
class PlannedFile:
    """One file to have in the output: its tree path (relative, no leading ``/``) and node."""

    path: str
    node: Node

    @property
    def file(self) -> RemoteFile:
        assert self.node.file is not None
        return self.node.file


@dataclass(frozen=True, slots=True)
class ListingFailure:
    """A folder whose listing failed: its files are unknown, so the run is incomplete."""

    path: str
    reason: str


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


def _patiently(listing: Callable[[], T], path: str) -> T:
    """``listing()``, tried again after a network failure or a 5xx (listings are idempotent)."""
    for pause in LISTING_RETRY_PAUSES:
        try:
            return listing()
        except (ConnectError, ServerError) as exc:  # a cut body, a reset, a 5xx burst
            log.info("listing %s failed (%s); trying again", path or "/", exc)
            time.sleep(pause)
    return listing()


def normalise_path(path: str) -> str:
    """``/P1//S1/`` → ``P1/S1``; ``.`` and ``..`` are not tree names, so they are refused."""
    parts = split_path(path)
    if any(p in (".", "..") for p in parts):
        raise UsageError(f"bad tree path {path!r}: '.' and '..' are not allowed")
    return "/".join(parts)


class Planner:
    """Walks the selection concurrently; ``emit`` receives each wanted file exactly once
    (tree names are unique per folder and nested selections are merged)."""

    def __init__(
        self, tree: Tree, selection: Selection, submit: Callable[[Callable[[], None]], None],
        emit: Callable[[PlannedFile], None],
    ) -> None:
        self.tree = tree
        self.selection = selection
        self._submit = submit
        self._emit = emit
        self.failures: list[ListingFailure] = []
        self._lock = threading.Lock()
        self._pending = 0
        self._idle = threading.Condition(self._lock)
        self._fatal: BaseException | None = None

    def roots(self) -> list[tuple[str, Node]]:
        """The selected nodes; an unknown path is a NotFound (exit 4) before anything starts.
        A path inside another selected path is dropped (its files come once)."""
        paths = sorted({normalise_path(p) for p in self.selection.paths})
        kept = [p for p in paths
                if not any(p != q and (not q or p.startswith(q + "/")) for q in paths)]
        return [(p, _patiently(lambda p=p: self.tree.lookup(p), p)) for p in kept]

    def run(self, roots: list[tuple[str, Node]]) -> None:
        """Walk ``roots``; returns when everything below them is listed and emitted.
        An AuthError aborts the walk; other listing failures are recorded and skipped."""
        for path, node in roots:
            self._visit(path, node)
        with self._idle:
            while self._pending and self._fatal is None:
                self._idle.wait()
        if self._fatal is not None:
            raise self._fatal

    def cancel(self, exc: BaseException) -> None:
        """Stop the walk: ``run`` raises ``exc`` (listings under way finish, nothing new)."""
        with self._idle:
            if self._fatal is None:
                self._fatal = exc
            self._idle.notify_all()

    def _visit(self, path: str, node: Node) -> None:
        if not node.is_dir:
            self._offer(path, node)
        elif node.children is not None:
            self._expand(path, node)
        else:
            with self._lock:
                self._pending += 1
            self._submit(lambda: self._list(path, node))

    def _list(self, path: str, node: Node) -> None:
        try:
            _patiently(lambda: self.tree.children(node), path)
            self._expand(path, node)
        except AuthError as exc:
            self.cancel(exc)
        except XnatfsError as exc:
            with self._lock:
                self.failures.append(ListingFailure(path or "/", str(exc)))
        except BaseException as exc:  # a bug: surface it in the caller, don't hang
            self.cancel(exc)
        finally:
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()

    def _expand(self, path: str, node: Node) -> None:
        filters = self.selection.filters
        for name, kid in sorted(self.tree.children(node).items()):
            if self._fatal is not None:
                return
            kid_path = f"{path}/{name}" if path else name
            if kid.is_dir and filters.rejects_folder(name, kid.context):
                continue
            self._visit(kid_path, kid)

    def _offer(self, path: str, node: Node) -> None:
        selection = self.selection
        if not selection.filters.admits_file(path, node.context):
            return
        if selection.shard.takes(path):
            self._emit(PlannedFile(path, node))
