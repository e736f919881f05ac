"""The reader against a fake byte source that misbehaves, without sockets or the kernel.

A property test in the style of mountpoint-s3's prefetcher tests: any sequence of answers from
the source (right, cut short, reset, refused, 5xx, Range ignored, bytes one off under correct
headers) and any sequence of reads, and the reader gives the right bytes or an error, never
wrong bytes; a whole-file read of a file with an MD5 never completes with bytes that fail it.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from xnatfs.errors import ConnectError, IntegrityError, ServerError, TransferError, XnatfsError
from xnatfs.reader.chunkcache import ChunkCache
from xnatfs.reader.fetcher import Fetcher
from xnatfs.reader.handle import FileHandle
from xnatfs.tree.model import RemoteFile

CHUNK = 1024
NONE = (0.0, 0.0, 0.0)  # no pauses between tries
FAULTS = ("ok", "short", "reset", "refuse", "5xx", "whole", "shift")


class FakeBody:
    """What ``XnatClient.open_file`` gives, over bytes in memory, perhaps cut or reset midway."""

    last_modified: str | None = None

    def __init__(self, data: bytes, start: int, ranged: bool, total: int, *,
                 cut: int | None = None, reset: bool = False) -> None:
        self.data, self.start, self.ranged, self.total = data, start, ranged, total
        self.length = len(data)
        self.cut, self.reset, self.got = cut, reset, 0

    def read(self, size: int) -> bytes:
        size = min(size, self.length - self.got)
        if self.cut is not None and self.got + size > self.cut:
            if self.reset:
                raise TransferError("reset by the fake")
            size = self.cut - self.got
            piece = self.data[self.got:self.got + size]
            self.got += size
            if not piece:
                raise IntegrityError("truncated body")
            return piece
        piece = self.data[self.got:self.got + size]
        self.got += len(piece)
        return piece

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        while piece := self.read(size):
            yield piece

    def close(self) -> None:
        pass


class FakeClient:
    """Serves one file's bytes; the n-th request gets the n-th fault of the plan (then ok)."""

    base_url = "fake://xnat"

    def __init__(self, content: bytes, plan: list[str]) -> None:
        self.content = content
        self.plan = list(plan)
        self.lock = threading.Lock()
        self.requests = 0

    def open_file(self, uri: str, start: int = 0, end: int | None = None,
                  attempts: object = None, since: str | None = None) -> FakeBody:
        with self.lock:
            fault = self.plan.pop(0) if self.plan else "ok"
            self.requests += 1
        size = len(self.content)
        ranged = start > 0 or end is not None
        if fault == "refuse":
            raise ConnectError("connection refused by the fake")
        if fault == "5xx":
            raise ServerError("HTTP 503 from the fake")
        if fault == "whole" or not ranged:
            return FakeBody(self.content, 0, False, size, cut=self._cut(fault, size),
                            reset=fault == "reset")
        end = size if end is None else end
        first = start
        if fault == "shift":  # one off, under correct headers
            first = start + 1 if end < size else max(start - 1, 0)
        data = self.content[first:first + (end - start)]
        return FakeBody(data, start, True, size, cut=self._cut(fault, end - start),
                        reset=fault == "reset")

    @staticmethod
    def _cut(fault: str, length: int) -> int | None:
        return length // 2 if fault in ("short", "reset") else None


def read_all(handle: FileHandle, step: int) -> bytes:
    parts, offset = [], 0
    while offset < handle.size:
        piece = handle.read(offset, step)
        if not piece:
            break
        parts.append(piece)
        offset += len(piece)
    return b"".join(parts)


