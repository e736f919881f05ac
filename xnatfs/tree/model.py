"""The tree every front end shows: tree paths ↔ XNAT objects, built from cached listings.

``/{project}/{subject}/{session}/scans/{id}-{type}/resources/{label}/files/{path}`` and the
session, assessor, subject and project ``resources`` folders. Below a session this is XNAT's own
zip layout. Each folder is filled from as few listings as XNAT allows (a whole session comes
from its scan listing plus one ``files?all=true`` listing), so walking a project costs requests
in proportion to its sessions, never to its files. Listings are kept for ``ttl`` seconds and
fetched once however many threads ask at the same time. A caller that would wait longer than
``wait`` seconds for a listing another thread is fetching gets an error instead: a hung server
must cost each lookup at most the timeout, not a place in a queue behind it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TypeVar

from cachetools import TTLCache

from xnatfs.errors import NotFound, ServerTimeout
from xnatfs.tree.names import assign_names, scan_folder_name
from xnatfs.tree.stash import Stash
from xnatfs.xnat.client import XnatClient, data_path
from xnatfs.xnat.rows import Assessor, Experiment, FileRow, Project, Row, Scan, Subject

log = logging.getLogger(__name__)
T = TypeVar("T")
U = TypeVar("U")

Children = dict[str, "Node"]
_SCAN_OWNER = re.compile(r"/scans/(?P<id>[^/]+)$")
_ASSESSOR_OWNER = re.compile(r"/assessors/(?P<id>[^/]+)/(?:out|in)$")
_RECON_OWNER = re.compile(r"/reconstructions/(?P<id>[^/]+)/(?:out|in)$")


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """A file on the server. ``uri`` is the listing's path (unencoded); size and MD5 are the
    listing's claims, checked against what the server actually sends."""

    uri: str
    size: int | None
    digest: str | None
    data: bytes | None = None
    """The bytes of a file made here rather than on the server (a BIDS view's
    ``dataset_description.json``): served from memory, never fetched."""

    @property
    def version(self) -> str:
        """Identifies this content: a file that changes on the server gets a new version."""
        return f"{self.size}:{self.digest or ''}"


@dataclass(frozen=True, slots=True)
class Context:
    """What filters need to know about a node without more requests."""

    level: str = ""  # project | subject | session | scan | assessor | reconstruction
    project: str = ""
    project_name: str = ""
    subject: str = ""
    session: str = ""
    session_id: str = ""
    xsi_type: str = ""
    date: str = ""
    inserted: str = ""
    scan_id: str = ""
    scan_type: str = ""
    series_description: str = ""
    resource: str = ""


@dataclass(eq=False, slots=True)
class Node:
    """A folder (``file is None``) or a file. A folder has either its ``children`` already, or a
    ``load`` that fetches them, cached under ``key``."""

    name: str
    context: Context
    mtime: float
    file: RemoteFile | None = None
    children: Children | None = None
    load: Callable[[], Children] | None = field(default=None, repr=False)
    key: tuple[str, ...] = ()

    @property
    def is_dir(self) -> bool:
        return self.file is None


def _together(first: Callable[[], T], second: Callable[[], U]) -> tuple[T, U]:
    """Two listings one folder needs, asked at once: each is a round trip (20 ms on the
    WAN profile), and a walk of a project waits on them level by level. ``second`` runs on
    a thread of its own; a failure of either is raised here, the first one's first."""
    box: list[U] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            box.append(second())
        except BaseException as exc:
            failed.append(exc)

    helper = threading.Thread(target=run, name="xnatfs-listing", daemon=True)
    helper.start()
    try:
        one = first()
    finally:
        helper.join()
    if failed:
        raise failed[0]
    return one, box[0]


def parse_time(text: str) -> float | None:
    """XNAT's ``2023-09-27 17:31:21.352`` or ``2023-02-19`` as epoch seconds (UTC)."""
    for fmt in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            return datetime.strptime(text.strip(), fmt).timestamp()
        except ValueError:
            continue
    return None


