"""The lazy BIDS view (``mount --bids``, fsspec ``layout="bids"``): each project a BIDS dataset.

The view is a second root over the same tree: its folders are filled from the tree's listings
(fetched once per TTL, like every folder), its images and sidecars are the server's files
under BIDS names, read through the same reader and cache as everywhere else, and its
top-level files are made in memory (``dataset.py``). Nothing is converted, and nothing is
downloaded until read. A project folder lists all its sessions (in parallel) the first time it
is opened, because ``participants.tsv`` must name exactly the subjects that have data.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable

from xnatfs.bids import dataset
from xnatfs.bids.names import Namer
from xnatfs.bids.plan import IMAGE_EXTENSIONS, Plan, Series, plan_project
from xnatfs.tree.model import Children, Context, Folders, Node, RemoteFile, Tree


class BidsView(Folders):
    """The tree's projects as BIDS datasets. Thread-safe, as the tree is."""

    def __init__(self, tree: Tree, namer: Callable[[str], Namer] | None = None) -> None:
        self.tree = tree
        self.namer = namer or (lambda project: Namer([]))
        self.root = Node("", Context(), tree.started, load=self._load_root,
                         key=("bids-root",))

    def children(self, node: Node) -> Children:
        return self.tree.children(node)

    def resolve(self, node: Node) -> RemoteFile:
        return self.tree.resolve(node)

    def _load_root(self) -> Children:
        projects = self.tree.children(self.tree.root)
        return {name: Node(name, node.context, node.mtime, key=("bids-project", name),
                           load=lambda name=name: self._load_project(name))
                for name, node in projects.items()}

    def _load_project(self, project: str) -> Children:
        plan = plan_project(self.tree, project, self.namer(project), reuse_only=True)
        ctx = self.tree.lookup(project).context
        return _dataset_nodes(plan, ctx, self.tree.started)


def _dataset_nodes(plan: Plan, ctx: Context, mtime: float) -> Children:
    made = Made(plan.project, ctx, mtime)
    kids: Children = {
        "dataset_description.json": made.file("dataset_description.json",
                                              dataset.description(ctx.project_name
                                                                  or plan.project)),
        "README": made.file("README", dataset.readme(plan.project, plan, view=True)),
        "participants.tsv": made.file("participants.tsv", dataset.participants(plan.subjects)),
        "participants.json": made.file("participants.json", dataset.PARTICIPANTS_JSON),
        "scans.json": made.file("scans.json", dataset.SCANS_JSON),
    }
    for name, data in dataset.task_sidecars(plan.series).items():
        kids[name] = made.file(name, data)
    by_session: dict[tuple[str, str], list[Series]] = defaultdict(list)
    for series in plan.series:
        by_session[(series.subject, series.session)].append(series)
    subjects: dict[str, Children] = defaultdict(dict)
    for (subject, session), found in sorted(by_session.items()):
        folders: dict[str, Children] = defaultdict(dict)
        images: list[tuple[str, str]] = []
        for series in found:
            for ext, file in series.reused:
                folders[series.name.datatype][series.stem + ext] = Node(
                    series.stem + ext, ctx, mtime, file=file)
                if ext in IMAGE_EXTENSIONS:
                    images.append((f"{series.name.datatype}/{series.stem}{ext}", series.scan))
        prefix = f"sub-{subject}_ses-{session}"
        where = f"sub-{subject}/ses-{session}"
        session_kids: Children = {
            name: Node(name, ctx, mtime, children=files) for name, files in folders.items()}
        session_kids[f"{prefix}_scans.tsv"] = made.file(
            f"{where}/{prefix}_scans.tsv",
            dataset.scan_rows(images))
        subjects[f"sub-{subject}"][f"ses-{session}"] = Node(
            f"ses-{session}", ctx, mtime, children=session_kids)
    for name, sessions in subjects.items():
        kids[name] = Node(name, ctx, mtime, children=sessions)
    return kids


class Made:
    """Files made in memory for one dataset, each with its MD5 (``ukey``, checksums)."""

    def __init__(self, project: str, ctx: Context, mtime: float) -> None:
        self.project, self.ctx, self.mtime = project, ctx, mtime

    def file(self, path: str, data: bytes) -> Node:
        digest = hashlib.md5(data).hexdigest()
        remote = RemoteFile(f"xnatfs:bids/{self.project}/{path}", len(data), digest, data)
        return Node(path.rsplit("/", 1)[-1], self.ctx, self.mtime, file=remote)

