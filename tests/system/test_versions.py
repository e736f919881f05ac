"""Bytes of one file version, or EIO: never bytes that no version of the file ever held.

Regression tests for the two ways issue 19 found the reader serving wrong bytes without an
error:

1. **A cache smaller than the file, a remount, shifted 206 bodies.** The file is read once
   whole, so the chunk cache keeps its last chunks; the mount is restarted over the same cache
   and every 206 body is then one byte off. Whatever the read order, every read must give the
   file's true bytes at its offset or fail with EIO. What the reader knew about which chunks
   it had verified must survive the remount, or chunks fetched again are never checked.
2. **A file replaced on the server while a handle is open.** The handle read the start of the
   old file; the server then holds another one under the same name (same size or not, a new
   Last-Modified). The rest read through that handle must be the old file's bytes or EIO, not
   the new file's bytes spliced onto the old start; a new open gets the new file whole. This
   holds for the mount and for the fsspec filesystem (where the error is an OSError).

The true bytes come from the emulator's archive (``tests.support.oracle``), never through
xnatfs. Each case is its own test with its own emulator, archive and cache, so the cases are
independent; every wait is a bounded poll on something the test can observe (the emulator's
request log, a listing), never a sleep.
"""

from __future__ import annotations

import errno
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import pytest

from tests.support.mount import Mount, needs_fuse
from tests.support.oracle import Oracle
from xnat_emulator import Archive, Emulator
from xnat_emulator.archive import Resource
from xnat_emulator.content import SyntheticContent
from xnatfs.reader.chunkcache import CHUNK_SIZE

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20
READ = MiB  # one read(2): what cp and dd ask of a FUSE file system at a time
MTIME = 1.7e9
"""The archive's files' mtime; a replacement is stamped an hour later (a new Last-Modified)."""
FOLDER = "V/S1/E1/scans/1-T1w/resources/NIFTI/files"
POLL = 15.0  # seconds a poll for an observable condition may take at most
TTL = 0.5  # seconds listings are kept: the new file shows once they expire, and is polled for


def archive_of(**sizes: int) -> tuple[Archive, Resource]:
    """One scan resource holding a file of each size (name -> size), seeded by its name."""
    archive = Archive()
    subject = archive.add_subject(archive.add_project("V"), "S1")
    scan = archive.add_scan(archive.add_experiment(subject, "E1"), "1", "T1w")
    resource = archive.add_resource(scan, "NIFTI")
    for seed, (name, size) in enumerate(sorted(sizes.items()), start=1):
        resource.add_file(name, SyntheticContent(seed=seed, size=size, mtime=MTIME))
    return archive, resource