class Folders:
    """Path lookups from a root over ``children``: the tree itself, and views of it (the BIDS
    layout) whose folders are filled from the tree's listings."""

    root: Node

    def children(self, node: Node) -> Children:
        raise NotImplementedError

    def resolve(self, node: Node) -> RemoteFile:
        raise NotImplementedError

    def lookup(self, path: str) -> Node:
        """The node at a tree path like ``/P1/S1/E1/scans``; NotFound if there is none."""
        node = self.root
        for part in split_path(path):
            if not node.is_dir:
                raise NotFound(f"no such path: {path}")
            child = self.children(node).get(part)
            if child is None:
                raise NotFound(f"no such path: {path}")
            node = child
        return node

    def listdir(self, path: str) -> Children:
        node = self.lookup(path)
        if not node.is_dir:
            raise NotADirectoryError(path)
        return self.children(node)

    def walk(self, path: str = "/") -> Iterator[tuple[str, Node]]:
        """Every file below ``path`` (or the file itself), as ``(tree path, node)``, in order."""
        start = self.lookup(path)
        base = "/".join(split_path(path))
        stack = [(base, start)]
        while stack:
            where, node = stack.pop()
            if not node.is_dir:
                yield where, node
                continue
            kids = sorted(self.children(node).items(), reverse=True)
            stack.extend((f"{where}/{name}" if where else name, kid) for name, kid in kids)


