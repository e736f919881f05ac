"""The FUSE operations called directly, without the kernel: fake file-info objects, a real
tree, reader and cache over the emulator. What the kernel would see, checked call by call."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.oracle import Oracle
from xnat_emulator import Emulator
from xnatfs.archive import Archive
from xnatfs.mount.fs import XnatFS
from xnatfs.mount.libfuse import Slice, mfusepy
from xnatfs.xnat.client import XnatClient
from xnatfs.xnat.credentials import Credentials


@pytest.fixture
def fs(emulator: Emulator, tmp_path: Path) -> Iterator[XnatFS]:
    client = XnatClient(emulator.url, Credentials("alice", "secret"))
    client.login()
    archive = Archive.open_for(client, cache_dir=str(tmp_path / "cache"), cache_size=1 << 30)
    yield XnatFS(archive)
    archive.close()
    client.close()


def _read_all(fs: XnatFS, path: str) -> bytes:
    fi = SimpleNamespace(flags=os.O_RDONLY, fh=0, keep_cache=False)
    assert fs.open(path, fi) == 0
    handle = SimpleNamespace(fh=fi.fh)
    parts, offset = [], 0
    while True:
        piece = fs.read(None, 1 << 20, offset, handle)
        assert isinstance(piece, Slice)
        data = piece.data[piece.start:piece.end]
        if not data:
            break
        parts.append(data)
        offset += len(data)
    assert fs.getattr(None, handle)["st_size"] == offset  # fstat(): from the handle
    fs.release(None, handle)
    return b"".join(parts)


def test_every_file_reads_right_and_stats_match(fs: XnatFS, emulator: Emulator,
                                                oracle) -> None:
    want: Oracle = oracle(emulator)
    for path in want.files:
        attrs = fs.getattr("/" + path)
        assert stat.S_ISREG(attrs["st_mode"]) and attrs["st_mode"] & 0o777 == 0o444
        assert attrs["st_size"] == len(want.read(path))
        assert _read_all(fs, "/" + path) == want.read(path), path


def test_folders_list_with_their_types_and_writes_are_refused(fs: XnatFS) -> None:
    fh = fs.opendir("/")
    names = {name: attrs for name, attrs, _ in fs.readdir(None, fh)}
    fs.releasedir(None, fh)
    assert {".", ".."} < set(names)
    assert all(stat.S_ISDIR(a["st_mode"]) for a in names.values())
    project = next(n for n in names if n not in (".", ".."))
    for op in (lambda: fs.mkdir(f"/{project}/x", 0o755), lambda: fs.unlink(f"/{project}"),
               lambda: fs.open(f"/{project}/x", SimpleNamespace(flags=os.O_WRONLY))):
        with pytest.raises(mfusepy.FuseOSError) as refused:
            op()
        assert refused.value.errno == errno.EROFS
    with pytest.raises(mfusepy.FuseOSError) as missing:
        fs.getattr(f"/{project}/no such subject")
    assert missing.value.errno == errno.ENOENT


@pytest.mark.parametrize("blank", [False, True], ids=["sizes listed", "sizes unlisted"])
def test_readdir_plus_gives_what_getattr_gives_and_a_mode_where_sizes_are_unlisted(
        make_emulator: Callable[..., Emulator], tmp_path: Path, blank: bool) -> None:
    """READDIRPLUS entries are kept by the kernel in place of a LOOKUP each: their attributes
    must be the ones getattr would give. A file whose listing has no size goes without them
    (its size would cost a request per file of the folder)."""
    emulator = make_emulator(blank_file_rows=blank)
    client = XnatClient(emulator.url, Credentials("alice", "secret"))
    client.login()
    fs = XnatFS(Archive.open_for(client, cache="none"))
    full_files = unlisted = 0
    folders = {"/".join(path.split("/")[:depth]) for path, _ in fs.tree.walk("/")
               for depth in range(path.count("/") + 1)}
    for folder in sorted(folders):
        fh = fs.opendir("/" + folder)
        plain = [name for name, _, _ in fs.readdir(None, fh)]
        entries = fs.readdir_plus(None, fh)
        assert fs.readdir_plus(None, fh) is entries  # one listing per handle, by position
        fs.releasedir(None, fh)
        assert [name for name, _, _ in entries] == plain
        for name, attrs, full in entries[2:]:
            path = f"/{folder}/{name}".replace("//", "/")
            node = fs.tree.lookup(path)
            if full:
                full_files += node.file is not None
                assert attrs == fs.getattr(path)
            else:
                unlisted += 1
                assert node.file is not None and node.file.size is None
                assert stat.S_ISREG(attrs["st_mode"]) and "st_size" not in attrs
    assert (unlisted > 0, full_files > 0) == (blank, not blank)
    client.close()


def test_a_file_opened_twice_keeps_its_page_cache_unless_it_changed(
        fs: XnatFS, emulator: Emulator, oracle) -> None:
    path = "/" + sorted(oracle(emulator).files)[0]
    first = SimpleNamespace(flags=os.O_RDONLY, fh=0, keep_cache=None)
    second = SimpleNamespace(flags=os.O_RDONLY, fh=0, keep_cache=None)
    fs.open(path, first)
    fs.open(path, second)
    assert second.keep_cache  # same version, no MD5 failure since: the kernel may keep it
    fs.release(None, SimpleNamespace(fh=first.fh))
    fs.release(None, SimpleNamespace(fh=second.fh))
