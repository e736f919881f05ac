"""The one oracle: which tree path shows which archive file, and the bytes it must hold.

Paths come from xnatfs's ``Tree`` (the mount, ``materialize`` and ``ls`` share its layout);
bytes, sizes and digests come from the emulator's archive, never through xnatfs, so a test
that compares against the oracle checks the reader and the writers, not the reader against
itself. A test of the tree itself uses ``layout_path`` instead, which knows the layout without
asking the ``Tree``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from xnat_emulator import Archive, Emulator, File
from xnatfs.tree.model import Node, Tree
from xnatfs.tree.names import scan_folder_name
from xnatfs.xnat.client import XnatClient
from xnatfs.xnat.credentials import Credentials

PASSWORD = {"alice": "secret", "bob": "hunter2"}
"""Passwords of the users the suite's emulators know (``tests.support.fixtures.USERS``)."""
RECORD_FOLDER, CHECKSUMS = ".xnatfs", "MD5SUMS"
"""What ``materialize`` keeps at the top of its output folder about the run (the manifest's
folder, the checksum list): its own records, never tree files. Spelled out here rather than
imported, so the oracle does not take the writer's word for where its records go."""


def resource_key(uri: str) -> str:
    """``…/resources/{id}/files/{path}``: resource IDs are global, while the start of a listed
    URI depends on the project a shared subject is seen through."""
    return uri[uri.index("/resources/"):]


def archive_file(archive: Archive, uri: str) -> File:
    """The archive's file behind a listed file URI (whichever project it was listed under)."""
    key = resource_key(uri)
    for f in archive.files():
        if resource_key(f.uri) == key:
            return f
    raise KeyError(uri)


@dataclass
class Oracle:
    """Tree path -> the node the ``Tree`` shows there and the archive file behind it."""

    nodes: dict[str, Node]
    files: dict[str, File]
    _bytes: dict[str, bytes] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, emulator: Emulator, *paths: str, user: str = "alice",
           archive: Archive | None = None) -> Oracle:
        """The files below ``paths`` (default: everything) as ``user`` sees them. ``archive``:
        where the bytes come from, if not the archive the emulator serves now."""
        by_key = {resource_key(f.uri): f for f in (archive or emulator.archive).files()}
        with XnatClient(emulator.url, Credentials(user, PASSWORD[user], source="test")) as client:
            client.login()
            tree = Tree(client)
            nodes = {p: n for path in paths or ("/",) for p, n in tree.walk(path)}
        files = {}
        for path, node in nodes.items():
            assert node.file is not None, path
            files[path] = by_key[resource_key(node.file.uri)]
        return cls(nodes, files)

    def read(self, path: str) -> bytes:
        """The bytes the file at ``path`` must hold (generated once, then kept)."""
        if path not in self._bytes:
            self._bytes[path] = self.files[path].read()
        return self._bytes[path]

    def uris(self) -> dict[str, str]:
        """Tree path -> the file's URI as the server listed it (what its requests ask for)."""
        return {path: node.file.uri for path, node in self.nodes.items() if node.file}

    def present(self) -> dict[str, File]:
        """The files the server really has (the hostile set lists some it does not)."""
        return {path: f for path, f in self.files.items() if not f.missing}


def is_record(path: Path, out: Path) -> bool:
    """Whether ``path`` inside the output folder ``out`` is one of materialize's records."""
    rel = path.relative_to(out).parts
    return rel[:1] == (RECORD_FOLDER,) or rel == (CHECKSUMS,)


def output_files(out: Path) -> dict[str, Path]:
    """Tree path -> file for every file materialize left in ``out`` (part files included, its
    records not): what a test compares with the oracle's ``files``."""
    return {str(p.relative_to(out)): p for p in out.rglob("*")
            if p.is_file() and not is_record(p, out)}


def layout_path(f: File) -> str | None:
    """Where the layout puts an archive file with plain names, worked out from the archive
    alone (None for levels the formula does not cover, such as assessors)."""
    head = f"{f.project_id}/{f.subject_label}/{f.session_label}"
    tail = f"resources/{f.resource_label}/files/{f.relpath}"
    if f.level == "scan":
        return f"{head}/scans/{scan_folder_name(f.scan_id, f.scan_type)}/{tail}"
    if f.level == "session":
        return f"{head}/{tail}"
    if f.level == "subject":
        return f"{f.project_id}/{f.subject_label}/{tail}"
    if f.level == "project":
        return f"{f.project_id}/{tail}"
    return None
