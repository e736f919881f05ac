"""The BIDS demo project (``bids=True``) over real HTTP: the config service's answers, DICOM
series that the real dcm2niix turns into volumes of the stated shape, and the NIfTI files and
sidecars a conversion left in the archive, loaded by nibabel."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel
import pytest

from tests.support.dicom import DCM2NIIX, convert_series
from xnat_emulator import Archive, Emulator, SyntheticSpec, synthetic_archive
from xnat_emulator.archive import Access
from xnat_emulator.bidsdata import BIDSMAP

MAP_URL = "/data/projects/BIDS01/config/bids/bidsmap"


@pytest.fixture(scope="module")
def archive() -> Archive:
    built = synthetic_archive(SyntheticSpec.parse("projects=1,subjects=1,sessions=1,bids=1"))
    built.add_project("SHOWN", access=Access.PROTECTED, members={"alice"})
    built.add_project("HIDDEN", access=Access.PRIVATE, members={"alice"})
    for project in ("SHOWN", "HIDDEN"):
        built.add_config(built.projects[project], "bids", "bidsmap", "[]")
    return built


@pytest.fixture
def api(make_emulator: Callable[..., Emulator], archive: Archive, login: Any) -> Any:
    return login(make_emulator(archive))


def session_id(archive: Archive, label: str) -> str:
    return next(e.id for e in archive.experiments.values() if e.label == label)


def test_the_project_config_holds_the_bids_map(api: Any) -> None:
    text = api.get(MAP_URL, params={"contents": "true"})
    assert text.status_code == 200 and text.text == BIDSMAP
    assert text.headers["Content-Type"] == "text/plain;charset=UTF-8"
    assert json.loads(text.text)[1] == {"pattern": "^ep2d_bold_motor",
                                        "bidsname": "task-motor_bold"}
    assert api.get(MAP_URL, params={"contents": "True"}).text == BIDSMAP  # requests' True
    assert api.get(MAP_URL, params={"contents": "1"}).text == BIDSMAP  # not false, not 0
    assert api.get(MAP_URL, params={"contents": "0"}).json()["ResultSet"]["Result"]
    (row,) = api.get(MAP_URL).json()["ResultSet"]["Result"]
    assert row["contents"] == BIDSMAP
    assert {k: row[k] for k in ("tool", "path", "project", "status", "version",
                                "unversioned")} == {
        "tool": "bids", "path": "bidsmap", "project": "BIDS01", "status": "enabled",
        "version": "1", "unversioned": "false"}
    assert row["create_date"].startswith("2023-09-27 ") and "user" in row and "reason" in row
    tools = api.get("/data/projects/BIDS01/config").json()["ResultSet"]["Result"]
    assert tools == [{"tool": "bids"}]
    by_tool = api.get("/data/projects/BIDS01/config/bids").json()["ResultSet"]["Result"]
    assert [r["path"] for r in by_tool] == ["bidsmap"]


@pytest.mark.parametrize(("url", "contents", "status"), [
    ("/data/projects/PROJ01/config/bids/bidsmap", True, 404),
    ("/data/projects/PROJ01/config/bids/bidsmap", False, 404),
    ("/data/projects/BIDS01/config/bids/other", True, 404),
    ("/data/projects/BIDS01/config/dicom", False, 404),
    ("/data/config/bids/bidsmap", True, 404),
    ("/data/config/bids/bidsmap", False, 404),
    ("/data/config", False, 404),
    ("/data/projects/NOSUCH/config/bids/bidsmap", True, 404),
    ("/data/projects/HIDDEN/config/bids/bidsmap", True, 404),
    ("/data/projects/SHOWN/config/bids/bidsmap", True, 403),
])
def test_config_that_is_absent_or_not_readable(make_emulator: Callable[..., Emulator],
                                               archive: Archive, login: Any, url: str,
                                               contents: bool, status: int) -> None:
    bob = login(make_emulator(archive), "bob")
    answer = bob.get(url, params={"contents": "true"} if contents else None)
    assert answer.status_code == status
    assert login(make_emulator(archive)).get(  # alice, a member, reads both
        "/data/projects/SHOWN/config/bids/bidsmap", params={"contents": "true"}).text == "[]"


@pytest.mark.parametrize(("session", "scan", "description", "shape"), [
    ("B001_MR1", "1", "localizer", (64, 64, 3)),
    ("B001_MR1", "2", "anat-T1w", (64, 64, 24)),
    ("B001_MR1", "3", "func-bold_task-rest_run-01", (64, 64, 12, 10)),
    ("B002_MR1", "1", "AAHScout", (64, 64, 3)),
    ("B002_MR1", "2", "MPRAGE", (64, 64, 24)),
    ("B002_MR1", "3", "MPRAGE", (64, 64, 24)),
    ("B002_MR1", "4", "ep2d_bold_motor", (64, 64, 12, 8)),
])
def test_dcm2niix_converts_each_series(api: Any, archive: Archive, tmp_path: Path, session: str,
                                       scan: str, description: str,
                                       shape: tuple[int, ...]) -> None:
    if DCM2NIIX is None:
        pytest.skip("dcm2niix is not installed")
    experiment = session_id(archive, session)
    scans = api.get(f"/data/experiments/{experiment}/scans").json()["ResultSet"]["Result"]
    assert {r["ID"]: r["series_description"] for r in scans}[scan] == description
    listed = api.get(f"/data/experiments/{experiment}/scans/{scan}/resources/DICOM/files"
                     ).json()["ResultSet"]["Result"]
    assert [r["Name"] for r in listed] == [f"{i + 1:04d}.dcm" for i in range(len(listed))]
    zipped = api.get(f"/data/experiments/{experiment}/scans/{scan}/resources/DICOM/files",
                     params={"format": "zip"})
    entries = zipfile.ZipFile(io.BytesIO(zipped.content))
    entries.extractall(tmp_path / "zip")
    dicom = tmp_path / "zip" / os.path.dirname(entries.namelist()[0])  # deeper than -d 5
    volume = convert_series(dicom, tmp_path / "out")
    assert volume.name == f"{description}_{scan}.nii.gz"
    image = nibabel.load(volume)
    assert image.shape == shape
    side = json.loads(volume.with_name(volume.name.replace(".nii.gz", ".json")).read_text())
    assert side["SeriesDescription"] == side["ProtocolName"] == description
    if len(shape) == 4:
        assert side["RepetitionTime"] == 2.0 and side["EchoTime"] == 0.03
        assert image.header.get_zooms()[3] == 2.0


def test_container_and_curated_niftis_load(api: Any, archive: Archive, tmp_path: Path) -> None:
    converted = session_id(archive, "B001_MR2")
    files = {}
    for scan in ("2", "3"):
        for label in ("NIFTI", "BIDS"):
            url = f"/data/experiments/{converted}/scans/{scan}/resources/{label}/files"
            files.update({r["Name"]: r for r in api.get(url).json()["ResultSet"]["Result"]})
    curated = session_id(archive, "B003_MR1")
    tree = api.get(f"/data/experiments/{curated}/resources/BIDS/files").json()
    files.update({r["URI"].split("/files/", 1)[1]: r for r in tree["ResultSet"]["Result"]})
    assert sorted(files) == sorted([
        "sub-B001_ses-B001MR2_T1w.nii.gz", "sub-B001_ses-B001MR2_T1w.json",
        "sub-B001_ses-B001MR2_task-rest_run-01_bold.nii.gz",
        "sub-B001_ses-B001MR2_task-rest_run-01_bold.json",
        "anat/sub-B003_ses-MR1_T1w.nii.gz", "anat/sub-B003_ses-MR1_T1w.json",
        "func/sub-B003_ses-MR1_task-rest_bold.nii.gz",
        "func/sub-B003_ses-MR1_task-rest_bold.json"])
    for name, row in files.items():
        data = api.get(row["URI"]).content
        assert len(data) == int(row["Size"]) and hashlib.md5(data).hexdigest() == row["digest"]
        if name.endswith(".json"):
            side = json.loads(data)
            assert side["Modality"] == "MR" and side["ConversionSoftware"] == "dcm2niix"
            bold = "_bold" in name
            assert side["RepetitionTime"] == (2.0 if bold else 2.3)
            assert side.get("TaskName") == ("rest" if bold and "/" in name else None)
            continue
        path = tmp_path / name.replace("/", "_")
        path.write_bytes(data)
        image = nibabel.load(path)
        header = image.header
        assert data[:3] == b"\x1f\x8b\x08" and data[4:8] == bytes(4)  # gzip, no timestamp
        assert header.get_xyzt_units() == ("mm", "sec")
        assert header["qform_code"] == header["sform_code"] == 1
        if "_bold" in name:
            assert image.shape == (64, 64, 12, 10) and header.get_zooms() == (3.75, 3.75, 4, 2)
        else:
            assert image.shape == (64, 64, 24) and header.get_zooms() == (1, 1, 1)
        assert (image.affine == header.get_qform()).all()
    again = synthetic_archive(SyntheticSpec(projects=0, bids=True))
    def made(built: Archive) -> dict[tuple[str | None, str | None, str], str]:
        return {(f.session_label, f.scan_id, f.relpath): f.md5 for f in built.files()
                if f.project_id == "BIDS01" and (f.name.endswith(".json") or f.scan_id == "3")}

    assert made(archive) == made(again)  # same bytes from another build, DICOM included
