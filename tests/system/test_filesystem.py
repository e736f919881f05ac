"""The ``xnat`` fsspec filesystem against the real emulator, with the real tools that use it:
pandas, nibabel, pydicom, a Dask cluster of worker processes, and a FUSE mount sharing its
cache. Costs are counted in requests and bytes from the emulator's log."""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import fsspec
import pytest
from fsspec.spec import AbstractFileSystem

from tests.support.mount import QUICK_PAUSES, Mount, needs_fuse
from xnat_emulator import Archive, Emulator, SyntheticSpec, synthetic_archive
from xnat_emulator.content import DiskContent, SyntheticContent
from xnatfs.filesystem import XnatFileSystem
from xnatfs.reader.chunkcache import CHUNK_SIZE, ChunkCache
from xnatfs.tree.model import RemoteFile
from xnatfs.xnat import retry

MiB = 1 << 20
CHUNK = 4 * MiB


def connect(emulator: Emulator, tmp_path: Path, **options: object) -> XnatFileSystem:
    """A filesystem of its own (no instance shared with another test), cache in tmp_path."""
    options = {"user": "alice", "password": "secret", "cache_dir": str(tmp_path / "cache"),
               "skip_instance_cache": True, **options}
    fs = fsspec.filesystem("xnat", url=emulator.url, **options)
    assert isinstance(fs, XnatFileSystem)
    return fs


def file_requests(emulator: Emulator) -> int:
    return emulator.log.count(method="GET", kind="file")


@pytest.fixture(scope="module")
def big_archive() -> Archive:
    """One session with a 3-chunk file (not a whole number of chunks) and a small one."""
    archive = Archive()
    subject = archive.add_subject(archive.add_project("BIG"), "S1")
    scan = archive.add_scan(archive.add_experiment(subject, "E1"), "1", "T1w")
    files = archive.add_resource(scan, "NIFTI")
    files.add_file("t1.nii", SyntheticContent(seed=5, size=2 * CHUNK + 12345, mtime=0.0))
    files.add_file("small.json", SyntheticContent(seed=6, size=700, mtime=0.0))
    return archive


BIG = "BIG/S1/E1/scans/1-T1w/resources/NIFTI/files/t1.nii"


@pytest.fixture(scope="module")
def real_archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    """Real NIfTI and DICOM files (written by nibabel and pydicom), a CSV and a JSON table,
    each image several chunks long so that reading its header alone shows."""
    import nibabel as nib
    import numpy as np
    import pandas as pd
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    where = tmp_path_factory.mktemp("real")
    rng = np.random.default_rng(0)
    nii = where / "t1.nii"
    volume = rng.integers(0, 4000, size=(96, 96, 600), dtype=np.int16)  # 10.5 MiB
    nib.save(nib.Nifti1Image(volume, np.diag([1.0, 1.0, 1.2, 1.0])), nii)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.Modality = "Test^Fsspec", "P0001", "MR"
    ds.Rows, ds.Columns = 3072, 2048
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = rng.integers(0, 4000, size=(3072, 2048), dtype=np.uint16).tobytes()  # 12 MiB
    dcm = where / "0001.dcm"
    ds.save_as(dcm, enforce_file_format=True)

    table = pd.DataFrame({"subject": ["S1", "S2", "S3"], "age": [31, 45, 27]})
    csv, js = where / "ages.csv", where / "ages.json"
    table.to_csv(csv, index=False)
    table.to_json(js, orient="records")

    archive = Archive()
    project = archive.add_project("REAL")
    scan = archive.add_scan(archive.add_experiment(archive.add_subject(project, "S1"), "E1"),
                            "1", "T1w")
    archive.add_resource(scan, "NIFTI").add_file("t1.nii", DiskContent(nii))
    archive.add_resource(scan, "DICOM").add_file("0001.dcm", DiskContent(dcm))
    tables = archive.add_resource(project, "TABLES")
    tables.add_file("ages.csv", DiskContent(csv))
    tables.add_file("ages.json", DiskContent(js))
    return archive


# -- the interface -------------------------------------------------------------------------


