"""Single-file downloads (headers, Range, HEAD, path decoding, 404 bodies) and zips."""

from __future__ import annotations

import hashlib
import http.client
import io
import zipfile
from email.utils import formatdate
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from xnat_emulator import Archive, Emulator, File
from xnat_emulator.content import SyntheticContent


def scan_file(archive: Archive, name: str) -> File:
    return next(f for f in archive.files() if f.name == name and f.level == "scan")


@pytest.fixture
def api(emulator: Emulator, login: Any) -> Any:
    return login(emulator)


def test_download_headers(api: Any, small_archive: Archive) -> None:
    f = scan_file(small_archive, "0001.dcm")
    response = api.get(f.uri)
    assert response.status_code == 200
    assert response.content == f.read()
    assert response.content[128:132] == b"DICM"
    headers = response.headers
    assert headers["Content-Length"] == str(f.size)
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Disposition"] == 'attachment; filename="0001.dcm";'
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["Cache-Control"] == "must-revalidate"
    assert "Last-Modified" in headers and "ETag" not in headers
    pdf = next(f for f in small_archive.files() if f.name.endswith(".pdf"))
    assert api.head(pdf.uri).headers["Content-Type"] == "application/pdf"
    later = api.get(f.uri, headers={"If-Modified-Since": headers["Last-Modified"]})
    assert later.status_code == 304 and later.content == b""


def test_head_and_ranges(api: Any, small_archive: Archive, emulator: Emulator) -> None:
    f = next(f for f in small_archive.files() if f.name.endswith(".nii.gz"))
    head = api.head(f.uri)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(f.size)
    for spec, start, end in (("10-99", 10, 99), ("100-", 100, f.size - 1),
                             ("-50", f.size - 50, f.size - 1)):
        part = api.get(f.uri, headers={"Range": f"bytes={spec}"})
        assert part.status_code == 206
        assert part.headers["Content-Range"] == f"bytes {start}-{end}/{f.size}"
        assert part.content == f.read(start, end - start + 1)
    assert api.get(f.uri, headers={"Range": "bytes=0-1,5-6"}).status_code == 501
    assert emulator.log.count(method="GET", path_prefix="/data/experiments", status=206) == 3
    ranged_head = api.head(f.uri, headers={"Range": "bytes=0-9"})
    assert ranged_head.status_code == 206 and ranged_head.headers["Content-Length"] == "10"


def test_range_past_the_end_is_not_checked(emulator: Emulator, small_archive: Archive) -> None:
    f = scan_file(small_archive, "0001.dcm")
    target = urlsplit(emulator.url + f.uri)
    connection = http.client.HTTPConnection(target.hostname, target.port, timeout=5)
    auth = "Basic YWxpY2U6c2VjcmV0"  # alice:secret
    connection.request("GET", target.path, headers={"Range": f"bytes={f.size - 4}-{f.size + 99}",
                                                     "Authorization": auth})
    response = connection.getresponse()
    assert response.status == 206
    assert response.getheader("Content-Length") == "104"  # promised; only 4 bytes exist
    with pytest.raises(http.client.IncompleteRead) as short:
        response.read()
    assert short.value.partial == f.read(f.size - 4)


def test_range_validation_switch_and_disabled_ranges(make_emulator: Any, login: Any,
                                                     small_archive: Archive) -> None:
    f = scan_file(small_archive, "0001.dcm")
    strict = login(make_emulator(validate_ranges=True))
    response = strict.get(f.uri, headers={"Range": f"bytes={f.size}-"})
    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{f.size}"
    plain = login(make_emulator(range_enabled=False))
    response = plain.get(f.uri, headers={"Range": "bytes=0-9"})
    assert response.status_code == 200 and response.content == f.read()


def test_range_on_streams(api: Any, small_archive: Archive) -> None:
    listing = "/data/experiments/XNAT_E00001/scans"
    assert api.get(listing, headers={"Range": "bytes=5-"}).status_code == 500
    assert api.get(listing, headers={"Range": "bytes=0-5"}).status_code == 200