class Tree(Folders):
    """Tree paths over one XNAT server. Thread-safe."""

    def __init__(
        self, client: XnatClient, *, ttl: float = 60.0, projects: Iterable[str] | None = None,
        wait: float | None = None, stash: Stash | None = None,
    ) -> None:
        self.client = client
        self.stash = stash
        self.ttl = ttl
        self.wait = wait
        self.projects = list(projects) if projects else None
        self.started = time.time()
        self._listings: TTLCache[tuple[str, ...], Children] = TTLCache(1 << 20, ttl)
        self._lock = threading.Lock()
        self._key_locks: dict[tuple[str, ...], threading.Lock] = {}
        self._sizes: TTLCache[str, int] = TTLCache(1 << 16, ttl)  # sizes no listing gave
        self.root = Node("", Context(), self.started, load=self._load_root, key=("root",))

    # -- public API ----------------------------------------------------------------------

    def children(self, node: Node) -> Children:
        """A folder's entries, from its listing (fetched at most once per TTL)."""
        if node.children is not None:
            return node.children
        if node.load is None:
            raise NotADirectoryError(node.name)
        with self._lock:
            if node.key in self._listings:
                return self._listings[node.key]
            gate = self._key_locks.setdefault(node.key, threading.Lock())
        if not gate.acquire(timeout=-1 if self.wait is None else self.wait):
            raise ServerTimeout(f"the listing of {node.name or '/'} is still on its way "
                                f"after {self.wait:g} s")
        try:
            with self._lock:
                if node.key in self._listings:
                    return self._listings[node.key]
            value = node.load()
            with self._lock:
                self._listings[node.key] = value
                self._key_locks.pop(node.key, None)
            return value
        finally:
            gate.release()

    def resolve(self, node: Node) -> RemoteFile:
        """The node's file with a known size: the listing's, or the server's own when the
        listing had none (XNAT leaves Size empty until a catalog refresh). Sizes asked of the
        server are kept as long as listings are. NotFound if the server has no such file."""
        file = node.file
        if file is None:
            raise IsADirectoryError(node.name)
        if file.size is not None:
            return file
        size = self._sizes.get(file.uri)
        if size is None:
            fetch = functools.partial(self.client.file_size, file.uri)
            size = self._sizes[file.uri] = \
                self.stash.size(file.uri, fetch) if self.stash else fetch()
        return replace(file, size=size)

    def _listing(self, path: str, **params: str) -> list[Row]:
        """A listing from the server, or the last one kept while it is away (``stash``)."""
        fetch = functools.partial(self.client.listing, path, **params)
        return self.stash.listing(path, params, fetch) if self.stash else fetch()

    # -- loaders: one per kind of folder backed by a listing ----------------------------

    def _load_root(self) -> Children:
        rows = [Project.from_row(r) for r in self._listing("/data/projects")]
        if self.projects is not None:
            wanted = set(self.projects)
            rows = [p for p in rows if p.id in wanted]
        names = assign_names((p.id, p, p.id) for p in rows)
        return {name: self._project_node(name, p) for name, p in names.items()}

    def _project_node(self, name: str, project: Project) -> Node:
        ctx = Context(level="project", project=project.id, project_name=project.name)
        return Node(name, ctx, self.started, load=lambda: self._load_project(project, ctx),
                    key=("project", project.id))

    def _load_project(self, project: Project, ctx: Context) -> Children:
        pid = project.id
        columns = "ID,label,project,xsiType,date,subject_ID,subject_label,insert_date,last_modified"
        subject_rows, experiment_rows = _together(
            lambda: self._listing(data_path("projects", pid, "subjects")),
            lambda: self._listing(data_path("projects", pid, "experiments"), columns=columns))
        subjects = [Subject.from_row(r) for r in subject_rows]
        experiments = [Experiment.from_row(r) for r in experiment_rows]
        by_subject: dict[str, list[Experiment]] = defaultdict(list)
        for exp in experiments:
            by_subject[exp.subject_id].append(exp)
        names = assign_names(((s.label, s, s.id) for s in subjects), reserved=["resources"])
        kids: Children = {}
        for name, subject in names.items():
            sctx = replace(ctx, level="subject", subject=subject.label)
            kids[name] = self._subject_node(name, pid, subject, by_subject[subject.id], sctx)
        kids["resources"] = self._resources_node(
            ctx, ("project-files", pid), data_path("projects", pid, "files"))
        return kids

    def _subject_node(
        self, name: str, pid: str, subject: Subject, sessions: list[Experiment], ctx: Context
    ) -> Node:
        names = assign_names(((e.label, e, e.id) for e in sessions), reserved=["resources"])
        kids: Children = {}
        for sname, exp in names.items():
            ectx = replace(ctx, level="session", session=exp.label, session_id=exp.id,
                           xsi_type=exp.xsi_type, date=exp.date, inserted=exp.insert_date)
            mtime = parse_time(exp.last_modified) or parse_time(exp.insert_date) or self.started
            kids[sname] = Node(sname, ectx, mtime, key=("session", exp.id),
                               load=lambda exp=exp, ectx=ectx, mtime=mtime:
                               self._load_session(exp, ectx, mtime))
        kids["resources"] = self._resources_node(
            ctx, ("subject-files", pid, subject.id),
            data_path("projects", pid, "subjects", subject.id, "files"))
        return Node(name, ctx, self.started, children=kids)

    def _resources_node(self, ctx: Context, key: tuple[str, ...], listing: str) -> Node:
        def load() -> Children:
            rows = [f for r in self._listing(listing) if (f := FileRow.from_row(r))]
            return resource_folders(rows, ctx, self.started)

        return Node("resources", ctx, self.started, load=load, key=key)

    def _load_session(self, exp: Experiment, ctx: Context, mtime: float) -> Children:
        scan_rows, file_rows = _together(
            lambda: self._listing(data_path("experiments", exp.id, "scans"))
            if exp.is_image_session else [],
            lambda: self._listing(data_path("experiments", exp.id, "files"), all="true"))
        scans = [Scan.from_row(r) for r in scan_rows]
        rows = [f for r in file_rows if (f := FileRow.from_row(r))]
        own, by_scan, by_assessor, by_recon = [], defaultdict(list), defaultdict(list), \
            defaultdict(list)
        for row in rows:
            if m := _SCAN_OWNER.search(row.owner):
                by_scan[m["id"]].append(row)
            elif m := _ASSESSOR_OWNER.search(row.owner):
                by_assessor[m["id"]].append(row)
            elif m := _RECON_OWNER.search(row.owner):
                by_recon[m["id"]].append(row)
            elif row.owner.endswith(f"/experiments/{exp.id}"):
                own.append(row)
            else:
                log.debug("ignoring file outside session %s: %s", exp.id, row.uri)
        kids: Children = {}
        if exp.is_image_session:
            known = {s.id: s for s in scans}
            known.update({sid: Scan(sid, "", "", "", "") for sid in by_scan if sid not in known})
            names = assign_names(
                (scan_folder_name(s.id, s.type), s, s.id) for s in known.values())
            folders: Children = {}
            for name, scan in names.items():
                sctx = replace(ctx, level="scan", scan_id=scan.id, scan_type=scan.type,
                               series_description=scan.series_description)
                res = resource_folders(by_scan.get(scan.id, []), sctx, mtime)
                folders[name] = _folder(name, sctx, mtime, {"resources": _folder(
                    "resources", sctx, mtime, res)})
            kids["scans"] = _folder("scans", ctx, mtime, folders)
        if own:
            kids["resources"] = _folder("resources", ctx, mtime, resource_folders(own, ctx, mtime))
        if by_assessor:
            labels = {a.id: a.label for a in map(Assessor.from_row, self._listing(
                data_path("experiments", exp.id, "assessors")))}
            kids["assessors"] = _owner_folders("assessors", "assessor", by_assessor, labels,
                                               ctx, mtime)
        if by_recon:
            kids["reconstructions"] = _owner_folders("reconstructions", "reconstruction",
                                                     by_recon, {}, ctx, mtime)
        return kids


