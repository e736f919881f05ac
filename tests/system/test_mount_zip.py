"""``cp -r`` of a resource folder through the mount: its files come as one zip stream, checked
entry by entry, and a zip that is garbled, cut short or no zip at all never costs a wrong
byte, only the per-file GETs it could not spare. Requests are counted in the emulator's log."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.mount import Mount, needs_fuse
from xnat_emulator import Archive, Emulator, SyntheticSpec, synthetic_archive

FILES = 60
SPEC = SyntheticSpec(projects=1, subjects=1, sessions=1, scans=1, dicoms=FILES, dicom_size=3000,
                     niftis=0, session_resources=0, subject_resources=0, project_resources=0,
                     assessors=0, seed=21)
FOLDER = "PROJ01/S001/S001_MR1/scans/1-T1w/resources/DICOM/files"
pytestmark = needs_fuse


@pytest.fixture(scope="module")
def archive() -> Archive:
    return synthetic_archive(SPEC)


def digests(archive: Archive) -> dict[str, str]:
    return {f.relpath: f.md5 for r in archive.resources.values() if r.label == "DICOM"
            for f in r.files}


def copy(m: Mount, tmp_path: Path) -> dict[str, str]:
    out = tmp_path / "copy"
    shutil.copytree(m / FOLDER, out)
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in out.iterdir()}


def kinds(emu: Emulator) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in emu.log.records():
        counts[r.kind] = counts.get(r.kind, 0) + 1
    return counts


def test_cp_r_of_a_resource_folder_is_one_zip(make_emulator: Callable[..., Emulator],
                                              mount: Callable[..., Mount], archive: Archive,
                                              tmp_path: Path) -> None:
    # a per-file GET costs the server its catalog: the zip is far ahead of any reader
    emu = make_emulator(archive, catalog_cost=0.002)
    assert copy(mount(emu), tmp_path) == digests(archive)
    asked = kinds(emu)
    assert asked.get("zip") == 1
    assert asked.get("file", 0) <= FILES // 4, asked  # the files opened before it came


def test_a_folder_read_before_is_not_zipped_again_after_a_remount(
        make_emulator: Callable[..., Emulator], mount: Callable[..., Mount], archive: Archive,
        tmp_path: Path) -> None:
    emu = make_emulator(archive, catalog_cost=0.002)
    first = mount(emu)
    assert copy(first, tmp_path / "one") == digests(archive)
    first.stop()
    emu.log.clear()
    assert copy(mount(emu), tmp_path / "two") == digests(archive)  # the same chunk cache
    asked = kinds(emu)
    assert asked.get("zip", 0) == 0 and asked.get("file", 0) == 0, asked


def test_random_reads_start_no_zip(make_emulator: Callable[..., Emulator],
                                   mount: Callable[..., Mount], archive: Archive) -> None:
    emu = make_emulator(archive)
    m = mount(emu)
    names = sorted(digests(archive))
    for name in names[::-7]:  # backwards, skipping: no walk in listing order
        (m / FOLDER / name).read_bytes()
    assert kinds(emu).get("zip", 0) == 0


@pytest.mark.parametrize("knobs", [
    {"zip_garble_rate": 0.3, "seed": 4},
    {"zip_truncate_rate": 1.0, "seed": 5},
    {"broken_zips": "garbage"},
    {"broken_zips": "names"},
], ids=["garbled", "cut-short", "not-a-zip", "wrong-names"])
def test_a_bad_zip_never_hands_out_a_wrong_byte(make_emulator: Callable[..., Emulator],
                                               mount: Callable[..., Mount], archive: Archive,
                                               tmp_path: Path, knobs: dict[str, object]) -> None:
    emu = make_emulator(archive, **knobs)
    assert copy(mount(emu), tmp_path) == digests(archive)
    asked = kinds(emu)
    assert 1 <= asked.get("zip", 0) <= 3, asked
