"""``xnatfs bids`` and ``mount --bids`` over the emulator's BIDS project, checked by the
official BIDS validator (its deno build), nibabel and pybids: real conversions with the real
dcm2niix, real FUSE mounts, requests counted in the emulator's log."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel
import pytest

from tests.support.mount import Mount, needs_fuse, one_line, xnatfs
from xnat_emulator import Archive, Emulator, SyntheticSpec, synthetic_archive
from xnat_emulator.content import MadeContent

SPEC = SyntheticSpec(projects=0, bids=True)
VALIDATOR = shutil.which("bids-validator-deno") or shutil.which(
    "bids-validator-deno", path=os.path.dirname(sys.executable))
BOLD_REST = "sub-B001/ses-MR1/func/sub-B001_ses-MR1_task-rest_run-01_bold"
BOLD_MOTOR = "sub-B002/ses-MR1/func/sub-B002_ses-MR1_task-motor_bold"


@pytest.fixture(scope="module")
def bids_archive() -> Archive:
    return synthetic_archive(SPEC)


@pytest.fixture
def server(make_emulator: Callable[..., Emulator], bids_archive: Archive) -> Emulator:
    return make_emulator(bids_archive)


def export(emu: Emulator, out: Path, *args: str, env: dict[str, str] | None = None
           ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    done = xnatfs("bids", emu.url, "BIDS01", "-u", "alice", "-o", str(out), "--json", *args,
                  env=env, timeout=240)
    return done, (json.loads(done.stdout) if done.stdout.strip() else {})


def validate(root: Path) -> list[dict[str, Any]]:
    """The validator's errors (warnings are allowed: recommended keys and the like)."""
    assert VALIDATOR, "bids-validator-deno is a test dependency"
    done = subprocess.run([VALIDATOR, "--json", str(root)], capture_output=True, text=True,
                          timeout=180, check=False)
    issues = json.loads(done.stdout)["issues"]["issues"]
    return [i for i in issues if i["severity"] == "error"]


def file_gets(emu: Emulator, after: int = 0) -> list[str]:
    return [r.path for r in emu.log.records()[after:] if r.kind in ("file", "zip")]


