"""The demo's files are real images and documents: pydicom, nibabel, gzip, json and dcm2niix
read them, straight from the emulator and through a real FUSE mount, and they stay lazy,
deterministic and exactly the size the spec asks."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest

from tests.support.dicom import DCM2NIIX, convert_series
from tests.support.mount import Mount, needs_fuse
from tests.support.oracle import Oracle
from xnat_emulator import Archive, Emulator, File, synthetic_archive
from xnat_emulator.content import SyntheticContent
from xnat_emulator.demo import DEMO_SPEC as DEMO
from xnat_emulator.filetypes import series_info
from xnat_emulator.imaging import NIFTI_HEADER_SIZE, dicom_header, nifti_header
from xnat_emulator.storedgzip import FULL_MEMBER, StoredGzipContent


@pytest.fixture(scope="module")
def demo() -> Archive:
    return synthetic_archive(DEMO)


def session_files(archive: Archive, session: str = "S001_MR1") -> list[File]:
    return [f for f in archive.files() if f.session_label == session]


def nifti_image(data: bytes, tmp_path: Path, name: str) -> nibabel.Nifti1Image:
    path = tmp_path / name
    path.write_bytes(data)
    return nibabel.load(path)


def test_dicom_scans_are_series_of_one_study(demo: Archive) -> None:
    assert sorted(demo.projects) == ["BIDS01", "PROJ01"]  # the synthetic and the BIDS project
    files = [f for f in session_files(demo) if f.name.endswith(".dcm")]
    series: dict[str, list[pydicom.Dataset]] = {}
    for f in files:
        ds = pydicom.dcmread(io.BytesIO(f.read()))
        assert f.size == DEMO.dicom_size
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns) and ds.Rows * ds.Columns > 30_000
        series.setdefault(f.scan_id or "", []).append(ds)
    assert sorted(series) == ["1", "2", "3"]
    assert len({ds.StudyInstanceUID for scan in series.values() for ds in scan}) == 1
    assert len({ds.SOPInstanceUID for scan in series.values() for ds in scan}) == len(files)
    for scan_id, slices in series.items():
        assert len({ds.SeriesInstanceUID for ds in slices}) == 1
        assert {int(ds.SeriesNumber) for ds in slices} == {int(scan_id)}
        assert sorted(int(ds.InstanceNumber) for ds in slices) == list(range(1, 21))
        by_instance = sorted(slices, key=lambda ds: int(ds.InstanceNumber))
        z = [float(ds.ImagePositionPatient[2]) for ds in by_instance]
        assert z == sorted(set(z)) and z == [float(ds.SliceLocation) for ds in by_instance]
        assert {ds.PatientID for ds in slices} == {"S001"}
    assert len({scan[0].SeriesInstanceUID for scan in series.values()}) == 3
    other = next(f for f in session_files(demo, "S001_MR2") if f.name.endswith(".dcm"))
    assert pydicom.dcmread(io.BytesIO(other.read())).StudyInstanceUID != \
        series["1"][0].StudyInstanceUID


def test_niftis_are_gzipped_volumes(demo: Archive, tmp_path: Path) -> None:
    f = next(f for f in session_files(demo) if f.name.endswith(".nii.gz"))
    data = f.read()
    assert len(data) == f.size == DEMO.nifti_size
    raw = gzip.decompress(data)  # what gzip -t checks: every member's CRC and length
    image = nifti_image(data, tmp_path, "a.nii.gz")
    assert len(image.shape) >= 3 and image.get_data_dtype() == np.int16
    assert NIFTI_HEADER_SIZE + 2 * int(np.prod(image.shape)) <= len(raw)
    assert np.asarray(image.dataobj).std() > 1000  # pixels, not a blank
    plain = SyntheticContent(1, 100_000, 0.0, nifti_header(100_000 - NIFTI_HEADER_SIZE))
    assert nifti_image(plain.read(), tmp_path, "b.nii").shape == (36, 36, 38)


def test_text_json_and_pdf_documents(demo: Archive) -> None:
    # the synthetic project's documents; BIDS01's sidecars are dcm2niix's (tab-indented)
    docs = [f for f in demo.files() if f.name.endswith((".txt", ".json"))
            and f.project_id == "PROJ01"]
    assert {f.name.rsplit(".", 1)[1] for f in docs} == {"txt", "json"}
    for f in docs:
        text = f.read().decode("ascii")
        assert len(text) == f.size and "\n" in text
        assert all(line.isprintable() for line in text.splitlines())
        if f.name.endswith(".json"):
            assert json.loads(text)["Modality"] == "MR"
    pdf = next(f for f in demo.files() if f.name.endswith(".pdf")).read()
    assert pdf.startswith(b"%PDF-1.4\n") and pdf.rstrip(b"\n").endswith(b"%%EOF")
    xref = int(pdf.rsplit(b"startxref\n", 1)[1].split()[0])
    offsets = [int(row[:10]) for row in pdf[xref:].split(b"\n")[3:8]]
    assert [pdf[at:].split(b"\n", 1)[0] for at in offsets] == \
        [b"%d 0 obj" % n for n in range(1, 6)]
    length = int(pdf.split(b"/Length ")[1].split(b">>")[0])
    stream = pdf.index(b"stream\n") + len(b"stream\n")
    assert pdf[stream + length :].startswith(b"\nendstream\n")
    assert b"(Synthetic document: consent_1.pdf) Tj" in pdf[stream : stream + length]


def test_same_spec_same_bytes_and_exact_sizes_and_ranges(demo: Archive) -> None:
    again = synthetic_archive(DEMO)
    for mine, theirs in zip(session_files(demo)[::7], session_files(again)[::7], strict=True):
        assert mine.uri == theirs.uri and mine.md5 == theirs.md5
    # every size is honoured, including ones too small for a header; ranges are exact
    for size in [*range(0, 700, 7), FULL_MEMBER - 3, 3 * FULL_MEMBER + 401, 5_000_001]:
        gz = StoredGzipContent(size, size, 0.0, nifti_header, NIFTI_HEADER_SIZE)
        data = gz.read()
        assert len(data) == size
        if size >= 23:
            gzip.decompress(data)
        for offset in {0, 1, size // 3, max(0, size - 30), FULL_MEMBER + 370}:
            assert gz.read(offset, 100_000) == data[offset : offset + 100_000]
    scan_file = next(f for f in demo.files() if f.name == "0003.dcm")
    info = series_info(scan_file.resource, "0003.dcm", 0)
    for size in (0, 700, 1200, 1201, 4097):
        header = dicom_header(size, info, "key")
        dicom = SyntheticContent(size, size, 0.0, header).read()
        assert len(dicom) == size
        if size >= 1200:  # room for a header (about 1.1 kB) and a few pixels
            assert pydicom.dcmread(io.BytesIO(dicom)).pixel_array.size >= 1


@needs_fuse
@pytest.mark.fuse
@pytest.mark.timeout(120)
def test_dcm2niix_converts_a_scan_folder_of_the_mounted_demo(
        make_emulator: Callable[..., Emulator], demo: Archive, mount: Callable[..., Mount],
        oracle: Callable[..., Oracle], tmp_path: Path) -> None:
    emulator = make_emulator(demo)
    m, o = mount(emulator), oracle(emulator)
    first = next(p for p in sorted(o.files) if p.startswith("PROJ01/") and
                 p.endswith("/0001.dcm"))
    # the folder the README's dcm2niix example converts
    assert first == "PROJ01/S001/S001_MR1/scans/1-T1w/resources/DICOM/files/0001.dcm"
    scan = m / os.path.dirname(first)
    dataset = pydicom.dcmread(scan / "0001.dcm")
    nifti = next(p for p in sorted(o.files) if p.endswith(".nii.gz"))
    assert nibabel.load(m / nifti).shape == nifti_image(
        o.read(nifti), tmp_path, "x.nii.gz").shape
    if DCM2NIIX is None:
        pytest.skip("dcm2niix is not installed")
    converted = convert_series(scan, tmp_path / "nifti")
    assert converted.name == f"{dataset.SeriesDescription}_{dataset.SeriesNumber}.nii.gz"
    volume = nibabel.load(converted)
    assert volume.shape == (dataset.Columns, dataset.Rows, DEMO.dicoms)
    assert hashlib.md5((scan / "0001.dcm").read_bytes()).hexdigest() == \
        o.files[first].md5
