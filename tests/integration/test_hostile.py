"""Hostile input (SECURITY.md): names sent by the server, listings of any shape, command lines
of any kind. Never a write outside the output folder, never two files under one name, never a
traceback: a clear one-line error instead.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.oracle import Oracle, output_files
from xnat_emulator import Emulator, EmulatorConfig, SyntheticSpec, synthetic_archive
from xnatfs.cli import main
from xnatfs.errors import ServerError, XnatfsError
from xnatfs.tree.model import Context, Node, Tree, resource_folders
from xnatfs.xnat.rows import (
    Assessor,
    Experiment,
    FileRow,
    Project,
    Resource,
    Scan,
    Subject,
    result_rows,
)

HOSTILE = SyntheticSpec(projects=1, subjects=1, sessions=1, scans=1, dicoms=2, dicom_size=700,
                        niftis=0, hostile=True, seed=21, members=("alice",))
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_safe(name: str) -> None:
    assert name not in ("", ".", "..") and "/" not in name and "\0" not in name, repr(name)
    assert len(name.encode("utf-8", "surrogatepass")) <= 255, repr(name)


# -- names from a hostile server ------------------------------------------------------------


def test_every_hostile_item_has_one_safe_stable_name_and_lands_inside(tmp_path, monkeypatch,
                                                                      capsys):
    archive = synthetic_archive(HOSTILE)
    listed = [f for f in archive.files() if f.project_id == "HOSTILE"]
    with Emulator(archive, EmulatorConfig(shuffle_rows=True), users={"alice": "secret"}) as emu:
        first, again = Oracle.of(emu).nodes, Oracle.of(emu).nodes
        # Stable: rows in another order give the very same names.
        assert {p: n.file.uri for p, n in first.items()} == \
            {p: n.file.uri for p, n in again.items()}
        for path in first:
            for part in path.split("/"):
                assert_safe(part)
        # Every listed file has a name of its own (the hostile set reuses file names).
        uris = Counter(n.file.uri for p, n in first.items() if p.startswith("HOSTILE/"))
        assert sorted(uris) == sorted(f.uri for f in listed)
        assert set(uris.values()) == {1}
        monkeypatch.setenv("XNAT_USER", "alice")
        monkeypatch.setenv("XNAT_PASS", "secret")
        box = tmp_path / "box"
        (box / "out").mkdir(parents=True)
        (box / "etc").mkdir()
        before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
        assert main(["materialize", emu.url, "HOSTILE", "-o", str(box / "out")]) == 1
    err = capsys.readouterr().err
    missing = [f for f in listed if f.missing]
    assert len(missing) == 1 and err.count("failed: ") == 1 and "not found" in err
    # Nothing outside out/ was created or touched; inside, one file per listed, present file,
    # each with its own bytes (no two overwrote each other).
    def outside(times: dict[Path, int]) -> dict[Path, int]:
        return {p: t for p, t in times.items() if box / "out" not in (p, *p.parents)}

    assert outside({p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}) == outside(before)
    written = {rel: p.read_bytes() for rel, p in output_files(box / "out").items()}
    want = {p: n.file.uri for p, n in first.items() if p.startswith("HOSTILE/")}
    by_uri = {f.uri: f for f in listed}
    assert set(written) == {p for p, uri in want.items() if not by_uri[uri].missing}
    for path, data in written.items():
        assert data == by_uri[want[path]].read(), path
    root = os.path.realpath(box / "out")
    assert all(os.path.realpath(p).startswith(root + os.sep) for p in (box / "out").rglob("*"))


# -- the listing parser and the tree builders, fuzzed -----------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                              max_size=4),
    max_leaves=20)
KEYS = ["ID", "label", "URI", "Size", "digest", "cat_ID", "collection", "xsiType", "type",
        "subject_ID", "project", "name", "xnat_abstractresource_id", "file_count",
        "file_size", "date", "insert_date", "last_modified", "series_description"]
rowish = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), json_values, max_size=8)
envelopes = json_values | st.builds(
    lambda rows: {"ResultSet": {"Result": rows, "totalRecords": str(len(rows))}},
    st.lists(rowish | json_values, max_size=6))


@FUZZ
@given(envelopes)
def test_any_json_is_rows_or_one_clear_error(doc: Any) -> None:
    try:
        rows = result_rows(doc, "/data/x")
    except ServerError as exc:
        assert str(exc).startswith("malformed listing for /data/x")
        return
    for row in rows:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in row.items())
        for build in (Project, Subject, Experiment, Scan, Assessor, Resource, FileRow):
            build.from_row(row)  # never raises, whatever the values


segments = st.text(st.characters(codec="utf-8"), min_size=0, max_size=40) | st.sampled_from(
    ["..", ".", "", "../../etc", "/abs", "a\0b", "é" * 140, "x/../../y", "files"])
file_uris = st.builds(
    lambda owner, rid, parts: f"/data/experiments/{owner}/resources/{rid}/files/"
                              + "/".join(parts),
    segments, segments, st.lists(segments, min_size=1, max_size=4))


@FUZZ
@given(st.lists(st.tuples(file_uris, segments, segments), max_size=12))
def test_resource_folders_give_every_file_one_safe_name(rows: list[tuple[str, str, str]]):
    parsed = [FileRow.from_row({"URI": uri, "collection": label, "cat_ID": cat})
              for uri, label, cat in rows]
    files = [f for f in parsed if f is not None]
    shown: list[str] = []

    def walk(node: Node) -> None:
        assert_safe(node.name)
        if node.file is not None:
            shown.append(node.file.uri)
        for kid in (node.children or {}).values():
            walk(kid)

    for folder in resource_folders(files, Context(), 0.0).values():
        walk(folder)
    visible = [f.uri for f in files if any(p for p in f.relpath.split("/"))]
    assert Counter(shown) == Counter(visible)


class ListingServer:
    """Answers every listing with fuzzed rows: the Tree's only input is what ``listing`` gives."""

    base_url = "http://fuzz"

    def __init__(self, docs: dict[str, Any]) -> None:
        self.docs = docs

    def listing(self, path: str, **params: str) -> list[dict[str, str]]:
        kind = path.rstrip("/").rsplit("/", 1)[-1]
        return result_rows(self.docs.get(kind, {"ResultSet": {"Result": []}}), path)

    def file_size(self, uri: str) -> int:
        return 1


