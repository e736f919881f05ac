"""materialize as a sync (issue 10): a server that changes between runs, the manifest,
MD5SUMS, ``xnatfs verify``, ``--delete``, kills and concurrent runs; and first-use fixes of
the command (issue 11). The command runs in-process, and in child processes where it is killed
or run twice at once; ``md5sum -c`` checks MD5SUMS. Requests are counted from the emulator's
log."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support.mount import QUICK_PAUSES
from tests.support.oracle import Oracle, output_files
from xnat_emulator import Emulator, SyntheticSpec, synthetic_archive
from xnat_emulator.archive import Access
from xnat_emulator.content import SyntheticContent
from xnatfs.cli import main
from xnatfs.materialize.manifest import read_entries
from xnatfs.materialize.output import PART_SUFFIX
from xnatfs.xnat import retry

SPEC = SyntheticSpec(projects=1, subjects=1, sessions=2, scans=2, dicoms=3, dicom_size=3000,
                     niftis=0, assessors=0, session_resources=0, subject_resources=0,
                     project_resources=1, seed=11)
CREDS = {"XNAT_USER": "alice", "XNAT_PASS": "secret"}


@pytest.fixture
def emu(make_emulator, monkeypatch):
    """A fresh emulator on an archive of its own (tests change it); credentials in the env."""
    for key, value in CREDS.items():
        monkeypatch.setenv(key, value)
    return make_emulator(synthetic_archive(SPEC))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def materialize(capsys, url: str, out: Path, *options: str) -> tuple[int, dict, str]:
    code, doc, err = run(capsys, "materialize", url, "PROJ01", "-o", str(out), "--json",
                         *options)
    return code, json.loads(doc), err


def tree_paths(emu: Emulator) -> dict[str, str]:
    """Archive file URI (as listed) -> tree path, from a fresh tree."""
    return {uri: path for path, uri in Oracle.of(emu).uris().items()}


def requested(emu: Emulator) -> set[str]:
    return {r.path for r in emu.log.records() if r.kind == "file"}


def local_tree(out: Path) -> dict[str, str]:
    """Tree path -> MD5 of every file in ``out`` but xnatfs's own records."""
    return {rel: hashlib.md5(p.read_bytes()).hexdigest() for rel, p in output_files(out).items()}


def server_tree(emu: Emulator) -> dict[str, str]:
    return {path: f.md5 for path, f in Oracle.of(emu).files.items()}


def md5sum_check(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["md5sum", "--quiet", "-c", "MD5SUMS"], cwd=out, capture_output=True,
                          text=True)


def assert_consistent(out: Path) -> None:
    """Every manifest entry describes the bytes at its path."""
    for path, entry in read_entries(str(out)).items():
        data = (out / path).read_bytes()
        assert len(data) == entry.size and hashlib.md5(data).hexdigest() == entry.md5, path


def change_the_archive(emu: Emulator) -> dict[str, object]:
    """One new session, a file added to a resource, a same-size and a new-size replacement,
    one deletion. Returns the archive files touched, by role."""
    archive = emu.archive
    session = next(iter(archive.experiments.values()))
    scan = session.scans[0]
    dicom = scan.resources[0]
    kept, same, grown, dropped = dicom.files[0], dicom.files[1], dicom.files[2], None
    new_session = archive.add_experiment(session.parent, "S001_MR9", date="2024-05-01")
    res = archive.add_resource(archive.add_scan(new_session, "1", "T1w"), "DICOM")
    fresh = res.add_file("0001.dcm", SyntheticContent(71, 1234, 1.7e9))
    added = dicom.add_file("0099.dcm", SyntheticContent(72, 2222, 1.7e9))
    dicom.replace_file(same.relpath, SyntheticContent(73, same.size, 1.7e9))
    dicom.replace_file(grown.relpath, SyntheticContent(74, grown.size + 100, 1.7e9))
    other = session.scans[1].resources[0]
    dropped = other.files[0]
    other.remove_file(dropped.relpath)
    return {"kept": kept, "fresh": fresh, "added": added, "same": same, "grown": grown,
            "dropped": dropped}