def test_path_decoding_rule(hostile_emulator: Emulator, login: Any,
                            hostile_archive: Archive) -> None:
    api = login(hostile_emulator)
    for f in hostile_archive.files():
        if f.missing or f.resource.label != "NIFTI":
            continue
        base = f.uri[: -len(f.relpath)]
        good = api.get(base + quote(f.relpath, safe="/"))
        assert good.status_code == 200, f.relpath
        assert good.content == f.read()
    odd = next(f for f in hostile_archive.files() if f.name == "a+b (1).txt")
    base = odd.uri[: -len(odd.relpath)]
    # a raw "+" next to "%20" is decoded into a space: the classic xnatpy/pyxnat failure
    assert api.get(base + "a+b%20(1).txt").status_code == 404
    assert api.get(base + "a%2Bb%20%281%29.txt").status_code == 200
    plus_only = next(f for f in hostile_archive.files() if f.name == "a+b.txt")
    assert api.get(plus_only.uri).status_code == 200  # no %20/%2B: compared raw first


def test_missing_files_and_404_bodies(hostile_emulator: Emulator, login: Any,
                                      hostile_archive: Archive) -> None:
    api = login(hostile_emulator)
    missing = next(f for f in hostile_archive.files() if f.missing)
    listed = api.get(missing.uri.split("/files/")[0] + "/files").json()["ResultSet"]["Result"]
    assert missing.uri in {r["URI"] for r in listed}
    single = api.get(missing.uri)
    assert single.status_code == 404 and single.content == b""
    session_id = missing.uri.split("/")[3]
    multi = api.get(f"/data/experiments/{session_id}/scans/ALL/files/missing.dcm")
    assert multi.status_code == 404 and "<h3>Unable to find file.</h3>" in multi.text
    no_digest = next(r for r in listed if r["Name"] == "no_digest.dcm")
    no_size = next(r for r in listed if r["Name"] == "no_size.dcm")
    assert no_digest["digest"] == "" and no_size["Size"] == ""
    assert api.get(no_size["URI"]).headers["Content-Length"] == "1024"


def test_scan_zip(api: Any, small_archive: Archive, emulator: Emulator) -> None:
    session = small_archive.experiments["XNAT_E00001"]
    response = api.get(f"/data/experiments/{session.id}/scans/ALL/files?format=zip")
    assert response.status_code == 200
    assert response.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in response.headers
    assert response.headers["Content-Disposition"] == f'attachment; filename="{session.label}.zip";'
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    expected = {f"{session.label}/scans/{s.id}-{s.type}/resources/{r.label}/files/{f.relpath}":
                f for s in session.scans for r in s.resources for f in r.files}
    assert set(archive.namelist()) == set(expected)
    for name, f in expected.items():
        assert archive.read(name) == f.read()
        assert archive.getinfo(name).compress_type == zipfile.ZIP_STORED
    sent = emulator.log.bytes_sent(kind="zip")
    assert sent == len(response.content)


@pytest.mark.parametrize(("structure", "name"), [
    ("simplified", "S001_MR1/scans/1/DICOM/0001.dcm"),
    ("improved", "scans/1_T1w/DICOM/0001.dcm"),
])
def test_zip_structures(api: Any, structure: str, name: str) -> None:
    response = api.get("/data/experiments/XNAT_E00001/scans/1/resources/DICOM/files",
                       params={"format": "zip", "structure": structure})
    assert name in zipfile.ZipFile(io.BytesIO(response.content)).namelist()


def test_other_zips(api: Any, small_archive: Archive) -> None:
    session = small_archive.experiments["XNAT_E00001"]
    everything = api.get(f"/data/experiments/{session.id}/files?all=true&format=zip")
    names = zipfile.ZipFile(io.BytesIO(everything.content)).namelist()
    assert f"{session.label}/resources/BIDS/files/anat/sub-01_T1w.json" in names
    assert any("/assessors/" in n for n in names)
    project = api.get("/data/projects/PROJ01/resources/PROTOCOL/files?format=zip")
    assert project.headers["Content-Disposition"] == 'attachment; filename="PROJ01.zip";'
    assert zipfile.ZipFile(io.BytesIO(project.content)).namelist()[0] == \
        "PROJ01/resources/PROTOCOL/files/protocol_1.txt"
    empty = api.get(f"/data/experiments/{session.id}/scans/1/resources/NOPE/files?format=zip")
    assert empty.status_code == 404


