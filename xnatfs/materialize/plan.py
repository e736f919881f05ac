"""The walk: a selection turned into planned files, listed concurrently.

The tree is the one source of layout: a planned file's ``path`` is its tree path, exactly what
the mount shows. Walking is concurrent: every folder that needs a listing (a project, a session,
a resources folder) is listed on a thread pool, and each file is handed to ``emit`` as soon as
its folder is known, so downloads start while the rest of the project is still being listed.
Folders that no file of the selection can come from (a subject or session the filters reject)
are never listed at all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from xnatfs.errors import AuthError, XnatfsError
from xnatfs.materialize.selection import Selection, normalise_path
from xnatfs.tree.model import Node, RemoteFile, Tree
from xnatfs.xnat.rows import split_file_uri

log = logging.getLogger(__name__)
T = TypeVar("T")
# A session's folder comes from several listings, any of which a flaky proxy may cut short;
# the client retries 5xx and refused connections, this retries the whole folder.
LISTING_RETRY_PAUSES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)

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
class PlannedResource:
    """One resource's files, as its listing gave them: what a zip of it holds (``listed``,
    by the path below ``/files/`` in each URI) and which of them the selection wants."""

    uri: str
    """The resource's URI, up to ``/resources/{id}`` (unencoded)."""
    listed: dict[str, RemoteFile]
    wanted: list[PlannedFile]


@dataclass(frozen=True, slots=True)
class ListingFailure:
    """A folder whose listing failed: its files are unknown, so the run is incomplete."""

    path: str
    reason: str


def _resource_files(path: str) -> bool:
    """Whether ``path`` is a resource's ``files`` folder: ``.../resources/{label}/files``."""
    parts = path.split("/")
    return len(parts) >= 3 and parts[-1] == "files" and parts[-3] == "resources"


def _patiently(listing: Callable[[], T], path: str) -> T:
    """``listing()``, tried again after a network failure or a 5xx (listings are idempotent)."""
    for pause in LISTING_RETRY_PAUSES:
        try:
            return listing()
        except XnatfsError as exc:
            if not exc.transient:  # a cut body, a reset, a 5xx burst are worth another try
                raise
            log.info("listing %s failed (%s); trying again", path or "/", exc)
            time.sleep(pause)
    return listing()


class Planner:
    """Walks the selection concurrently; ``emit`` receives each wanted file exactly once
    (tree names are unique per folder and nested selections are merged)."""

    def __init__(
        self, tree: Tree, selection: Selection, submit: Callable[[Callable[[], None]], None],
        emit: Callable[[PlannedFile], None],
        emit_resource: Callable[[PlannedResource], None] | None = None,
    ) -> None:
        self.tree = tree
        self.selection = selection
        self._submit = submit
        self._emit = emit
        self._emit_resource = emit_resource
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
            if not (self._emit_resource and _resource_files(path) and
                    self._offer_resource(path, node)):
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

    def _offer_resource(self, path: str, node: Node) -> bool:
        """Hand a resource's ``files`` folder over whole (a zip of it may be the cheaper
        route); False when it is not one resource's listing after all (then it is walked)."""
        listed: dict[str, RemoteFile] = {}
        wanted: list[PlannedFile] = []
        uris: set[str] = set()
        filters, shard = self.selection.filters, self.selection.shard

        def walk(where: str, folder: Node, admitted: bool) -> bool:
            assert folder.children is not None
            for name, kid in sorted(folder.children.items()):
                kid_path = f"{where}/{name}"
                if kid.is_dir:
                    if kid.children is None or not walk(
                            kid_path, kid, admitted and not filters.rejects_folder(
                                name, kid.context)):
                        return False
                    continue
                split = split_file_uri(kid.file.uri) if kid.file else None
                if split is None:
                    return False
                uris.add(split[0])
                listed[split[1]] = kid.file  # type: ignore[assignment]
                if admitted and filters.admits_file(kid_path, kid.context) and \
                        shard.takes(kid_path):
                    wanted.append(PlannedFile(kid_path, kid))
            return True

        if not walk(path, node, True) or len(uris) != 1 or self._fatal is not None:
            return False
        if wanted:
            assert self._emit_resource is not None
            self._emit_resource(PlannedResource(uris.pop(), listed, wanted))
        return True

    def _offer(self, path: str, node: Node) -> None:
        selection = self.selection
        if not selection.filters.admits_file(path, node.context):
            return
        if selection.shard.takes(path):
            self._emit(PlannedFile(path, node))