def test_a_rerun_syncs_exactly_what_changed_and_delete_removes_only_ours(emu, capsys,
                                                                         tmp_path):
    out = tmp_path / "out"
    nodigest = emu.archive.projects["PROJ01"].resources[0].files[0]
    nodigest.digest_listed = False  # the server lists no MD5: computed locally
    code, summary, _ = materialize(capsys, emu.url, out)
    assert code == 0 and summary["downloaded"] == summary["selected"] > 10
    assert local_tree(out) == server_tree(emu)
    assert md5sum_check(out).returncode == 0
    paths = tree_paths(emu)
    entries = read_entries(str(out))
    assert entries[paths[nodigest.uri]].md5_from == "local"
    assert {e.md5_from for p, e in entries.items() if p != paths[nodigest.uri]} == {"server"}
    uri_of = {path: uri for uri, path in paths.items()}

    touched = change_the_archive(emu)
    paths = tree_paths(emu)
    gone_path = next(p for p in entries if p not in paths.values())
    want = {k: paths[f.uri] for k, f in touched.items() if k != "dropped"}
    (out / "PROJ01" / "my-notes.txt").write_text("mine")  # the user's own file

    code, plan, _ = run(capsys, "materialize", emu.url, "PROJ01", "-o", str(out), "--dry-run",
                        "--json")
    plan = json.loads(plan)
    assert code == 0
    kinds = {f["path"]: f["change"] for f in plan["files"]}
    assert {p for p, k in kinds.items() if k == "new"} == {want["fresh"], want["added"]}
    assert {p for p, k in kinds.items() if k == "changed"} == {want["same"], want["grown"]}
    assert {p for p, k in kinds.items() if k == "gone"} == {gone_path}
    assert plan["unchanged"] == len(entries) - 3 and plan["to_download"] == 4

    emu.log.clear()
    code, summary, err = materialize(capsys, emu.url, out)
    assert code == 0 and summary["ok"]
    fetched = {quote(paths_uri, safe="/") for paths_uri, p in paths.items()
               if p in {want["fresh"], want["added"], want["same"], want["grown"]}}
    assert requested(emu) == fetched  # the new and changed files, nothing else
    assert (summary["new"], summary["changed"]) == (2, 2)
    assert summary["gone"] == [gone_path] and f"gone: {gone_path}\n" in err
    assert (out / gone_path).exists()  # kept without --delete
    assert md5sum_check(out).returncode == 0
    assert_consistent(out)

    emu.log.clear()
    code, summary, err = materialize(capsys, emu.url, out, "--delete")
    assert code == 0 and summary["deleted"] == [gone_path] and not requested(emu)
    assert not (out / gone_path).exists() and (out / "PROJ01" / "my-notes.txt").exists()
    assert gone_path not in read_entries(str(out)) and uri_of[gone_path]
    assert local_tree(out) == {**server_tree(emu), "PROJ01/my-notes.txt": local_tree(out)[
        "PROJ01/my-notes.txt"]}
    assert md5sum_check(out).returncode == 0

    code, doc, err = run(capsys, "verify", str(out), "--json")
    assert code == 0 and json.loads(doc)["ok"]
    flipped, cut, lost = (want["kept"], want["same"], want["fresh"])
    data = bytearray((out / flipped).read_bytes())
    data[len(data) // 2] ^= 0x01
    (out / flipped).write_bytes(bytes(data))
    with open(out / cut, "r+b") as f:
        f.truncate(10)
    (out / lost).unlink()
    code, doc, err = run(capsys, "verify", str(out), "--json")
    assert code == 1
    assert f"corrupt: {flipped}\n" in err and f"truncated: {cut}\n" in err
    assert f"missing: {lost}\n" in err
    assert {(p["path"], p["problem"]) for p in json.loads(doc)["problems"]} == {
        (flipped, "corrupt"), (cut, "truncated"), (lost, "missing")}

    emu.log.clear()  # --verify repairs what verify found
    code, summary, _ = materialize(capsys, emu.url, out, "--verify")
    assert code == 0 and summary["downloaded"] == 3
    assert run(capsys, "verify", str(out))[0] == 0


def test_verify_refuses_a_folder_without_manifest(capsys, tmp_path):
    code, _, err = run(capsys, "verify", str(tmp_path))
    assert code == 2 and err.count("\n") == 1 and "no manifest" in err


def child_env() -> dict[str, str]:
    return {**os.environ, **CREDS}


def test_sigkill_in_the_middle_of_a_sync_leaves_a_consistent_manifest(emu, capsys, tmp_path):
    out = tmp_path / "out"
    assert materialize(capsys, emu.url, out)[0] == 0
    for f in list(emu.archive.files()):  # every file replaced: the rerun fetches them all
        f.resource.replace_file(f.relpath, SyntheticContent(hash(f.uri) & 0xFFFF, f.size,
                                                            1.7e9))
    emu.config.bandwidth = 2e4
    child = subprocess.Popen(
        [sys.executable, "-m", "xnatfs", "materialize", emu.url, "PROJ01", "-o", str(out),
         "-j", "2"], env=child_env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    manifest = out / ".xnatfs" / "manifest.jsonl"
    start = manifest.stat().st_size
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and manifest.stat().st_size < start + 1500:
        time.sleep(0.01)  # a few files replaced: forget and record lines appended
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert manifest.stat().st_size > start
    assert_consistent(out)  # right after the kill: the manifest vouches only for real bytes
    emu.config.bandwidth = None
    code, summary, _ = materialize(capsys, emu.url, out)
    assert code == 0 and summary["ok"]
    assert local_tree(out) == server_tree(emu)
    assert_consistent(out)
    assert set(read_entries(str(out))) == set(local_tree(out))
    assert md5sum_check(out).returncode == 0
    assert not list(out.rglob(f"*{PART_SUFFIX}"))


def test_two_concurrent_runs_into_one_folder_both_succeed(emu, tmp_path):
    """The second run waits for the first. The first crawls until the second has said so, so
    that a busy machine starting the second late cannot find the first finished already."""
    out = tmp_path / "out"
    emu.config.bandwidth = 5e3  # seconds per file, and little debt left once lifted
    # Only the files crawl: the second run's listings, which come before it finds the lock
    # taken, queued behind the first's file pieces for seconds.
    emu.config.bandwidth_kinds = frozenset({"file"})
    cmd = [sys.executable, "-m", "xnatfs", "materialize", emu.url, "PROJ01", "-o", str(out),
           "-j", "4"]

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(cmd, env=child_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)

    first = start()
    deadline = time.monotonic() + 60
    while not requested(emu) and time.monotonic() < deadline:
        time.sleep(0.01)  # downloading: it holds the folder's lock
    second = start()
    assert second.stderr is not None
    said = ""
    while "waiting for it to finish" not in said and time.monotonic() < deadline:
        said += second.stderr.readline()
    emu.config.bandwidth = None
    errs = [first.communicate(timeout=120)[1], said + second.communicate(timeout=120)[1]]
    assert [first.returncode, second.returncode] == [0, 0], errs
    assert [e.count("waiting for it to finish") for e in errs] == [0, 1]
    assert not any("failed" in e for e in errs)
    assert local_tree(out) == server_tree(emu)
    # The files came once: the run that waited found them all unchanged.
    assert len(requested(emu)) == len(server_tree(emu))


# -- issue 11: first use ------------------------------------------------------------------


def test_too_many_jobs_is_one_line(emu, capsys, tmp_path):
    code, _, err = run(capsys, "materialize", emu.url, "PROJ01", "-o", str(tmp_path / "o"),
                       "-j", "100000")
    assert code == 2 and err.count("\n") == 1 and "at most" in err
    assert not (tmp_path / "o").exists()


def test_overwrite_dry_run_plans_every_file(emu, capsys, tmp_path):
    out = tmp_path / "out"
    assert materialize(capsys, emu.url, out)[0] == 0
    code, plan, _ = run(capsys, "materialize", emu.url, "PROJ01", "-o", str(out), "--dry-run",
                        "--json", "--overwrite")
    plan = json.loads(plan)
    assert code == 0 and plan["to_download"] == plan["selected"] == plan["overwrite"] > 0


@pytest.mark.parametrize("case", ["refused login", "dead server", "unknown path",
                                  "nothing matches"])
def test_no_output_folder_is_left_by_a_run_that_does_nothing(emu, capsys, tmp_path,
                                                             monkeypatch, case):
    out = tmp_path / "out"
    url, argv = emu.url, ["PROJ01"]
    monkeypatch.setattr(retry, "PAUSES", QUICK_PAUSES)  # the same tries of the dead server
    if case == "refused login":
        monkeypatch.setenv("XNAT_PASS", "wrong")
    elif case == "dead server":
        url = "http://127.0.0.1:9"
    elif case == "unknown path":
        argv = ["NOPE"]
    else:
        argv = ["PROJ01", "--scan-type", "nothing-like-this"]
    code, _, _ = run(capsys, "materialize", url, *argv, "-o", str(out), "--timeout", "2")
    assert code == (0 if case == "nothing matches" else {"refused login": 3, "dead server": 1,
                                                         "unknown path": 4}[case])
    assert not out.exists()


def test_failure_counts_agree_with_a_listing_failure(emu, capsys, tmp_path):
    """A protected project's 403 is a listing failure: counted once, everywhere."""
    project = emu.archive.add_project("LOCKED", access=Access.PROTECTED, members=["bob"])
    emu.archive.add_subject(project, "X1")
    emu.archive.projects["PROJ01"].resources[0].files[0].missing = True  # a file failure
    code, doc, err = run(capsys, "materialize", emu.url, "/", "-o", str(tmp_path / "out"),
                         "--json")
    summary = json.loads(doc)
    assert code == 1
    assert summary["failed"] == len(summary["failures"]) == 2
    assert sum(line.startswith("failed: ") for line in err.splitlines()) == 2
    assert ", 2 failed" in err


def test_md5sums_holds_for_hostile_names(make_emulator, capsys, tmp_path, monkeypatch):
    """Names with backslashes, newlines, spaces and non-UTF-8 bytes: md5sum -c still passes."""
    for key, value in CREDS.items():
        monkeypatch.setenv(key, value)
    emu = make_emulator(synthetic_archive(SyntheticSpec(projects=0, hostile=True, seed=4)))
    out = tmp_path / "out"
    run(capsys, "materialize", emu.url, "HOSTILE", "-o", str(out))
    assert len(read_entries(str(out))) > 10
    check = md5sum_check(out)
    assert check.returncode == 0, check.stdout + check.stderr
    assert run(capsys, "verify", str(out))[0] == 0


def test_verify_prints_progress_lines_when_not_on_a_terminal(emu, capsys, tmp_path,
                                                              monkeypatch):
    import xnatfs.verify

    out = tmp_path / "out"
    assert materialize(capsys, emu.url, out)[0] == 0
    monkeypatch.setattr(xnatfs.verify, "PROGRESS_INTERVAL", 0.001)
    real = xnatfs.verify.check

    def slow(*args):  # so that the ticker gets a turn while files are hashed
        time.sleep(0.01)
        return real(*args)

    monkeypatch.setattr(xnatfs.verify, "check", slow)
    code, _, err = run(capsys, "verify", str(out), "-j", "1")
    assert code == 0
    assert any(line.startswith("verify: ") and " files, " in line and "/s" in line
               for line in err.splitlines())
