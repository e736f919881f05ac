"""The tree model and `xnatfs ls` against the emulator: paths, sizes, names, request cost."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.mount import QUICK_PAUSES, QUICK_RETRIES
from tests.support.oracle import layout_path
from xnat_emulator import Emulator, EmulatorConfig, SyntheticSpec, synthetic_archive
from xnatfs.errors import NotFound
from xnatfs.tree.model import Tree
from xnatfs.xnat.client import XnatClient
from xnatfs.xnat.credentials import Credentials

PLAIN = SyntheticSpec(projects=2, subjects=3, sessions=2, scans=3, dicoms=4, dicom_size=1024,
                      niftis=1, nifti_size=50_000, hostile=False, seed=1)
HOSTILE = SyntheticSpec(projects=1, subjects=2, sessions=1, scans=2, dicoms=2, dicom_size=512,
                        niftis=1, nifti_size=4096, hostile=True, seed=2)


@pytest.fixture(scope="module")
def plain():
    archive = synthetic_archive(PLAIN)
    with Emulator(archive, EmulatorConfig(), users={"alice": "secret"}) as emu:
        yield emu, archive


@pytest.fixture(scope="module")
def hostile():
    archive = synthetic_archive(HOSTILE)
    with Emulator(archive, EmulatorConfig(), users={"alice": "secret"}) as emu:
        yield emu, archive


def make_tree(emu) -> Tree:
    client = XnatClient(emu.url, Credentials("alice", "secret", source="test"))
    client.login()
    return Tree(client)


def test_every_file_is_at_its_tree_path_with_its_size(plain):
    emu, archive = plain
    tree = make_tree(emu)
    walked = {node.file.uri: (path, tree.resolve(node).size) for path, node in tree.walk("/")}
    files = list(archive.files())
    assert {f.uri for f in files} == set(walked)
    for f in files:
        path, size = walked[f.uri]
        assert size == f.size
        if (want := layout_path(f)) is not None:
            assert path == want


def test_walking_a_project_costs_requests_per_session_not_per_file(plain):
    emu, archive = plain
    tree = make_tree(emu)
    project = sorted({f.project_id for f in archive.files()})[0]
    emu.log.clear()
    n_files = sum(1 for _ in tree.walk(project))
    sessions = {f.session_label for f in archive.files()
                if f.project_id == project and f.session_label}
    subjects = {f.subject_label for f in archive.files() if f.project_id == project}
    requests = len(emu.log.records())
    # projects, subjects, experiments, project files; per subject its files; per session
    # scans + files?all=true (+ assessors when it has assessor files)
    assert requests <= 4 + len(subjects) + 3 * len(sessions)
    assert n_files > 3 * requests


def test_listings_are_cached_and_fetched_once(plain):
    emu, _ = plain
    tree = make_tree(emu)
    list(tree.walk("/"))
    emu.log.clear()
    list(tree.walk("/"))
    assert emu.log.records() == []


def test_unknown_paths_are_not_found(plain):
    tree = make_tree(plain[0])
    with pytest.raises(NotFound):
        tree.lookup("/NOPE/x")


def test_hostile_names_are_safe_unique_and_all_present(hostile):
    emu, archive = hostile
    tree = make_tree(emu)
    paths = {}
    for path, node in tree.walk("/"):
        for part in path.split("/"):
            assert part not in ("", ".", "..") and "\x00" not in part
            assert len(part.encode()) <= 255
        paths[node.file.uri] = path
    listed = {f.uri for f in archive.files() if f.project_id in {p for p in tree.children(
        tree.root)}}
    assert listed <= set(paths)
    assert len(set(paths.values())) == len(paths)


def run_cli(*args, env_extra=None, quick=False):
    """``xnatfs ARGS``; ``quick``: with ``QUICK_PAUSES`` between the tries of a request."""
    env = {**os.environ, "XNAT_USER": "alice", "XNAT_PASS": "secret", **(env_extra or {})}
    run = [QUICK_RETRIES, ",".join(map(str, QUICK_PAUSES)), "-", "-"] if quick \
        else ["-m", "xnatfs"]
    return subprocess.run([sys.executable, *run, *args], capture_output=True,
                          text=True, env=env, timeout=60)


def test_ls_recursive_lists_the_synthetic_project(plain):
    emu, archive = plain
    project = sorted({f.project_id for f in archive.files()})[0]
    out = run_cli("ls", emu.url, project, "-R", "-l")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    files = [f for f in archive.files() if f.project_id == project]
    for f in files:
        want = layout_path(f)
        if want:
            assert any(line.endswith(" " + want) and f" {f.size} " in line for line in lines)
    assert sum(1 for line in lines if line.startswith("-")) == len(files)


@pytest.mark.parametrize(("args", "env", "code", "message"), [
    (["ls", "URL", "/NOPE"], {}, 4, "no such path: /NOPE"),
    (["ls", "URL"], {"XNAT_PASS": "Zx9-bad-pass"}, 3, "login refused"),
    (["ls", "http://127.0.0.1:9"], {}, 1, "cannot reach"),
    (["ls", "ftp://x"], {}, 2, "not an XNAT server URL"),
    (["ls"], {}, 2, "no server URL"),
])
def test_ls_errors_are_one_line_with_an_exit_code(plain, args, env, code, message):
    args = [plain[0].url if a == "URL" else a for a in args]
    out = run_cli(*args, env_extra=env, quick=True)  # the same tries of a dead server, sooner
    assert out.returncode == code
    assert out.stderr.count("\n") == 1 and message in out.stderr
    assert "Traceback" not in out.stderr and "Zx9-bad-pass" not in out.stderr


@pytest.mark.parametrize(("where", "level"), [
    ([], None), (["-v"], "INFO"), (["--verbose"], "INFO"), (["-vv"], "DEBUG")])
def test_verbose_after_the_command_sets_the_log_level(plain, where, level):
    out = run_cli("ls", plain[0].url, "/NOPE", *where)
    assert out.returncode == 4
    levels = {line.split(":")[1].strip() for line in out.stderr.splitlines()
              if line.startswith("xnatfs: ") and line.count(":") >= 2
              and line.split(":")[1].strip() in ("INFO", "DEBUG")}
    assert (max(levels, key=["INFO", "DEBUG"].index) if levels else None) == level