def poll(condition: Callable[[], bool], what: str, step: Callable[[], object] = lambda: None,
         timeout: float = POLL) -> None:
    """Run ``step`` until ``condition`` holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        step()
        if condition():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def quiet(emu: Emulator) -> bool:
    """Whether every file GET the emulator received so far has been answered."""
    return all(r.done for r in emu.log.select(kind="file"))


@dataclass
class Reads:
    """What each read of one file returned, judged against the bytes it must hold."""

    truth: bytes
    outcomes: list[tuple[str, int, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def judge(self, who: str, offset: int, size: int, read: Callable[[], bytes],
              errors: tuple[type[BaseException], ...] = (OSError,)) -> str:
        """'ok' for the true bytes, 'EIO' (or the failure's name) for an error, else 'WRONG'."""
        try:
            data = read()
        except errors as exc:
            number = getattr(exc, "errno", None)
            outcome = errno.errorcode.get(number, type(exc).__name__) if number else \
                type(exc).__name__
        else:
            want = self.truth[offset:offset + size]
            outcome = "ok" if data == want else "short" if data == want[:len(data)] else \
                "WRONG" if len(data) == len(want) else f"WRONG: {len(data)} bytes for {len(want)}"
        with self._lock:
            self.outcomes.append((who, offset, outcome))
        return outcome

    def wrong(self) -> list[tuple[str, int, str]]:
        """Every read that was neither right nor EIO. A short read of true bytes is allowed
        when the same handle's next read fails: the kernel splits a read(2) into pages and
        returns those it got before the page that failed."""
        bad = []
        for n, o in enumerate(self.outcomes):
            later = [x[2] for x in self.outcomes[n + 1:] if x[0] == o[0]]
            if o[2] == "short" and later[:1] == ["EIO"]:
                continue
            if o[2] not in ("ok", "EIO"):
                bad.append(o)
        return bad

    def summary(self) -> str:
        return ", ".join(f"{who}@{offset}:{outcome}" for who, offset, outcome in self.outcomes)

    def unflagged(self) -> list[tuple[str, int, str]]:
        """The reads that broke the promise a whole-file MD5 can keep, per handle: a failure
        is EIO; wrong bytes are followed by an EIO of the same handle (the MD5 that shows them
        wrong needs the whole file, so a reader may get them before it fails); and nothing
        wrong comes after a handle's first EIO. A short read of true bytes is no broken
        promise: it is how the kernel reports a read(2) whose later pages failed (EIO)."""
        bad = []
        for who in dict.fromkeys(o[0] for o in self.outcomes):
            mine = [o for o in self.outcomes if o[0] == who and o[2] != "short"]
            failed = next((n for n, o in enumerate(mine) if o[2] == "EIO"), len(mine))
            bad += [o for n, o in enumerate(mine)
                    if o[2] not in ("ok", "EIO") and (n > failed or failed == len(mine)
                                                      or not o[2].startswith("WRONG"))]
        return bad


# -- 1. a cache smaller than the file, a remount, shifted 206 bodies ---------------------------

SIZE = 6 * CHUNK_SIZE + 12345
"""Seven chunks, the last a short one; the cache below keeps about a third of them."""
CACHE_SIZE = "12M"
"""The cache's limit holds one chunk less (``chunkcache``): 8 MiB, the file's last chunks."""


def forward(size: int) -> list[int]:
    return list(range(0, size, READ))


def backward(size: int) -> list[int]:
    return forward(size)[::-1]


def tail_first(size: int) -> list[int]:
    tail = max(0, size - CHUNK_SIZE)
    return list(range(tail, size, READ)) + list(range(0, tail, READ))


def shuffled(size: int) -> list[int]:
    offsets = forward(size)
    random.Random(19).shuffle(offsets)
    return offsets


ORDERS: dict[str, tuple[Callable[[int], list[int]], ...]] = {
    "forward": (forward,),
    "backward": (backward,),
    "tail first": (tail_first,),
    "random": (shuffled,),
    "forward and backward at once": (forward, backward),
}


@pytest.fixture
def remounted(make_emulator: Callable[..., Emulator], mount: Callable[..., Mount],
              oracle: Callable[..., Oracle]) -> Iterator[tuple[Emulator, Mount, str, bytes]]:
    """The file read once whole through a mount with a small cache, then a new mount over
    that cache, and every 206 body from now on one byte off."""
    archive, _ = archive_of(**{"big.nii": SIZE})
    emu = make_emulator(archive)
    path = f"{FOLDER}/big.nii"
    truth = oracle(emu).read(path)
    first = mount(emu, "--cache-size", CACHE_SIZE, "--timeout", "2")
    assert (first / path).read_bytes() == truth
    first.stop()
    again = mount(emu, "--cache-size", CACHE_SIZE, "--timeout", "2")
    emu.log.clear()
    emu.config.shift_rate = 1.0
    yield emu, again, path, truth


@needs_fuse
@pytest.mark.fuse
@pytest.mark.parametrize("order", list(ORDERS))
def test_after_a_remount_over_a_small_cache_shifted_ranges_give_right_bytes_or_eio(
        remounted: tuple[Emulator, Mount, str, bytes], order: str) -> None:
    """In every order and for concurrent readers, a handle that reads the whole file without
    an error was given only its true bytes; one given wrong bytes ends in EIO, and no read
    fails any other way. (Not every read can be right or EIO: a chunk fetched again by Range
    can only be judged by the whole file's MD5, once the reader has been given it.)"""
    emu, m, path, truth = remounted
    reads = Reads(truth)
    barrier = threading.Barrier(len(ORDERS[order]))

    def reader(n: int, offsets: Callable[[int], list[int]]) -> None:
        fd = os.open(m / path, os.O_RDONLY)
        try:
            barrier.wait(POLL)
            for offset in offsets(SIZE):
                reads.judge(f"reader {n}", offset, READ,
                            lambda offset=offset: os.pread(fd, READ, offset))
        finally:
            os.close(fd)

    threads = [threading.Thread(target=reader, args=(n, offsets))
               for n, offsets in enumerate(ORDERS[order])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(reads.outcomes) == sum(len(o(SIZE)) for o in ORDERS[order])
    assert any(r.fault == "shift" for r in emu.log), "no shifted body was served"
    assert not reads.unflagged(), f"wrong bytes without an error: {reads.summary()}"


# -- 2. a file replaced on the server while a handle is open -----------------------------------

FILES = {"multi-chunk": ("big.nii", 3 * CHUNK_SIZE + 5000), "one-chunk": ("small.nii", 700_000)}
CHANGES = {"same size": 0, "grown": 3 * MiB + 17, "shrunk": -300_001}
HEAD = 10_000  # bytes read before the server gets the new file


def replace(resource: Resource, name: str, change: int) -> bytes:
    """The server's new revision of ``name`` (other bytes, a new mtime); its bytes."""
    old = resource.find(name)
    assert old is not None
    before = old.read(0, HEAD)
    new = SyntheticContent(seed=1000 + old.size, size=old.size + change, mtime=0.0)
    resource.replace_file(name, new, mtime=MTIME + 3600)
    data = new.read()
    assert data[:HEAD] != before
    return data


def read_on(reads: Reads, start: int, read_at: Callable[[int], bytes],
            errors: tuple[type[BaseException], ...] = (OSError,)) -> None:
    """Read on from ``start`` to the end of the old file, a read at a time, judging each. After
    the first EIO only the last read is tried (nothing after an EIO may be wrong either), as
    each failing read may cost the reader its whole deadline and retries."""
    offsets = list(range(start, len(reads.truth), READ))
    for n, offset in enumerate(offsets):
        if reads.judge("open", offset, READ, lambda offset=offset: read_at(offset),
                       errors) == "EIO":
            for after in offsets[n + 1:][-1:]:
                reads.judge("open", after, READ, lambda after=after: read_at(after), errors)
            return


def files_listed_since(emu: Emulator, when: float) -> bool:
    """Whether a file listing asked for after ``when`` has been answered."""
    return any(r.kind == "listing" and "/files" in r.path and r.time > when and r.done
               for r in emu.log)


@needs_fuse
@pytest.mark.fuse
@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("which", list(FILES))
def test_a_mount_handle_open_across_a_replacement_gives_the_old_file_or_eio(
        make_emulator: Callable[..., Emulator], mount: Callable[..., Mount],
        oracle: Callable[..., Oracle], which: str, change: str) -> None:
    """The handle read the old file's start; once the server has the new file and the mount
    has listed it, reading on through the same handle gives the old file's bytes or EIO,
    never the new file's; a new open then gets the new file whole."""
    archive, resource = archive_of(**dict(FILES.values()))
    emu = make_emulator(archive)
    name = FILES[which][0]
    path = f"{FOLDER}/{name}"
    old = oracle(emu).read(path)
    m = mount(emu, "--ttl", str(TTL), "--timeout", "1")
    fd = os.open(m / path, os.O_RDONLY)
    try:
        reads = Reads(old)
        assert reads.judge("open", 0, HEAD, lambda: os.pread(fd, HEAD, 0)) == "ok"
        poll(lambda: quiet(emu), "the first read's fetches to end")
        replaced = time.time()
        new = replace(resource, name, CHANGES[change])
        poll(lambda: files_listed_since(emu, replaced), "the mount to list the new file",
             step=lambda: os.listdir(m / FOLDER))
        read_on(reads, HEAD, lambda offset: os.pread(fd, READ, offset))
    finally:
        os.close(fd)
    assert not reads.wrong(), f"bytes of no version of the file: {reads.summary()}"
    poll(lambda: os.stat(m / path).st_size == len(new), "the mount to show the new size")
    assert (m / path).read_bytes() == new


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("which", list(FILES))
def test_an_fsspec_file_open_across_a_replacement_gives_the_old_file_or_an_error(
        make_emulator: Callable[..., Emulator], oracle: Callable[..., Oracle], tmp_path: Path,
        which: str, change: str) -> None:
    """The same through ``fsspec.filesystem("xnat")``: an open file reads on as the old file
    or raises OSError; a new ``cat_file`` gets the new file whole."""
    archive, resource = archive_of(**dict(FILES.values()))
    emu = make_emulator(archive)
    name = FILES[which][0]
    path = f"{FOLDER}/{name}"
    old = oracle(emu).read(path)
    fs = fsspec.filesystem("xnat", url=emu.url, user="alice", password="secret",
                           cache_dir=str(tmp_path / "cache"), ttl=TTL, timeout=1,
                           skip_instance_cache=True)
    version = fs.checksum(path)
    reads = Reads(old)
    with fs.open(path) as f:
        assert reads.judge("open", 0, HEAD, lambda: f.read(HEAD)) == "ok"
        new = replace(resource, name, CHANGES[change])
        poll(lambda: fs.checksum(path) != version, "the filesystem to list the new file")

        def read_at(offset: int) -> bytes:
            f.seek(offset)
            return f.read(READ)

        read_on(reads, HEAD, read_at)
    assert not reads.wrong(), f"bytes of no version of the file: {reads.summary()}"
    assert fs.info(path)["size"] == len(new)
    assert fs.cat_file(path) == new