def test_zips_of_file_patterns_follow_filelist(api: Any, small_archive: Archive) -> None:
    # files/{path}?format=zip: one file (under its base name), a folder, or a regex pattern
    base = "/data/experiments/XNAT_E00001/scans/1/resources/DICOM/files"
    listed = sorted(f.relpath for f in small_archive.experiments["XNAT_E00001"].scans[0]
                    .resources[0].files)
    some = api.get(base + "/000*", params={"format": "zip"})
    names = zipfile.ZipFile(io.BytesIO(some.content)).namelist()
    assert sorted(names) == [n for n in listed if n.startswith("000")] and len(names) > 1
    assert names != sorted(names)  # HashMap order, not the listing's
    dotted = api.get(base + "/00.1*", params={"format": "zip"})  # "." is any character
    assert sorted(zipfile.ZipFile(io.BytesIO(dotted.content)).namelist()) == \
        [n for n in listed if n[:2] == "00" and n[3] == "1"]
    one = api.get(base + "/0001.dcm", params={"format": "zip"})
    assert zipfile.ZipFile(io.BytesIO(one.content)).namelist() == ["0001.dcm"]
    assert api.get(base + "/9*", params={"format": "zip"}).status_code == 404


def test_catalog(api: Any) -> None:
    response = api.get("/data/experiments/XNAT_E00001/scans/1/resources/DICOM")
    assert response.status_code == 200 and "<cat:entry URI=\"0001.dcm\"" in response.text


def test_conditional_gets_follow_last_modified_and_a_replaced_file_gets_a_new_one(
        make_emulator: Any, login: Any) -> None:
    """Restlet's ``Conditions`` on file GETs, to the second: If-Unmodified-Since gives 412 once
    the file's mtime is later than the date (also under a Range: the precondition comes
    first), If-Modified-Since gives 304 while it is not; an unreadable date is ignored. A
    client pins an open file to the version it opened with these, so a file replaced on the
    server must show a new Last-Modified, and its listing the new size and digest."""
    archive = Archive()
    subject = archive.add_subject(archive.add_project("COND"), "S1")
    scan = archive.add_scan(archive.add_experiment(subject, "E1"), "1", "T1w")
    resource = archive.add_resource(scan, "NIFTI")
    f = resource.add_file("t1.nii", SyntheticContent(seed=1, size=5000, mtime=1.7e9 + 0.6))
    api = login(make_emulator(archive))
    first = api.get(f.uri)
    stamp = first.headers["Last-Modified"]
    assert stamp == formatdate(1.7e9, usegmt=True)
    before, later = formatdate(1.7e9 - 1, usegmt=True), formatdate(1.7e9 + 50, usegmt=True)

    def status(method: str = "GET", **headers: str) -> int:
        return api.request(method, f.uri, headers={k.replace("_", "-"): v
                                                   for k, v in headers.items()}).status_code

    assert status(If_Unmodified_Since=stamp) == 200
    assert status(If_Unmodified_Since=stamp, Range="bytes=10-19") == 206
    assert status(If_Unmodified_Since=before) == 412
    assert status("HEAD", If_Unmodified_Since=before) == 412
    assert status(If_Unmodified_Since=before, Range="bytes=10-19") == 412
    assert status(If_Unmodified_Since="not a date") == 200
    assert status(If_Modified_Since=stamp) == 304
    assert status(If_Modified_Since=before) == 200

    resource.replace_file("t1.nii", SyntheticContent(seed=2, size=6000, mtime=0.0),
                          mtime=1.7e9 + 100)
    second = api.get(f.uri)
    assert second.content == f.read() != first.content and len(second.content) == 6000
    assert second.headers["Last-Modified"] == formatdate(1.7e9 + 100, usegmt=True)
    assert status(If_Unmodified_Since=stamp, Range="bytes=10-19") == 412
    assert status(If_Unmodified_Since=later) == 412
    assert status(If_Modified_Since=stamp) == 200
    rows = api.get(f"{resource.base_uri()}/files", params={"format": "json"}).json()
    (row,) = rows["ResultSet"]["Result"]
    assert (row["Size"], row["digest"]) == ("6000", hashlib.md5(second.content).hexdigest())