def test_whole_tree_through_find_and_cat_file(emulator: Emulator, tmp_path: Path,
                                              oracle: Callable) -> None:
    """The registered protocol shows the tree the mount shows, listed at the mount's cost
    (the same listings as a Tree walk, no request per file), and every byte is right."""
    assert fsspec.get_filesystem_class("xnat") is XnatFileSystem
    expected = oracle(emulator)
    listings = emulator.log.count(kind="listing")
    emulator.log.clear()

    fs = connect(emulator, tmp_path)
    found = fs.find("/")
    assert found == sorted(expected.files)
    assert emulator.log.count(kind="listing") == listings
    assert emulator.log.count(method="HEAD") == file_requests(emulator) == 0

    for path in found:
        assert fs.cat_file("xnat://" + path) == expected.read(path)
    assert file_requests(emulator) == len(found)
    assert fs.du("PROJ01") == sum(expected.files[p].size for p in found
                                  if p.startswith("PROJ01/"))


def test_ls_and_info_give_xnat_identity(emulator: Emulator, tmp_path: Path) -> None:
    fs = connect(emulator, tmp_path)
    folder = "/PROJ01/S001/S001_MR1/scans/1-T1w/resources/DICOM/files/"
    entries = fs.ls(folder, detail=True)
    assert [e["name"] for e in entries] == fs.ls(folder, detail=False)
    first = entries[0]
    assert first["name"] == folder.strip("/") + "/0001.dcm"
    assert first["type"] == "file" and first["size"] == 2048
    assert {k: first[k] for k in ("project", "subject", "session", "scan_id", "scan_type",
                                  "resource")} == {
        "project": "PROJ01", "subject": "S001", "session": "S001_MR1", "scan_id": "1",
        "scan_type": "T1w", "resource": "DICOM"}
    assert len(first["md5"]) == 32 and first["session_id"].startswith("XNAT_E")
    assert fs.info(first["name"]) == first
    assert fs.info("PROJ01/S001")["type"] == "directory"
    assert fs.ls(first["name"]) == [first]  # ls of a file: the file itself
    assert fs.isfile(first["name"]) and fs.isdir(folder) and not fs.exists(folder + "nope")
    assert fs.modified(first["name"]).timestamp() == first["mtime"]
    assert fs.glob("PROJ01/*/S001_MR1/scans/*/resources/DICOM/files/000[12].dcm") == [
        "PROJ01/S001/S001_MR1/scans/1-T1w/resources/DICOM/files/0001.dcm",
        "PROJ01/S001/S001_MR1/scans/1-T1w/resources/DICOM/files/0002.dcm",
        "PROJ01/S001/S001_MR1/scans/2-T2w/resources/DICOM/files/0001.dcm",
        "PROJ01/S001/S001_MR1/scans/2-T2w/resources/DICOM/files/0002.dcm"]
    walked = {root: sorted(files) for root, _, files in fs.walk("PROJ01/S001/S001_MR1/scans")}
    assert walked[folder.strip("/")] == ["0001.dcm", "0002.dcm", "0003.dcm"]
    with pytest.raises(FileNotFoundError):
        fs.info("PROJ01/NOBODY")
    with pytest.raises(IsADirectoryError):
        fs.cat_file("PROJ01")


def test_ranges_and_seeks_are_exact(make_emulator: Callable[..., Emulator], big_archive: Archive,
                                    tmp_path: Path) -> None:
    emulator = make_emulator(big_archive)
    fs = connect(emulator, tmp_path)
    data = next(f for f in big_archive.files() if f.name == "t1.nii").read()
    size = len(data)
    assert fs.size(BIG) == size
    for start, end in [(0, 10), (CHUNK - 3, CHUNK + 5), (CHUNK, 2 * CHUNK), (5, None),
                       (None, 7), (-100, None), (-100, -50), (size - 1, size + 10),
                       (size, None), (10, 5), (0, size)]:
        assert fs.cat_file(BIG, start, end) == data[start:end], (start, end)
    assert fs.cat_ranges([BIG, BIG], [1, CHUNK * 2], [4, CHUNK * 2 + 9]) == [
        data[1:4], data[CHUNK * 2:CHUNK * 2 + 9]]

    with fs.open(BIG, "rb") as f:
        assert f.seekable() and f.size == size
        assert f.read(100) == data[:100]
        f.seek(CHUNK - 10)
        assert f.read(20) == data[CHUNK - 10:CHUNK + 10]
        f.seek(-30, os.SEEK_END)
        assert f.read() == data[-30:]
        assert f.read(5) == b""
        f.seek(-size + 50, os.SEEK_CUR)
        assert f.tell() == 50
        assert f.read() == data[50:]
    requests = file_requests(emulator)
    assert fs.cat_file(BIG) == data  # everything is in the cache by now
    assert file_requests(emulator) == requests
    # Reopening after pickling continues at the same place (Dask ships open files).
    with fs.open(BIG) as f:
        f.seek(1234)
        again = pickle.loads(pickle.dumps(f))
        assert again.read(10) == data[1234:1244]
        again.close()