def _listing(keys: list[str]) -> st.SearchStrategy[dict]:
    row = st.fixed_dictionaries({k: segments | st.sampled_from(["P", "S", "E", "1"])
                                 for k in keys})
    return st.builds(lambda rows: {"ResultSet": {"Result": rows}}, st.lists(row, max_size=4))


@FUZZ
@given(st.fixed_dictionaries({
    "projects": _listing(["ID"]),
    "subjects": _listing(["ID", "label"]),
    "experiments": _listing(["ID", "label", "subject_ID", "xsiType"]),
    "scans": _listing(["ID", "type"]),
    "files": st.builds(lambda uris: {"ResultSet": {"Result": [{"URI": u, "Size": "1"}
                                                              for u in uris]}},
                       st.lists(file_uris, max_size=5)),
    "assessors": _listing(["ID", "label"]),
}))
def test_the_tree_over_any_listing_has_safe_names_or_a_clear_error(docs: dict[str, Any]):
    tree = Tree(ListingServer(docs))  # type: ignore[arg-type]
    try:
        for path, node in tree.walk("/"):
            assert node.file is not None
            for part in path.split("/"):
                assert_safe(part)
            assert tree.lookup(path) is node
    except XnatfsError as exc:
        assert str(exc) and "\n" not in str(exc)


# -- command-line misuse ----------------------------------------------------------------------

NOWHERE = "http://127.0.0.1:9"  # nothing listens: a usage error must come before any request
MISUSE = {
    "unknown command": ["frobnicate"],
    "mount negative timeout": ["mount", NOWHERE, "{tmp}", "--timeout", "-5"],
    "mount zero ttl": ["mount", NOWHERE, "{tmp}", "--ttl", "0"],
    "ls unknown option": ["ls", NOWHERE, "--bogus"],
    "ls bad scheme": ["ls", "ftp://example.org"],
    "ls bad port": ["ls", "http://example.org:99999"],
    "ls password in URL": ["ls", "https://u:pw@example.org"],
    "ls broken IPv6 URL": ["ls", "http://[::1"],
    "ls -w without URL": ["ls", "-w"],
    "ls no URL": ["ls"],
    "mount no mount point": ["mount", NOWHERE],
    "mount missing mount point": ["mount", NOWHERE, "/nonexistent/xnatfs"],
    "mount bad cache size": ["mount", NOWHERE, "{tmp}", "--cache-size", "lots"],
    "mount bad timeout": ["mount", NOWHERE, "{tmp}", "--timeout", "soon"],
    "materialize negative -j": ["materialize", NOWHERE, "P", "-j", "-4"],
    "materialize zero -j": ["materialize", NOWHERE, "P", "-j", "0"],
    "materialize bad shard": ["materialize", NOWHERE, "P", "--shard", "3"],
    "materialize shard out of range": ["materialize", NOWHERE, "P", "--shard", "5/4"],
    "materialize bad glob": ["materialize", NOWHERE, "P", "--scan-type", "[T1"],
    "materialize bad include": ["materialize", NOWHERE, "P", "--include", "a[b"],
    "materialize bad date": ["materialize", NOWHERE, "P", "--since", "yesterday"],
    "materialize bad URL": ["materialize", "gopher://x", "P"],
    "materialize unknown option": ["materialize", NOWHERE, "P", "--fast"],
    "cache bad action": ["cache", "purge"],
    "umount not mounted": ["umount", "{tmp}"],
    "emulator bad spec": ["emulator", "--synthetic", "projects=many"],
}


def _misuse(capsys, argv: list[str], tmp: Path) -> tuple[int, str]:
    argv = [a.replace("{tmp}", str(tmp)) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code  # type: ignore[assignment]
    _out, err = capsys.readouterr()
    return code, err


@pytest.mark.parametrize("argv", list(MISUSE.values()), ids=list(MISUSE))
def test_misuse_is_one_line_and_exit_2(argv: list[str], capsys, tmp_path: Path) -> None:
    code, err = _misuse(capsys, argv, tmp_path)
    assert code == 2, err
    assert err.startswith("xnatfs") and err.count("\n") == 1, err
    assert "Traceback" not in err
