"""The MD5 bookkeeping on its own, over a fake fetcher: verdicts in any arrival order, what a
mismatch leads to, and the pace of readers."""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Callable
from concurrent.futures import Future

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xnatfs.errors import DigestMismatch
from xnatfs.reader.integrity import LAG, Checks
from xnatfs.reader.store import Checked
from xnatfs.tree.model import RemoteFile

CHUNK = 1000


class FakeChunks:
    """The fetcher as Checks sees it: chunk geometry, a cache, fetches in flight, eviction."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.cache: dict[int, bytes] = {}
        self.flying: dict[int, Future[Checked]] = {}
        self.evicted = 0
        self.records: dict[str, bytes] = {}  # the disk's record of copies that passed

    def chunk_count(self, file: RemoteFile) -> int:
        return -(-len(self.data) // CHUNK)

    def piece(self, index: int) -> bytes:
        return self.data[index * CHUNK:(index + 1) * CHUNK]

    def load(self, file: RemoteFile, index: int) -> Checked | None:
        data = self.cache.get(index)
        return None if data is None else Checked.of(data)

    def in_flight(self, file: RemoteFile, index: int) -> Future[Checked] | None:
        return self.flying.get(index)

    def evict(self, file: RemoteFile, *, before: Callable[[], None] | None = None) -> None:
        if before is not None:
            before()
        self.evicted += 1
        self.cache.clear()

    def record(self, file: RemoteFile, tags: bytes) -> None:
        self.records[file.version] = tags

    def recorded(self, file: RemoteFile) -> bytes | None:
        return self.records.get(file.version)


def setup(size: int = 10 * CHUNK - 7, *, wrong: bool = False) -> tuple[Checks, FakeChunks,
                                                                        RemoteFile]:
    data = random.Random(size).randbytes(size)
    digest = hashlib.md5(data).hexdigest()
    chunks = FakeChunks(data[:-1] + b"\0" if wrong else data)
    return Checks(chunks, server="http://x", deadline=5), chunks, RemoteFile("/f", size, digest)


def feed_all(checks: Checks, chunks: FakeChunks, file: RemoteFile, order: list[int],
             *, ranged: bool = True) -> bool:
    last = chunks.chunk_count(file) - 1
    verdict = False
    for i in order:
        piece = chunks.piece(i)
        if checks.completes(file, i):
            verdict = checks.feed(file, i, piece, last=i == last, ranged=ranged) or verdict
        else:
            verdict = checks.feed(file, i, piece, ranged=ranged) or verdict
        chunks.cache[i] = piece
    return verdict


@settings(max_examples=60, deadline=None)
@given(st.permutations(range(10)))
def test_any_arrival_order_of_the_right_bytes_verifies(order: list[int]) -> None:
    checks, chunks, file = setup()
    assert feed_all(checks, chunks, file, order)
    assert checks.taint(file) == 0 and checks.hashed(file) is None and chunks.evicted == 0


def test_wrong_ranged_bytes_taint_evict_and_make_the_file_suspect() -> None:
    checks, chunks, file = setup(wrong=True)
    with pytest.raises(DigestMismatch):
        feed_all(checks, chunks, file, list(range(10)))
    assert checks.taint(file) == 1 and chunks.evicted == 1
    assert checks.suspect(file) and not checks.bad(file) and checks.whole_files is None


def test_a_suspect_file_that_passes_whole_distrusts_ranges_for_good() -> None:
    checks, chunks, file = setup()
    right = chunks.data
    chunks.data = right[:-1] + b"\0"
    with pytest.raises(DigestMismatch):
        feed_all(checks, chunks, file, list(range(10)))
    chunks.data = right
    assert feed_all(checks, chunks, file, list(range(10)), ranged=False)
    assert checks.whole_files is not None


def test_wrong_bytes_fetched_whole_make_the_version_bad() -> None:
    checks, chunks, file = setup(wrong=True)
    with pytest.raises(DigestMismatch):
        feed_all(checks, chunks, file, list(range(10)), ranged=False)
    assert checks.bad(file) and checks.taint(file) == 1


@pytest.mark.parametrize("first", ["pending", "hashed", "passed"])
def test_a_second_body_for_a_chunk_must_be_the_first_one(first: str) -> None:
    """The hash vouches for the copy it took; a chunk fetched again (pushed out of memory and
    of a full disk before its reader came) is another copy, which a lying server can change:
    held, hashed, or part of a file that passed, the first copy is what the second must be."""
    checks, chunks, file = setup()
    if first == "passed":
        assert feed_all(checks, chunks, file, list(range(10)))
    else:
        for i in ([0, 1, 2] if first == "hashed" else [0, 2]):
            checks.feed(file, i, chunks.piece(i))
    checks.feed(file, 2, chunks.piece(2))  # the same bytes again: nothing to say
    assert checks.taint(file) == 0
    with pytest.raises(DigestMismatch, match="two different bodies for chunk 2"):
        checks.feed(file, 2, chunks.piece(3)[:CHUNK])
    assert checks.taint(file) == 1 and chunks.evicted == 1 and checks.suspect(file)
    assert checks.hashed(file) is None  # a running hash may hold either copy: it is dropped


def test_the_end_of_a_file_read_alone_is_not_checked_and_starts_no_hash() -> None:
    checks, chunks, file = setup(size=100 * CHUNK)
    assert not checks.feed(file, 99, chunks.piece(99), last=True)
    assert checks.hashed(file) is None and checks.taint(file) == 0


def test_the_last_chunk_waits_for_a_gap_in_flight() -> None:
    checks, chunks, file = setup()
    for i in range(5):
        checks.feed(file, i, chunks.piece(i))
    gap: Future[Checked] = Future()
    chunks.flying[5] = gap
    for i in range(6, 9):
        chunks.cache[i] = chunks.piece(i)
    threading.Timer(0.05, gap.set_result, [Checked.of(chunks.piece(5))]).start()
    assert checks.feed(file, 9, chunks.piece(9), last=True)


def test_a_reader_waits_only_while_a_hash_is_running_behind_it() -> None:
    checks, chunks, file = setup()
    checks.pace(file, 9)  # no hash running: no wait
    checks.feed(file, 0, chunks.piece(0))
    assert checks.hashed(file) == 1 and checks.wanted(file, 1) and not checks.wanted(file, 0)
    checks.pace(file, LAG + 5)  # running, but not busy at this moment: no wait either