@settings(max_examples=150, deadline=None)
@given(size=st.integers(1, 12 * CHUNK), plan=st.lists(st.sampled_from(FAULTS), max_size=12),
       step=st.sampled_from([100, CHUNK // 2, CHUNK, 3 * CHUNK]), digest=st.booleans(),
       seed=st.binary(min_size=16, max_size=16))
# One read over a whole small file: its first chunk one off, the next request answered whole;
# the mismatch came while the read gathered its chunks, and the wrong first chunk went out.
@example(size=2 * CHUNK + 1, plan=["shift", "whole"], step=3 * CHUNK, digest=True,
         seed=bytes(16))
def test_whole_reads_give_the_bytes_or_an_error_never_wrong_bytes(
        size: int, plan: list[str], step: int, digest: bool, seed: bytes) -> None:
    content = (hashlib.sha256(seed).digest() * (size // 32 + 1))[:size]
    content = bytes((b + i) % 256 for i, b in enumerate(content))  # no two chunks alike
    if not digest:  # bytes one off cannot be caught without an MD5: not part of this promise
        plan = [f for f in plan if f != "shift"]
    client = FakeClient(content, plan)
    pool = ThreadPoolExecutor(4)
    fetcher = Fetcher(client, None, CHUNK, pool=pool, retries=3,  # type: ignore[arg-type]
                      deadline=5, pauses=NONE)
    file = RemoteFile("/data/f", size, hashlib.md5(content).hexdigest() if digest else None)
    try:
        for _ in range(3):  # a failed read may be followed by a good one, never a wrong one
            handle = FileHandle(fetcher, file)
            try:
                got = read_all(handle, step)
            except XnatfsError:
                continue
            finally:
                handle.close()
            assert got == content
    finally:
        fetcher.close()
        pool.shutdown(wait=True)


@settings(max_examples=100, deadline=None)
@given(size=st.integers(CHUNK + 1, 8 * CHUNK),
       reads=st.lists(st.tuples(st.integers(0, 8 * CHUNK), st.integers(1, 2 * CHUNK)),
                      min_size=1, max_size=20),
       plan=st.lists(st.sampled_from(["ok", "short", "reset", "5xx", "whole"]), max_size=8))
def test_random_reads_are_exact_or_fail(size: int, reads: list[tuple[int, int]],
                                        plan: list[str]) -> None:
    content = bytes(i * 7 % 251 for i in range(size))
    fetcher = Fetcher(FakeClient(content, plan), None, CHUNK, pool=ThreadPoolExecutor(2),  # type: ignore[arg-type]
                      retries=2, deadline=5, pauses=NONE)
    handle = FileHandle(fetcher, RemoteFile("/data/g", size, None))
    try:
        for offset, length in reads:
            try:
                got = handle.read(offset, length)
            except XnatfsError:
                continue
            assert got == content[offset:offset + length]
    finally:
        handle.close()
        fetcher.close()


class FolderClient(FakeClient):
    """The file under test, answered by the plan, in a folder of small files answered right."""

    def __init__(self, content: bytes, plan: list[str], others: dict[str, bytes]) -> None:
        super().__init__(content, plan)
        self.others = others

    def open_file(self, uri: str, start: int = 0, end: int | None = None,
                  attempts: object = None, since: str | None = None) -> FakeBody:
        if uri not in self.others:
            return super().open_file(uri, start, end)
        data = self.others[uri]
        end = len(data) if end is None else end
        return FakeBody(data[start:end], start, True, len(data))


def cache_for(kind: str, tmp: str) -> ChunkCache:
    """A full disk (every chunk refused), a cache of four chunks, or a roomy one."""
    return ChunkCache(tmp, 4 * CHUNK if kind == "tiny" else 1 << 30, chunk_size=CHUNK,
                      min_free=1 << 62 if kind == "full" else 0)


@settings(max_examples=120, deadline=None)
@given(chunks=st.integers(2, 60), plan=st.lists(st.sampled_from(FAULTS), max_size=8),
       cache=st.sampled_from(["full", "tiny", "roomy"]), others=st.integers(0, 12),
       burst=st.integers(0, 60), before=st.integers(0, 60),
       step=st.sampled_from([CHUNK // 2, CHUNK, 3 * CHUNK]), wrong=st.booleans())
# Ten files of the folder start their hashes at the third chunk and push this one's out; the
# disk refuses every chunk, so the new hash cannot get chunk 0 back: the file read unchecked.
@example(chunks=40, plan=[], cache="full", others=10, burst=3, before=0, step=CHUNK, wrong=True)
# The same with a disk cache of four chunks, on a file of fewer chunks than a hash holds.
@example(chunks=20, plan=[], cache="tiny", others=10, burst=3, before=0, step=CHUNK, wrong=True)
# An earlier reader stopped at chunk 40, its hash was pushed out, and the chunks come back
# from the disk: no chunk the new reader fetches is early enough to start a hash.
@example(chunks=60, plan=[], cache="roomy", others=9, burst=0, before=40, step=CHUNK, wrong=True)
def test_a_file_read_from_its_start_is_checked_whole_whatever_the_caches_keep(
        tmp_path_factory: pytest.TempPathFactory, chunks: int, plan: list[str], cache: str,
        others: int, burst: int, before: int, step: int, wrong: bool) -> None:
    """A folder's read-ahead starts the hashes of other files (``burst``: before this file is
    opened, or at that chunk of it), pushing out running hashes; an earlier reader left some
    chunks in memory or on disk; the disk keeps few chunks or none. A read from the start
    still either fails or gives the file's bytes, and a file whose MD5 the listing gets wrong
    never reads whole."""
    size = chunks * CHUNK - 5
    content = bytes((i * 31 + i // 251) % 256 for i in range(size))
    digest = "0" * 32 if wrong else hashlib.md5(content).hexdigest()
    folder = {f"/data/o{i}": bytes([i]) * (2 * CHUNK) for i in range(others)}
    store = cache_for(cache, str(tmp_path_factory.mktemp("cache")))
    fetcher = Fetcher(FolderClient(content, plan, folder), store, CHUNK,  # type: ignore[arg-type]
                      pool=ThreadPoolExecutor(4), retries=3, deadline=2, pauses=NONE)
    file = RemoteFile("/data/f", size, digest)

    def start_the_others() -> None:
        for uri, data in folder.items():
            other = RemoteFile(uri, len(data), hashlib.md5(data).hexdigest())
            fetcher.prefetch(other, 0, 0).result()

    try:
        earlier = FileHandle(fetcher, file)
        with contextlib.suppress(XnatfsError):
            for index in range(min(before, chunks)):
                earlier.read(index * CHUNK, CHUNK)
        earlier.close()
        if burst == 0:
            start_the_others()
        handle = FileHandle(fetcher, file)
        got, offset = [], 0
        try:
            while offset < size:
                if burst and offset // CHUNK == burst:
                    start_the_others()
                got.append(handle.read(offset, step))
                offset += len(got[-1])
        except XnatfsError:
            return
        finally:
            handle.close()
        assert not wrong, "a whole read completed with bytes that fail the listing's MD5"
        assert b"".join(got) == content
    finally:
        fetcher.close()
        store.close()


class SecondAnswerLies(FakeClient):
    """Right bytes for a range the first time it is asked, one off under correct headers
    every time after: a cache in front of the server that went bad in between."""

    def __init__(self, content: bytes) -> None:
        super().__init__(content, [])
        self.asked: set[tuple[int, int | None]] = set()

    def open_file(self, uri: str, start: int = 0, end: int | None = None,
                  attempts: object = None, since: str | None = None) -> FakeBody:
        with self.lock:
            again = (start, end) in self.asked
            self.asked.add((start, end))
            if again:
                self.plan.append("shift")
        return super().open_file(uri, start, end)


@settings(max_examples=40, deadline=None)
@given(chunks=st.integers(3, 24), memory=st.integers(1, 6), cache=st.sampled_from(["full", "tiny"]),
       step=st.sampled_from([CHUNK // 2, CHUNK, 3 * CHUNK]))
def test_a_chunk_fetched_again_is_held_to_the_copy_the_hash_took(
        tmp_path_factory: pytest.TempPathFactory, chunks: int, memory: int, cache: str,
        step: int) -> None:
    """Read-ahead chunks pushed out of a small memory, with a disk that keeps none, are
    fetched again before their reader comes, and the second answer is wrong: the hash took
    the first copy, so the second must match it."""
    size = chunks * CHUNK - 5
    content = bytes((i * 13 + i // 241) % 256 for i in range(size))
    store = cache_for(cache, str(tmp_path_factory.mktemp("cache")))
    fetcher = Fetcher(SecondAnswerLies(content), store, CHUNK,  # type: ignore[arg-type]
                      pool=ThreadPoolExecutor(4), memory=memory * CHUNK, retries=3,
                      deadline=2, pauses=NONE)
    handle = FileHandle(fetcher, RemoteFile("/data/f", size, hashlib.md5(content).hexdigest()))
    try:
        got = read_all(handle, step)
    except XnatfsError:
        return
    finally:
        handle.close()
        fetcher.close()
        store.close()
    assert got == content