def test_the_export_is_valid_bids_with_converted_and_reused_series(server: Emulator,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "bids"
    done, summary = export(server, out)
    assert done.returncode == 0, done.stderr
    assert validate(out) == []
    assert len(summary["converted"]) == 5 and len(summary["reused"]) == 4, summary
    # the localizers are named by nothing: skipped, listed, absent
    assert sorted(s["description"] for s in summary["skipped"]) == \
        ["AAHScout", "localizer", "localizer"]
    assert not [p for p in out.rglob("*") if "localizer" in p.name.lower()
                or "scout" in p.name.lower()]
    # a 4D BOLD of each kind, with the timing and task BIDS requires
    for stem, volumes, task in ((BOLD_REST, 10, "rest"), (BOLD_MOTOR, 8, "motor")):
        assert nibabel.load(out / f"{stem}.nii.gz").shape == (64, 64, 12, volumes)
        sidecar = json.loads((out / f"{stem}.json").read_text())
        assert sidecar["RepetitionTime"] == 2 and sidecar["TaskName"] == task
    # the container's bold sidecar had no TaskName: the export adds it
    reused = json.loads((out / "sub-B001/ses-MR2/func/"
                         "sub-B001_ses-MR2_task-rest_run-01_bold.json").read_text())
    assert reused["TaskName"] == "rest"
    # two MPRAGE series of one session (the project's bidsmap names both T1w): two runs
    anat = sorted(p.name for p in (out / "sub-B002/ses-MR1/anat").iterdir())
    assert anat == [f"sub-B002_ses-MR1_run-0{r}_T1w.{e}" for r in (1, 2) for e in
                    ("json", "nii.gz")]
    assert (out / "participants.tsv").read_text().splitlines() == [
        "participant_id\txnat_label", "sub-B001\tB001", "sub-B002\tB002", "sub-B003\tB003"]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["Name"] == "BIDS demo study" and description["DatasetType"] == "raw"
    assert description["GeneratedBy"][0]["Name"] == "xnatfs"
    # what the server holds as NIfTI + sidecar comes with no DICOM downloaded
    # (two sessions of it: 4 files each, images and sidecars; their DICOM is not fetched)
    gets = file_gets(server)
    session_ids = {e.label: e.id for e in server.archive.experiments.values()}
    for label in ("B001_MR2", "B003_MR1"):
        mine = [p for p in gets if f"/{session_ids[label]}/" in p]
        assert len(mine) == 4 and not [p for p in mine if "DICOM" in p], (label, mine)

    before = len(server.log.records())
    again, summary = export(server, out)
    assert again.returncode == 0, again.stderr
    assert summary["downloaded_files"] == 0 and len(summary["unchanged"]) == 9
    assert file_gets(server, before) == []


def test_a_series_changed_on_the_server_is_converted_again_and_only_it(
        make_emulator: Callable[..., Emulator], tmp_path: Path) -> None:
    archive = synthetic_archive(SPEC)
    emu = make_emulator(archive)
    out = tmp_path / "bids"
    assert export(emu, out)[0].returncode == 0
    t1w = out / "sub-B001/ses-MR1/anat/sub-B001_ses-MR1_T1w.nii.gz"
    first = t1w.read_bytes()
    resource = next(r for r in archive.resources.values()
                    if getattr(r.owner, "id", "") == "2" and r.label == "DICOM"
                    and r.owner.session.label == "B001_MR1")  # type: ignore[union-attr]
    name = min(f.relpath for f in resource.files)
    old = resource.find(name).read()  # type: ignore[union-attr]
    changed = old[:-2] + bytes([old[-2] ^ 0xFF, old[-1]])  # one pixel brighter
    resource.replace_file(name, MadeContent(lambda: changed, 1.7e9))
    done, summary = export(emu, out)
    assert done.returncode == 0, done.stderr
    assert summary["converted"] == ["sub-B001/ses-MR1/anat/sub-B001_ses-MR1_T1w"]
    assert summary["reused"] == [] and len(summary["unchanged"]) == 8
    assert t1w.read_bytes() != first


@pytest.mark.parametrize(("bidsmap", "says"), [
    ("[{not json", "is not JSON"),
    ('{"MPRAGE": "T1w"}', "must be a JSON list"),
    ('[{"series_description": "MPRAGE", "bidsname": "T1w_nonsense"}]', "bad bidsname"),
])
def test_a_bad_bidsmap_is_one_line_and_exit_2(server: Emulator, tmp_path: Path,
                                              bidsmap: str, says: str) -> None:
    given = tmp_path / "map.json"
    given.write_text(bidsmap)
    done, _ = export(server, tmp_path / "out", "--bidsmap", str(given))
    assert done.returncode == 2 and says in one_line(done.stderr)
    assert not (tmp_path / "out").exists()


def test_an_unknown_project_or_several_projects_are_one_line(server: Emulator,
                                                             tmp_path: Path) -> None:
    done = xnatfs("bids", server.url, "NOPE", "-u", "alice", "-o", str(tmp_path / "o"))
    assert done.returncode == 4 and "no project NOPE" in one_line(done.stderr)
    done = xnatfs("bids", server.url, "BIDS01/B001", "OTHER/X", "-u", "alice", "-o",
                  str(tmp_path / "o"))
    assert done.returncode == 2 and "one project" in one_line(done.stderr)


def test_a_failing_dcm2niix_fails_its_series_and_the_rest_goes_on(server: Emulator,
                                                                  tmp_path: Path) -> None:
    fake = tmp_path / "dcm2niix"
    fake.write_text("#!/bin/sh\necho 'Error: this converter is broken' >&2\nexit 3\n")
    fake.chmod(0o755)
    env = {**os.environ, "XNATFS_DCM2NIIX": str(fake)}
    done, summary = export(server, tmp_path / "bids", env=env)
    assert done.returncode == 1
    assert len(summary["failed"]) == 5 and len(summary["reused"]) == 4
    assert all("this converter is broken" in f["reason"] for f in summary["failed"])
    assert "Traceback" not in done.stderr
    missing = {**os.environ, "XNATFS_DCM2NIIX": str(tmp_path / "absent")}
    done, summary = export(server, tmp_path / "bids2", env=missing)
    assert done.returncode == 1 and len(summary["reused"]) == 4
    assert "is not an executable file" in done.stderr and "Traceback" not in done.stderr


@needs_fuse
def test_the_mounted_bids_view_is_valid_and_reads_lazily(
        server: Emulator, mount: Callable[..., Mount]) -> None:
    m = mount(server, "--bids")
    root = m / "BIDS01"
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert "sub-B001/ses-MR2/anat/sub-B001_ses-MR2_T1w.nii.gz" in names
    assert "sub-B003/ses-MR1/func/sub-B003_ses-MR1_task-rest_bold.nii.gz" in names
    assert not [n for n in names if "sub-B002" in n or "sub-B001/ses-MR1" in n]
    assert file_gets(server) == []  # a walk of the view reads no file
    readme = (root / "README").read_text()
    assert "BIDS01/B001/B001_MR1" in readme and "xnatfs bids" in readme
    assert validate(root) == []
    image = nibabel.load(root / "sub-B001/ses-MR2/func/"
                         "sub-B001_ses-MR2_task-rest_run-01_bold.nii.gz")
    assert image.shape == (64, 64, 12, 10)
    assert json.loads((root / "task-rest_bold.json").read_text()) == {"TaskName": "rest"}

    from bids import BIDSLayout

    layout = BIDSLayout(root, validate=False)
    assert layout.get_subjects() == ["B001", "B003"]
    bolds = layout.get(suffix="bold", extension=".nii.gz", return_type="filename")
    assert len(bolds) == 2
    assert layout.get_metadata(bolds[0])["TaskName"] == "rest"


def test_fsspec_shows_the_same_bids_view(server: Emulator) -> None:
    import fsspec

    fs = fsspec.filesystem("xnat", url=server.url, user="alice", password="secret",
                           layout="bids", skip_instance_cache=True)
    assert "BIDS01/participants.tsv" in fs.ls("BIDS01", detail=False)
    assert fs.cat_file("BIDS01/participants.tsv").decode().splitlines()[1:] == \
        ["sub-B001\tB001", "sub-B003\tB003"]
    nii = "BIDS01/sub-B003/ses-MR1/anat/sub-B003_ses-MR1_T1w.nii.gz"
    assert fs.info(nii)["size"] > 0 and fs.cat_file(nii)[:2] == b"\x1f\x8b"


def test_an_export_killed_midway_is_finished_by_the_rerun(
        make_emulator: Callable[..., Emulator], bids_archive: Archive, tmp_path: Path) -> None:
    # slow bodies: the kill lands while series are still arriving
    emu = make_emulator(bids_archive, bandwidth=1.5e6, bandwidth_kinds=frozenset({"file",
                                                                                   "zip"}))
    out = tmp_path / "bids"
    child = subprocess.Popen([sys.executable, "-m", "xnatfs", "bids", emu.url, "BIDS01", "-u",
                              "alice", "-o", str(out)], env={**os.environ, "XNAT_PASS": "secret"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / ".xnatfs" / "bids.json"
    try:
        while not state.exists():  # the first series committed
            try:
                child.wait(timeout=0.02)
                break
            except subprocess.TimeoutExpired:
                continue
        child.kill()
    finally:
        child.wait()
    written = json.loads(state.read_text())["entries"] if state.exists() else {}
    assert len(written) < 9, "the run finished before the kill"
    done, summary = export(make_emulator(bids_archive), out)
    assert done.returncode == 0, done.stderr
    assert len(summary["unchanged"]) + len(summary["converted"]) + len(summary["reused"]) == 9
    assert validate(out) == []
    entries = json.loads(state.read_text())["entries"]
    assert len(entries) == 9 and not [k for k, e in entries.items() if e["pending"]]


def test_a_reused_file_that_is_not_the_listings_md5_is_never_written(
        make_emulator: Callable[..., Emulator], tmp_path: Path) -> None:
    archive = synthetic_archive(SPEC)
    resource = next(r for r in archive.resources.values()
                    if r.label == "BIDS" and getattr(r.owner, "label", "") == "B003_MR1")
    name = "anat/sub-B003_ses-MR1_T1w.nii.gz"
    real = resource.find(name)
    assert real is not None
    listed, data = real.md5, real.read()
    lying = MadeContent(lambda: data[:-1] + bytes([data[-1] ^ 1]), 1.7e9)
    lying._md5 = listed  # the listing keeps the old MD5; the bytes are others
    resource.replace_file(name, lying)
    out = tmp_path / "bids"
    done, summary = export(make_emulator(archive), out)
    assert done.returncode == 1
    (failed,) = summary["failed"]
    assert failed["series"] == "sub-B003/ses-MR1/anat/sub-B003_ses-MR1_T1w"
    assert not (out / "sub-B003/ses-MR1/anat/sub-B003_ses-MR1_T1w.nii.gz").exists()
