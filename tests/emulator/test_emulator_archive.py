"""Synthetic and folder archives: determinism, generated contents, specs, the oracle."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from xnat_emulator import Archive, BadValue, SyntheticSpec, load_folder, synthetic_archive
from xnat_emulator.content import BLOCK, SyntheticContent


def test_same_spec_same_archive() -> None:
    spec = SyntheticSpec(hostile=True, dicoms=2, nifti_size=4096)
    one, two = synthetic_archive(spec), synthetic_archive(spec)
    assert [(f.uri, f.md5) for f in one.files()] == [(f.uri, f.md5) for f in two.files()]
    other = synthetic_archive(SyntheticSpec(hostile=True, dicoms=2, nifti_size=4096, seed=1))
    assert [f.md5 for f in one.files()] != [f.md5 for f in other.files()]


def test_contents_differ_per_file_and_per_block() -> None:
    big = SyntheticContent(seed=7, size=3 * BLOCK, mtime=0.0)
    blocks = [big.read(k * BLOCK, BLOCK) for k in range(3)]
    assert len(set(blocks)) == 3
    assert big.read(BLOCK - 10, 20) == blocks[0][-10:] + blocks[1][:10]
    assert SyntheticContent(seed=8, size=BLOCK, mtime=0.0).read() != blocks[0]
    dicom = SyntheticContent(seed=9, size=4096, mtime=0.0, header=bytes(128) + b"DICM")
    assert dicom.read(128, 4) == b"DICM" and len(dicom.read()) == 4096


def test_md5_of_a_large_file_is_computed_once() -> None:
    big = SyntheticContent(seed=1, size=64 << 20, mtime=0.0)
    start = time.monotonic()
    first = big.md5()
    took = time.monotonic() - start
    start = time.monotonic()
    assert big.md5() == first
    assert time.monotonic() - start < took / 100


def test_oracle_context(small_archive: Archive) -> None:
    files = list(small_archive.files())
    levels = {f.level for f in files}
    assert levels == {"project", "subject", "session", "scan", "assessor", "reconstruction"}
    scan_file = next(f for f in files if f.level == "scan")
    assert (scan_file.project_id, scan_file.subject_label, scan_file.session_label,
            scan_file.scan_id, scan_file.scan_type, scan_file.resource_label) == \
           ("PROJ01", "S001", "S001_MR1", "1", "T1w", "DICOM")
    assert scan_file.uri.startswith("/data/experiments/XNAT_E00001/scans/1/resources/")
    subject_file = next(f for f in files if f.level == "subject")
    assert subject_file.scan_id is None and subject_file.session_label is None
    assert len({f.uri for f in files}) == len(files)


def test_hostile_set(hostile_archive: Archive) -> None:
    files = list(hostile_archive.files())
    labels = {s.label for s in hostile_archive.subjects.values()}
    assert {"..", "a/b", "nul\x00inside", "Subj With Space", "plus+sign"} <= labels
    assert any(len(label.encode()) > 255 for label in labels)
    assert any(len(f.name.encode()) > 255 for f in files)
    assert sum(f.missing for f in files) == 1
    assert any(not f.digest_listed for f in files) and any(not f.size_listed for f in files)
    assert any("/" in f.relpath for f in files if f.level == "scan")
    assert {p.access.value for p in hostile_archive.projects.values()} == \
           {"public", "private", "protected"}
    shared = [s for s in hostile_archive.subjects.values() if s.shares]
    assert [s.shares for s in shared] == [{"SHARED": "Shared Subj"}]


def test_spec_parsing() -> None:
    spec = SyntheticSpec.parse("projects=3, subjects=1,nifti_size=100M,dicom_size=64K,"
                               "hostile=yes,members=alice+carol")
    assert (spec.projects, spec.subjects, spec.nifti_size, spec.dicom_size) == \
           (3, 1, 100 << 20, 64 << 10)
    assert spec.hostile and spec.members == ("alice", "carol")
    assert SyntheticSpec.parse("") == SyntheticSpec()
    for bad in ("projects", "colour=red", "projects=many", "hostile=maybe", "nifti_size=1X"):
        with pytest.raises(BadValue):
            SyntheticSpec.parse(bad)


def test_load_folder(tmp_path: Path, make_emulator: Any, login: Any) -> None:
    layout = {
        "P1/resources/docs/files/read me.txt": b"project",
        "P1/S1/resources/CONSENT/files/c.pdf": b"subject",
        "P1/S1/MR1/scans/1-T1w/resources/DICOM/files/a/1.dcm": b"scan" * 1000,
        "P1/S1/MR1/scans/2-BOLD rest/resources/NIFTI/files/b.nii.gz": b"nifti",
        "P1/S1/MR1/resources/BIDS/files/x.json": b"session",
        "P1/S1/MR1/assessors/QC1/resources/QC/files/q.txt": b"assessor",
    }
    for rel, data in layout.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    archive = load_folder(tmp_path)
    files = {(f.level, f.relpath): f for f in archive.files()}
    assert set(files) == {("project", "read me.txt"), ("subject", "c.pdf"), ("scan", "a/1.dcm"),
                          ("scan", "b.nii.gz"), ("session", "x.json"), ("assessor", "q.txt")}
    scan = files["scan", "b.nii.gz"]
    assert (scan.scan_id, scan.scan_type, scan.session_label) == ("2", "BOLD rest", "MR1")
    assert load_folder(tmp_path).experiments.keys() == archive.experiments.keys()
    api = login(make_emulator(archive))
    dicom = files["scan", "a/1.dcm"]
    body = api.get(dicom.uri)
    assert body.content == b"scan" * 1000 and body.headers["Content-Length"] == "4000"
    part = api.get(dicom.uri, headers={"Range": "bytes=4-7"})
    assert part.status_code == 206 and part.content == b"scan"
    listed = api.get(dicom.uri.rsplit("/files/", 1)[0] + "/files").json()
    assert listed["ResultSet"]["Result"][0]["digest"] == dicom.md5
    with pytest.raises(BadValue):
        load_folder(tmp_path / "nope")