def test_writes_are_refused(emulator: Emulator, tmp_path: Path) -> None:
    fs = connect(emulator, tmp_path)
    target = "PROJ01/resources/new.txt"
    (tmp_path / "local.txt").write_text("x")
    attempts: list[Callable[[], object]] = [
        lambda: fs.open(target, "wb"), lambda: fs.pipe(target, b"x"),
        lambda: fs.put(str(tmp_path / "local.txt"), target), lambda: fs.rm("PROJ01/S001"),
        lambda: fs.mkdir("PROJ01/new"), lambda: fs.touch(target),
        lambda: fs.mv("PROJ01/S001", "PROJ01/S009"), lambda: fs.write_text(target, "x"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS and "read-only" in str(info.value)


def test_errors_are_real_failures_and_name_no_secret(emulator: Emulator, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused credentials and an unreachable server raise; they are never 'not found'."""
    monkeypatch.setattr(retry, "PAUSES", QUICK_PAUSES)  # the same tries of the dead server
    refused = connect(emulator, tmp_path, password="wrong-Pa55")
    with pytest.raises(PermissionError, match="login refused") as info:
        refused.ls("")
    assert "wrong-Pa55" not in f"{info.value} {info.value.__cause__} {refused!r} {refused}"
    gone = fsspec.filesystem("xnat", url="http://127.0.0.1:9", cache_dir=str(tmp_path / "c"),
                             skip_instance_cache=True)
    with pytest.raises(OSError, match="cannot reach"):
        gone.exists("PROJ01")
    # Credentials as the command line finds them: XNAT_URL, XNAT_USER/XNAT_PASS.
    monkeypatch.setenv("XNAT_URL", emulator.url)
    monkeypatch.setenv("XNAT_USER", "alice")
    monkeypatch.setenv("XNAT_PASS", "secret")
    fs = fsspec.filesystem("xnat", cache_dir=str(tmp_path / "c"), skip_instance_cache=True)
    assert fs.ls("", detail=False) == ["PROJ01", "PROJ02"]
    # fsspec makes an instance per thread; the process still logs in once.
    other = threading.Thread(target=lambda: fsspec.filesystem(
        "xnat", cache_dir=str(tmp_path / "c")).ls("PROJ01"))
    other.start()
    other.join()
    assert emulator.log.count(method="POST", path_prefix="/data/JSESSION", status=200) == 1
    assert b"secret" not in pickle.dumps(fs)  # found again in each process, never shipped


def test_get_is_materialize(emulator: Emulator, tmp_path: Path) -> None:
    """Same destinations as fsspec's own get (which copies file by file), verified files,
    and a second run downloads nothing."""
    fs = connect(emulator, tmp_path)
    session = "PROJ01/S001/S001_MR1"
    cases = [(session, "a", True), (session, "b/", True), (session + "/", "c/", True),
             (session + "/scans/*/resources/DICOM/files/000[12].dcm", "d/", False),
             (session + "/scans/1-T1w/resources/DICOM/files/0001.dcm", "e.dcm", False),
             (session + "/scans/1-T1w/resources/DICOM/files/0001.dcm", "f/", False),
             ([f"{session}/scans/1-T1w/resources/DICOM/files/000{i}.dcm" for i in (1, 2)],
              "g/", False)]
    for rpath, lpath, recursive in cases:
        ours, theirs = tmp_path / "ours", tmp_path / "theirs"
        for root in (ours, theirs):
            root.mkdir(exist_ok=True)
            if isinstance(rpath, str) and lpath[0] == "b":
                (root / "b").mkdir(exist_ok=True)  # an existing folder takes the copy inside
        fs.get(rpath, str(ours / lpath), recursive=recursive)
        AbstractFileSystem.get(fs, rpath, str(theirs / lpath), recursive=recursive)
        assert tree_bytes(ours) == tree_bytes(theirs), (rpath, lpath)
    assert (tmp_path / "ours/a/scans/1-T1w/resources/DICOM/files/0001.dcm").stat().st_size \
        == 2048

    before = file_requests(emulator)  # "a" exists now: the same copy is session/ into a
    fs.get(session + "/", str(tmp_path / "ours/a"), recursive=True)
    assert file_requests(emulator) == before
    assert not list((tmp_path / "ours").rglob("*.xnatfs-part"))
    with pytest.raises(ValueError, match="one local path"):  # never two files in one place
        fs.get([f"{session}/scans/{scan}/resources/DICOM/files/0001.dcm"
                for scan in ("1-T1w", "2-T2w")], str(tmp_path / "h"))


def tree_bytes(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


# -- real tools ------------------------------------------------------------------------------


def test_nibabel_and_pydicom_read_headers_only(make_emulator: Callable[..., Emulator],
                                               real_archive: Archive, tmp_path: Path) -> None:
    import nibabel as nib
    import pydicom

    emulator = make_emulator(real_archive)
    fs = connect(emulator, tmp_path)
    scan = "REAL/S1/E1/scans/1-T1w/resources"

    nii = f"{scan}/NIFTI/files/t1.nii"
    with fs.open(nii) as f:
        img = nib.Nifti1Image.from_stream(f)
        assert img.shape == (96, 96, 600) and img.header.get_zooms() == (1.0, 1.0, 1.2)
    dcm = f"{scan}/DICOM/files/0001.dcm"
    with fs.open(dcm) as f:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
    assert str(ds.PatientName) == "Test^Fsspec" and (ds.Rows, ds.Columns) == (3072, 2048)
    # The header's chunk, and at most one chunk of read-ahead (the window opens when a read
    # continues the one before), whenever a fetch still under way completes.
    for path in (nii, dcm):
        fetched = emulator.log.bytes_sent_for(fs.info(path)["uri"])
        assert CHUNK <= fetched <= 2 * CHUNK < fs.size(path)


def test_pandas_reads_csv_and_json(make_emulator: Callable[..., Emulator], real_archive: Archive,
                                   tmp_path: Path) -> None:
    import pandas as pd

    emulator = make_emulator(real_archive)
    options = {"url": emulator.url, "user": "alice", "password": "secret",
               "cache_dir": str(tmp_path / "cache")}
    csv = pd.read_csv("xnat://REAL/resources/TABLES/files/ages.csv", storage_options=options)
    js = pd.read_json("xnat://REAL/resources/TABLES/files/ages.json", storage_options=options)
    assert list(csv["age"]) == list(js["age"]) == [31, 45, 27]
    with fsspec.open("xnat:///REAL/resources/TABLES/files/ages.csv", "rt", **options) as f:
        assert f.readline().strip() == "subject,age"


def test_dask_cluster_hashes_a_project(make_emulator: Callable[..., Emulator], tmp_path: Path,
                                       oracle: Callable) -> None:
    """Worker processes get the filesystem pickled (options only); each logs in once."""
    from distributed import Client, LocalCluster

    archive = synthetic_archive(SyntheticSpec(projects=1, subjects=2, sessions=1, scans=2,
                                              dicoms=4, dicom_size=4096, niftis=1,
                                              nifti_size=5 * MiB))
    emulator = make_emulator(archive)
    fs = connect(emulator, tmp_path)
    paths = fs.find("PROJ01")
    expected = oracle(emulator)
    want = {p: expected.files[p].md5 for p in paths}
    logins = emulator.log.count(method="POST", path_prefix="/data/JSESSION", status=200)
    pickled = pickle.dumps(fs)
    assert b"socket" not in pickled and b"Thread" not in pickled and len(pickled) < 1000

    def md5(path: str) -> tuple[str, str, int]:
        return path, hashlib.md5(fs.cat_file(path)).hexdigest(), os.getpid()

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, local_directory=str(tmp_path / "dask")) as cluster, \
            Client(cluster) as client:
        results = client.gather(client.map(md5, paths))
    assert {p: h for p, h, _ in results} == want
    workers = {pid for _, _, pid in results} - {os.getpid()}
    assert 1 <= len(workers) <= 2 and {pid for _, _, pid in results} == workers
    assert emulator.log.count(method="POST", path_prefix="/data/JSESSION", status=200) == \
        logins + len(workers)


# -- without FUSE, and with it ---------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare for a private mount namespace")
def test_works_where_fuse_is_missing(emulator: Emulator, tmp_path: Path,
                                     oracle: Callable) -> None:
    path = next(p for p in oracle(emulator).files if p.endswith(".nii.gz"))
    script = textwrap.dedent(f"""
        import hashlib, os, sys
        assert not os.path.exists("/dev/fuse"), "FUSE still visible"
        import fsspec
        fs = fsspec.filesystem("xnat", url={emulator.url!r}, user="alice",
                               password="secret", cache_dir={str(tmp_path / 'cache')!r})
        print(hashlib.md5(fs.cat_file({path!r})).hexdigest())
        assert "mfusepy" not in sys.modules
    """)
    # A private mount namespace with an empty /dev: no /dev/fuse, as in a locked-down
    # container; the emulator stays reachable (same network namespace).
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs none /dev && exec "$0" -c "$1"', sys.executable, script],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == oracle(emulator).files[path].md5


@needs_fuse
def test_one_cache_with_the_mount(make_emulator: Callable[..., Emulator], big_archive: Archive,
                                  tmp_path: Path, mount: Callable[..., Mount]) -> None:
    """Bytes read through fsspec are not fetched again by a mount on the same cache, and
    the other way round."""
    emulator = make_emulator(big_archive)
    cache = str(tmp_path / "shared")
    fs = connect(emulator, tmp_path, cache_dir=cache)
    small = BIG.replace("t1.nii", "small.json")
    shared = ChunkCache(cache)

    def stored(path: str) -> None:
        """Chunks are written behind their readers: give the writer a moment to store them."""
        info = fs.info(path)
        remote = RemoteFile(info["uri"], info["size"], info.get("md5"))
        deadline = time.monotonic() + 10
        while not all(shared.contains(remote, i) for i in range(-(-remote.size // CHUNK_SIZE))) \
                and time.monotonic() < deadline:
            time.sleep(0.02)

    data = fs.cat_file(BIG)
    stored(BIG)
    m = mount(emulator, cache_dir=cache)
    before = file_requests(emulator)
    assert (m / BIG).read_bytes() == data
    assert file_requests(emulator) == before

    on_mount = (m / small).read_bytes()
    stored(small)
    before = file_requests(emulator)
    assert fs.cat_file(small) == on_mount
    assert file_requests(emulator) == before


def test_ukey_and_checksum_are_the_contents_md5_not_its_name(
        make_emulator: Callable[..., Emulator], tmp_path: Path) -> None:
    archive = Archive()
    subject = archive.add_subject(archive.add_project("K"), "S1")
    files = archive.add_resource(archive.add_scan(archive.add_experiment(subject, "E1"), "1",
                                                  "T1w"), "NIFTI")
    for name, seed in (("a.nii", 1), ("copy_of_a.nii", 1), ("b.nii", 2)):
        files.add_file(name, SyntheticContent(seed=seed, size=3000, mtime=0.0))
    emulator = make_emulator(archive)
    fs = connect(emulator, tmp_path)
    folder = "K/S1/E1/scans/1-T1w/resources/NIFTI/files"
    a, copy, b = (f"{folder}/{n}" for n in ("a.nii", "copy_of_a.nii", "b.nii"))
    md5 = hashlib.md5(files.files[0].read()).hexdigest()
    assert fs.ukey(a) == fs.ukey(copy) == md5 == fs.info(a)["md5"]
    assert fs.checksum(a) == fs.checksum(copy) == int(md5[:16], 16)
    assert fs.ukey(b) != fs.ukey(a) and fs.checksum(b) != fs.checksum(a)
    files.replace_file("a.nii", SyntheticContent(seed=3, size=3000, mtime=3600.0))
    fresh = connect(emulator, tmp_path / "later")  # listings of its own, listed now
    assert fresh.ukey(a) == hashlib.md5(files.files[0].read()).hexdigest() != md5