def split_path(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


def _folder(name: str, ctx: Context, mtime: float, kids: Children) -> Node:
    return Node(name, ctx, mtime, children=kids)


def _owner_folders(
    name: str, level: str, rows_by_id: dict[str, list[FileRow]], labels: dict[str, str],
    ctx: Context, mtime: float,
) -> Node:
    names = assign_names((labels.get(oid) or oid, oid, oid) for oid in rows_by_id)
    folders: Children = {}
    for fname, oid in names.items():
        octx = replace(ctx, level=level)
        res = resource_folders(rows_by_id[oid], octx, mtime)
        folders[fname] = _folder(fname, octx, mtime, {"resources": _folder(
            "resources", octx, mtime, res)})
    return _folder(name, ctx, mtime, folders)


def resource_folders(rows: list[FileRow], ctx: Context, mtime: float) -> Children:
    """``{label}/files/{path}`` folders from file rows; unlabelled resources go by their id."""
    by_resource: dict[str, list[FileRow]] = defaultdict(list)
    for row in rows:
        by_resource[row.resource_id].append(row)
    names = assign_names((rs[0].resource_label or rid, rid, rid)
                         for rid, rs in by_resource.items())
    out: Children = {}
    for name, rid in names.items():
        rctx = replace(ctx, resource=by_resource[rid][0].resource_label or rid)
        files = _file_folder("files", [(r.relpath, r) for r in by_resource[rid]], rctx, mtime)
        out[name] = _folder(name, rctx, mtime, {"files": files})
    return out


def _file_folder(name: str, items: list[tuple[str, FileRow]], ctx: Context, mtime: float) -> Node:
    """A resource's files as nested folders; sub-folders come from the URIs' relative paths."""
    subdirs: dict[str, list[tuple[str, FileRow]]] = defaultdict(list)
    files: list[tuple[str, FileRow]] = []
    for rel, row in items:
        parts = split_path(rel)
        if len(parts) == 1:
            files.append((parts[0], row))
        elif parts:
            subdirs[parts[0]].append(("/".join(parts[1:]), row))
    entries: list[tuple[str, tuple[str, str], str]] = [
        (d, ("dir", d), _short_hash(d)) for d in subdirs]
    entries += [(f, ("file", row.uri), _short_hash(row.uri)) for f, row in files]
    by_uri = {row.uri: row for _, row in files}
    kids: Children = {}
    for child, (kind, raw) in assign_names(entries).items():
        if kind == "dir":
            kids[child] = _file_folder(child, subdirs[raw], ctx, mtime)
        else:
            row = by_uri[raw]
            kids[child] = Node(child, ctx, mtime, file=RemoteFile(row.uri, row.size, row.digest))
    return _folder(name, ctx, mtime, kids)


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]
