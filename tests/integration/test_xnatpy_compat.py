"""Real xnatpy (PyPI ``xnat`` 0.8.1) against the emulator: connect, walk, download, compare."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import xnat

from tests.support.oracle import archive_file
from xnat_emulator import Archive, Emulator


def connect(emulator: Emulator, user: str, password: str) -> Any:
    return xnat.connect(emulator.url, user=user, password=password, loglevel="ERROR")


@pytest.mark.parametrize("context_path", ["", "/xnat"])
def test_walk_and_download(make_emulator: Any, small_archive: Archive, tmp_path: Path,
                           context_path: str) -> None:
    emulator = make_emulator(context_path=context_path)
    downloaded = 0
    with connect(emulator, "alice", "secret") as session:
        assert session.logged_in_user == "alice"
        assert set(session.projects.keys()) == set(small_archive.projects)
        for project in session.projects.values():
            for subject in project.subjects.values():
                for experiment in subject.experiments.values():
                    assert experiment.label in {e.label for e in small_archive.experiments.values()}
                    for scan in experiment.scans.values():
                        for resource in scan.resources.values():
                            for f in resource.files.values():
                                target = tmp_path / f"{downloaded}.bin"
                                f.download(str(target), verbose=False)  # MD5-checked by xnatpy
                                want = archive_file(small_archive, f.uri).read()
                                assert target.read_bytes() == want
                                downloaded += 1
    scan_files = [f for f in small_archive.files() if f.level == "scan"]
    assert downloaded == len(scan_files)
    assert emulator.log.count(kind="file", status=200) == downloaded
    assert emulator.log.bytes_sent(kind="file") == sum(f.size for f in scan_files)
    assert emulator.log.count(method="DELETE", path_prefix="/data/JSESSION") == 1


def test_resource_and_scan_download_dir(emulator: Emulator, small_archive: Archive,
                                        tmp_path: Path) -> None:
    session_oracle = small_archive.experiments["XNAT_E00001"]
    with connect(emulator, "alice", "secret") as session:
        experiment = session.experiments[session_oracle.id]
        scan = experiment.scans["1"]
        scan.resources["DICOM"].download_dir(str(tmp_path / "resource"), verbose=False)
        scan.download_dir(str(tmp_path / "scan"), verbose=False)
    for r in session_oracle.scans[0].resources:
        for f in r.files:
            inside = f"{session_oracle.label}/scans/1-T1w/resources/{r.label}/files/{f.relpath}"
            assert (tmp_path / "scan" / inside).read_bytes() == f.read()
            if r.label == "DICOM":
                assert (tmp_path / "resource" / inside).read_bytes() == f.read()


def test_connect_with_alias_token(emulator: Emulator) -> None:
    alias, secret = emulator.issue_token("bob")
    with connect(emulator, alias, secret) as session:
        assert session.logged_in_user == "bob"
        assert "PROJ01" in session.projects


def test_wrong_password_fails_cleanly(emulator: Emulator) -> None:
    with pytest.raises(xnat.exceptions.XNATLoginFailedError, match="Authentication failed"):
        connect(emulator, "alice", "wrong")


def test_guest_connect(make_emulator: Any) -> None:
    emulator = make_emulator(require_login=False)
    with xnat.connect(emulator.url, loglevel="ERROR") as session:
        assert session.logged_in_user == "guest"
        assert "PROJ02" in session.projects
