"""A big resource as several zips of name patterns at once (``zipsplit``): what each part
selects, that every file comes once, and what a server that does not zip patterns costs.
Requests and bytes are counted in the emulator's log; nothing is timed."""

from __future__ import annotations

import logging
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.integration.test_materialize_zip import assert_exact, materialize
from xnat_emulator import Emulator, EmulatorConfig, SyntheticSpec, synthetic_archive
from xnatfs.materialize import zipsplit
from xnatfs.materialize.zipsplit import MAX_PARTS, Part, split
from xnatfs.reader import zipstream

DICOMS, SIZE = 60, 2000
SPEC = SyntheticSpec(projects=1, subjects=1, sessions=1, scans=2, dicoms=DICOMS,
                     dicom_size=SIZE, niftis=0, session_resources=0, subject_resources=0,
                     project_resources=0, assessors=0, seed=5)
USERS = {"alice": "secret"}
RESOURCE = DICOMS * SIZE
FRAMING = 256  # a zip's bytes per entry beside the file's: headers, descriptor, directory


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
    monkeypatch.setattr(zipsplit, "PART_MIN_BYTES", 4096)  # parts of these small scans
    monkeypatch.setattr(zipstream, "NEAR", 0.0)  # loopback as if over a WAN: split
    yield server
    server.config = EmulatorConfig()


def zips(emu: Emulator) -> list:
    return [r for r in emu.log.records() if r.kind == "zip"]


def gets(emu: Emulator) -> list:
    return [r for r in emu.log.records() if r.kind == "file"]


def test_a_big_resource_comes_as_pattern_zips_and_every_file_once(emu, capsys, tmp_path):
    # names 0001..0060: parts 000*, 001*, ..., 005*; 0060 is its part's prefix, so a GET
    assert materialize(capsys, emu, tmp_path)["downloaded"] == SPEC.scans * DICOMS
    parts = zips(emu)
    assert all(z.status == 200 and re.search(r"/files/00\d\*$", z.path) for z in parts)
    assert len(parts) == SPEC.scans * 6
    assert len(gets(emu)) == SPEC.scans
    names = [f"{i + 1:04d}.dcm" for i in range(DICOMS)]
    chosen = [n for z in parts for n in names if re.fullmatch(z.path.rsplit("/", 1)[1][:-1]
                                                              + ".*", n)]
    assert sorted(chosen) == sorted(names[:-1] * SPEC.scans)  # no file twice
    sent = sum(r.bytes_sent for r in parts + gets(emu))
    assert sent <= SPEC.scans * (RESOURCE + DICOMS * FRAMING)
    assert_exact(emu, tmp_path)


def test_a_near_server_gets_one_zip_per_resource(emu, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(zipstream, "NEAR", float("inf"))  # every exchange counts as near
    assert materialize(capsys, emu, tmp_path)["downloaded"] == SPEC.scans * DICOMS
    assert [z.path.endswith("/files") for z in zips(emu)] == [True] * SPEC.scans
    assert gets(emu) == []
    assert_exact(emu, tmp_path)


def test_the_split_follows_the_quickest_exchange():
    assert zipsplit.parts_for(0.001, 8) == 1  # loopback: the CPU is the limit
    assert zipsplit.parts_for(0.020, 8) == zipsplit.ZIP_PARTS  # the WAN profile
    assert zipsplit.parts_for(0.020, 2) == 2  # never more than the run's connections
    assert zipsplit.parts_for(float("inf"), 8) == zipsplit.ZIP_PARTS  # nothing known yet


@pytest.mark.parametrize("broken", ["patterns", "whole"])
def test_a_server_that_zips_no_patterns_costs_one_part_and_one_line(emu, capsys, tmp_path,
                                                                     caplog, broken):
    emu.config.broken_zips = broken  # 404 for a pattern, or the whole resource for it
    with caplog.at_level(logging.WARNING):
        materialize(capsys, emu, tmp_path)
    lines = [r for r in caplog.records if "zips of file patterns cannot be used" in r.message]
    assert len(lines) == 1
    assert_exact(emu, tmp_path)
    whole = [z for z in zips(emu) if z.path.endswith("/files")]
    asked = [r for r in emu.log.records() if r.path.endswith("*")]
    assert len(whole) == (SPEC.scans if broken == "patterns" else SPEC.scans - 1)
    assert len(asked) == 1  # the first part found out, for the whole run
    sent = sum(r.bytes_sent for r in zips(emu) + gets(emu))
    assert sent <= SPEC.scans * (RESOURCE + DICOMS * FRAMING) + \
        (RESOURCE + DICOMS * FRAMING if broken == "whole" else 0)


def test_a_cut_part_keeps_what_it_verified_and_its_pattern_comes_again(emu, capsys,
                                                                       tmp_path):
    emu.config = EmulatorConfig(zip_truncate_rate=0.3, seed=4)
    assert materialize(capsys, emu, tmp_path)["failed"] == 0
    assert_exact(emu, tmp_path)
    cut = [z for z in zips(emu) if z.fault == "truncate"]
    assert cut and all(z.path.endswith("*") for z in zips(emu))
    again = [z for z in zips(emu) if z.fault is None and z.path in {c.path for c in cut}]
    assert again  # the same pattern, for what it had not brought
    sent = sum(r.bytes_sent for r in zips(emu) + gets(emu))
    assert sent < 2 * SPEC.scans * RESOURCE


# -- the split itself, without a server ----------------------------------------------------

NAMES = st.text(alphabet="01a._-/+ x", min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(listed=st.sets(NAMES, min_size=1, max_size=120), share=st.floats(0.1, 1.0),
       parts=st.integers(2, 6))
def test_parts_select_exactly_what_xnat_would_send_and_no_file_twice(listed, share, parts):
    names = sorted(listed)
    todo = {n: 1 << 20 for n in names[:max(1, int(len(names) * share))]}
    cut = split(names, todo, parts)
    if cut is None:
        return
    assert 2 <= len(cut) <= MAX_PARTS
    seen: set[str] = set()
    for part in cut:
        assert isinstance(part, Part) and part.pattern.endswith("*")
        prefix = part.pattern[:-1]
        assert set(prefix) <= set(zipsplit._SAFE)
        # the server's rule: its last * made .*, a Java regex the entry's URI matches whole
        assert part.sends == {n for n in names if re.fullmatch(prefix + ".*", n)}
        assert not part.sends & seen
        seen |= part.sends
    assert set(todo) <= seen  # every wanted file comes in some part


def test_a_scan_of_numbered_files_splits_near_evenly():
    names = [f"{i + 1:04d}.dcm" for i in range(6000)]
    cut = split(names, dict.fromkeys(names, 42 << 10), 4)
    assert cut is not None
    sizes = sorted(len(p.sends) for p in cut)
    assert sizes[-1] <= 1000 and sum(sizes) == 6000


def test_small_resources_and_zip_names_stay_whole():
    names = [f"{i}.dcm" for i in range(100)]
    assert split(names, dict.fromkeys(names, 1000), 4) is None  # far below PART_MIN_BYTES
    big = dict.fromkeys(names, 1 << 20)
    assert split(names, big, 4) is not None
    assert split([*names, "bundle.ZIP"], big, 4) is None
