"""``xnatfs materialize`` fetching whole resources as one zip: when it does, what it checks,
and how it recovers from zips that are cut, garbled or not zips at all. Requests and bytes
are counted in the emulator's log; nothing is timed."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from tests.support.oracle import Oracle, output_files
from xnat_emulator import Emulator, EmulatorConfig, SyntheticSpec, synthetic_archive
from xnatfs.cli import main
from xnatfs.reader.zipstream import ZIP_MIN_FILES

DICOMS = 24
SPEC = SyntheticSpec(projects=1, subjects=1, sessions=1, scans=4, dicoms=DICOMS, dicom_size=700,
                     niftis=1, nifti_size=3000, session_resources=0, subject_resources=0,
                     project_resources=0, assessors=0, seed=5)
USERS = {"alice": "secret"}


@pytest.fixture(scope="module")
def server():
    with Emulator(synthetic_archive(SPEC), EmulatorConfig(), users=USERS) as emu:
        yield emu


@pytest.fixture
def emu(server, monkeypatch):
    server.config = EmulatorConfig()
    server.log.clear()
    monkeypatch.setenv("XNAT_USER", "alice")
    monkeypatch.setenv("XNAT_PASS", "secret")
    yield server
    server.config = EmulatorConfig()


def materialize(capsys, emu: Emulator, out: Path, *argv: str) -> dict:
    code = main(["materialize", emu.url, "PROJ01", "-o", str(out), "-j", "4", "--json", *argv])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0, summary
    return summary


def assert_exact(emu: Emulator, out: Path) -> None:
    want = Oracle.of(emu, "PROJ01").present()
    have = output_files(out)
    assert set(have) == set(want)
    for path, f in want.items():
        assert hashlib.md5(have[path].read_bytes()).hexdigest() == f.md5, path


def requests_of(emu: Emulator, kind: str) -> list:
    return [r for r in emu.log.records() if r.kind == kind]


def dicom_gets(emu: Emulator) -> list:
    return [r for r in requests_of(emu, "file") if r.path.endswith(".dcm")]


def test_a_many_file_resource_comes_as_one_zip_a_single_file_one_by_one(emu, capsys,
                                                                        tmp_path):
    summary = materialize(capsys, emu, tmp_path)
    assert summary["downloaded"] == SPEC.scans * (DICOMS + 1)
    zips = requests_of(emu, "zip")
    assert len(zips) == SPEC.scans and all(z.status == 200 for z in zips)
    assert all(z.query == "format=zip" and z.path.endswith("/files") for z in zips)
    assert dicom_gets(emu) == []
    assert len(requests_of(emu, "file")) == SPEC.scans  # the NIfTI of each scan
    assert_exact(emu, tmp_path)
    emu.log.clear()  # a rerun fetches nothing at all
    assert materialize(capsys, emu, tmp_path)["present"] == SPEC.scans * (DICOMS + 1)
    assert requests_of(emu, "zip") == requests_of(emu, "file") == []


def test_few_wanted_files_go_one_by_one(emu, capsys, tmp_path):
    # 0001..0009 of 24 in each scan: more than ZIP_MIN_FILES, less than half the resource
    summary = materialize(capsys, emu, tmp_path, "--include", "*/000?.dcm")
    assert ZIP_MIN_FILES < 9 and summary["downloaded"] == SPEC.scans * 9
    assert requests_of(emu, "zip") == []
    assert len(dicom_gets(emu)) == SPEC.scans * 9


def test_only_what_is_missing_is_fetched_and_few_missing_go_one_by_one(emu, capsys,
                                                                       tmp_path):
    materialize(capsys, emu, tmp_path)
    gone = sorted(p for p in output_files(tmp_path) if p.endswith(".dcm"))[:3]
    for path in gone:
        (tmp_path / path).unlink()
    emu.log.clear()
    assert materialize(capsys, emu, tmp_path)["downloaded"] == 3
    assert requests_of(emu, "zip") == [] and len(dicom_gets(emu)) == 3
    assert_exact(emu, tmp_path)


def test_a_garbled_entry_is_caught_and_that_file_comes_on_its_own(emu, capsys, tmp_path,
                                                                   caplog):
    emu.config.zip_garble_rate = 0.1  # the CRC fits the wrong bytes: only the MD5 tells
    with caplog.at_level(logging.WARNING):
        materialize(capsys, emu, tmp_path, "--resource", "DICOM")
    caught = [r for r in caplog.records if "in the zip; fetching it on its own" in r.message]
    assert caught
    assert len(requests_of(emu, "zip")) == SPEC.scans
    assert len(dicom_gets(emu)) == len(caught)  # those files, and only those, again
    assert_exact_dicoms(emu, tmp_path)


def assert_exact_dicoms(emu: Emulator, out: Path) -> None:
    want = {p: f for p, f in Oracle.of(emu, "PROJ01").present().items() if p.endswith(".dcm")}
    have = output_files(out)
    assert set(have) == set(want)
    for path, f in want.items():
        assert hashlib.md5(have[path].read_bytes()).hexdigest() == f.md5, path


def test_zips_cut_short_keep_what_was_verified_and_the_rest_comes_again(emu, capsys,
                                                                         tmp_path):
    emu.config = EmulatorConfig(zip_truncate_rate=0.3, seed=4)  # zips 1 and 3 are cut
    summary = materialize(capsys, emu, tmp_path)
    assert summary["failed"] == 0
    assert_exact(emu, tmp_path)
    zips = requests_of(emu, "zip")
    cut = [z for z in zips if z.fault == "truncate"]
    assert len(cut) >= 2 and len(zips) >= SPEC.scans + 1
    sent = sum(r.bytes_sent for r in emu.log.records() if r.kind in ("zip", "file"))
    assert sent < 3 * SPEC.scans * DICOMS * SPEC.dicom_size  # not everything many times


@pytest.mark.parametrize("broken", ["garbage", "names"])
def test_a_server_with_broken_zips_costs_one_zip_and_one_line(emu, capsys, tmp_path, caplog,
                                                              broken):
    emu.config.broken_zips = broken
    with caplog.at_level(logging.WARNING):
        materialize(capsys, emu, tmp_path)
    lines = [r for r in caplog.records if "zips cannot be used" in r.message]
    assert len(lines) == 1
    assert len(requests_of(emu, "zip")) == 1
    assert len(dicom_gets(emu)) == SPEC.scans * DICOMS
    assert_exact(emu, tmp_path)


def test_no_zip_fetches_file_by_file(emu, capsys, tmp_path):
    materialize(capsys, emu, tmp_path, "--no-zip", "--resource", "DICOM")
    assert requests_of(emu, "zip") == []
    assert len(dicom_gets(emu)) == SPEC.scans * DICOMS
    assert_exact_dicoms(emu, tmp_path)
