"""The reader against a fake byte source that misbehaves, without sockets or the kernel.

A property test in the style of mountpoint-s3's prefetcher tests: any sequence of answers from
the source (right, cut short, reset, refused, 5xx, Range ignored, bytes one off under correct
headers) and any sequence of reads, and the reader gives the right bytes or an error, never
wrong bytes; a whole-file read of a file with an MD5 never completes with bytes that fail it.

Those properties hold for a reader that always raises. So the second half demands success
where the faults leave room for it: every call the reader makes gets ``MAX_TRIES`` tries, and
when its last one is answered right, every read returns exactly its bytes (``TriesClient``
says how faults are dealt out; each property's docstring, which ones it allows). A mutation
check runs each of them against readers that always raise or give up early, and they fail.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from xnatfs.errors import (
    ConnectError,
    DigestMismatch,
    IntegrityError,
    ServerError,
    TransferError,
    XnatfsError,
)
from xnatfs.reader.chunkcache import ChunkCache
from xnatfs.reader.fetcher import Fetcher
from xnatfs.reader.handle import FileHandle
from xnatfs.reader.integrity import Checks
from xnatfs.reader.store import Checked
from xnatfs.tree.model import RemoteFile
from xnatfs.xnat.retry import MAX_TRIES, Attempts

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
        return self._answer(fault, start, end)

    def _answer(self, fault: str, start: int, end: int | None) -> FakeBody:
        """One answer to a GET of [start, end) (no Range when both are defaults)."""
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


# -- success, where the faults leave every call a good try -----------------------------------

TRANSIENT = ("short", "reset", "refuse", "5xx")  # what one more try gets past
ANSWERS = ("ok", "whole", *TRANSIENT)  # "whole": the right bytes, without Range
DEADLINE = 10.0  # never reached by a reader that works: it only bounds one that hangs
Reader = Callable[..., Fetcher]


class TriesClient(FakeClient):
    """Answers by the try, not by the order of requests: the k-th try that a call's budget
    (``Attempts``) spends on a GET starting at chunk c gets ``ranged[c][k - 1]``, on a GET
    without Range ``whole[k - 1]``, and any try past the end of its plan the right bytes.
    Plans hold at most ``MAX_TRIES - 1`` answers, so the last try a call has gets the right
    bytes whatever it asks for: that is the fault model of the success properties.

    By the try, because read-ahead on the pool and concurrent readers interleave their
    requests in an order no test controls: "the n-th request fails" gives one call four
    failures or none, by the schedule, and a property over it is neither true nor false.
    Refused connections and 5xx are tried again here, within the call's budget, as
    ``XnatClient.open_file`` does (``Http.call``); a body that broke is the fetcher's to try
    again, within the same budget. So a refusal reaches the fetcher (which then takes the
    server for unreachable and fails fast) only from a call with no try left, as from the real
    client."""

    def __init__(self, content: bytes, ranged: list[list[str]], whole: list[str]) -> None:
        super().__init__(content, [])
        assert all(len(plan) < MAX_TRIES for plan in [*ranged, whole])
        self.ranged, self.whole = ranged, whole
        self.shifted = 0  # answers whose bytes were wrong under right headers

    def open_file(self, uri: str, start: int = 0, end: int | None = None,
                  attempts: object = None, since: str | None = None) -> FakeBody:
        budget = attempts if isinstance(attempts, Attempts) else Attempts.within(DEADLINE)
        if start > 0 or end is not None:
            first = start // CHUNK
            plan = self.ranged[first] if first < len(self.ranged) else []
        else:
            plan = self.whole
        while True:
            budget.start(f"GET {uri}")
            fault = plan[budget.used - 1] if budget.used <= len(plan) else "ok"
            with self.lock:
                self.requests += 1
            try:
                body = self._answer(fault, start, end)
            except (ConnectError, ServerError) as exc:
                budget.again(exc, f"GET {uri}")
                continue
            if body.data != self.content[body.start:body.start + body.length]:
                with self.lock:
                    self.shifted += 1
            return body


def tries(answers: tuple[str, ...]) -> st.SearchStrategy[list[str]]:
    """What the first tries of a call get; the try after them gets the right bytes."""
    return st.lists(st.sampled_from(answers), max_size=MAX_TRIES - 1)


def sizes(most: int, least: int = 1) -> st.SearchStrategy[int]:
    """File sizes of ``least`` to ``most`` chunks, the last one cut anywhere: drawn by the
    chunk, not by the byte, where most files drawn were of one chunk (one request, no Range)."""
    return st.builds(lambda chunks, cut: chunks * CHUNK - cut, st.integers(least, most),
                     st.integers(0, CHUNK - 1))


def content_of(size: int, seed: bytes) -> bytes:
    content = (hashlib.sha256(seed).digest() * (size // 32 + 1))[:size]
    return bytes((b + i) % 256 for i, b in enumerate(content))  # no two chunks alike


def must_read(fetcher: Fetcher, file: RemoteFile, step: int) -> bytes:
    """The whole file through a new handle; a failure is the property's, not the reader's."""
    handle = FileHandle(fetcher, file)
    try:
        return read_all(handle, step)
    except XnatfsError as exc:
        raise AssertionError(f"a read failed though every call had a good try: {exc!r}") \
            from exc
    finally:
        handle.close()


@contextlib.contextmanager
def reader_over(reader: Reader, client: FakeClient, tmp: str, cache: str,
                memory: int | None) -> Iterator[Fetcher]:
    """A fetcher over ``client`` with no disk cache or one of ``cache_for``'s; its pool's
    threads are ended after, so that examples do not pile up threads."""
    store = None if cache == "none" else cache_for(cache, tmp)
    pool = ThreadPoolExecutor(4)
    fetcher = reader(client, store, CHUNK, pool=pool,
                     memory=None if memory is None else memory * CHUNK, retries=MAX_TRIES - 1,
                     deadline=DEADLINE, pauses=NONE)
    try:
        yield fetcher
    finally:
        fetcher.close()
        pool.shutdown(wait=True)
        if store is not None:
            store.close()


def whole_reads_succeed(reader: Reader, tmp: str, *, size: int, ranged: list[list[str]],
                        whole: list[str], step: int, digest: bool, cache: str,
                        memory: int | None, readers: int, seed: bytes) -> None:
    """The body of the property below, apart so that it can be run against broken readers."""
    content = content_of(size, seed)
    client = TriesClient(content, ranged, whole)
    file = RemoteFile("/data/f", size, hashlib.md5(content).hexdigest() if digest else None)
    with reader_over(reader, client, tmp, cache, memory) as fetcher:
        for _ in range(2):  # cold, then from what the caches kept
            with ThreadPoolExecutor(readers) as group:
                got = list(group.map(lambda _: must_read(fetcher, file, step), range(readers)))
            assert all(g == content for g in got)


@settings(max_examples=60, deadline=None)
@given(size=sizes(12), ranged=st.lists(tries(ANSWERS), max_size=12),
       whole=tries(ANSWERS), step=st.sampled_from([100, CHUNK // 2, CHUNK, 3 * CHUNK]),
       digest=st.booleans(), cache=st.sampled_from(["none", "full", "tiny", "roomy"]),
       memory=st.sampled_from([1, 3, None]), readers=st.integers(1, 2),
       seed=st.binary(min_size=16, max_size=16))
def test_whole_reads_succeed_when_every_call_has_a_good_try(
        tmp_path_factory: pytest.TempPathFactory, size: int, ranged: list[list[str]],
        whole: list[str], step: int, digest: bool, cache: str, memory: int | None,
        readers: int, seed: bytes) -> None:
    """Fault model (``TriesClient``): each call (a reader's chunk, a read-ahead span) may get
    "short", "reset", "refuse", "5xx" or a Range-less answer on each of its first three
    tries, by the range it asks for, and gets the right bytes on its fourth. No bytes are
    one off. Then every read of a file of up to 12 chunks, with or without an MD5, by one
    reader or two at once, cold or from what the caches kept (a disk cache that is full,
    of four chunks or roomy, with a memory of one chunk, three or the default; or no disk
    and the default memory), returns exactly its bytes: no error at all. A Range-less answer
    is not a fault: its stream has the chunks. Any exception fails the property, for it is a
    lost read of a file the server would have served."""
    whole_reads_succeed(Fetcher, str(tmp_path_factory.mktemp("cache")), size=size,
                        ranged=ranged, whole=whole, step=step, digest=digest, cache=cache,
                        memory=memory, readers=readers, seed=seed)


def random_reads_succeed(reader: Reader, tmp: str, *, size: int,
                         reads: list[tuple[int, int]], ranged: list[list[str]],
                         whole: list[str], digest: bool) -> None:
    """The body of the property below, apart so that it can be run against broken readers."""
    content = bytes(i * 7 % 251 for i in range(size))
    client = TriesClient(content, ranged, whole)
    file = RemoteFile("/data/g", size, hashlib.md5(content).hexdigest() if digest else None)
    with reader_over(reader, client, tmp, "none", None) as fetcher:
        handle = FileHandle(fetcher, file)
        try:
            for offset, length in reads:
                try:
                    got = handle.read(offset, length)
                except XnatfsError as exc:
                    raise AssertionError(f"the read of {length} bytes at {offset} failed "
                                         f"though every call had a good try: {exc!r}") from exc
                assert got == content[offset:offset + length]
        finally:
            handle.close()


@settings(max_examples=60, deadline=None)
@given(size=sizes(8, 2),
       reads=st.lists(st.tuples(st.integers(0, 8 * CHUNK), st.integers(1, 2 * CHUNK)),
                      min_size=1, max_size=20),
       ranged=st.lists(tries(ANSWERS), max_size=8), whole=tries(ANSWERS),
       digest=st.booleans())
def test_random_reads_succeed_when_every_call_has_a_good_try(
        size: int, reads: list[tuple[int, int]], ranged: list[list[str]], whole: list[str],
        digest: bool) -> None:
    """The fault model of the whole-read property, under reads at any offset and of any
    length: seeks that cancel read-ahead, reads past the end, a file with an MD5 whose every
    chunk has been given out in any order and is then checked against a copy that passed.
    Every read returns exactly its bytes (b"" past the end), never an error."""
    random_reads_succeed(Fetcher, "", size=size, reads=reads, ranged=ranged, whole=whole,
                         digest=digest)


def recording_prefetch(fetcher: Fetcher) -> list[Future[None]]:
    """The futures of every read-ahead the fetcher is asked for, from now on."""
    futures: list[Future[None]] = []
    prefetch = fetcher.prefetch

    def recorded(file: RemoteFile, first: int, last: int, **kwargs: bool) -> Future[None]:
        futures.append(prefetch(file, first, last, **kwargs))
        return futures[-1]

    fetcher.prefetch = recorded  # type: ignore[method-assign]
    return futures


def settle(ahead: list[Future[None]]) -> None:
    """Wait for the read-ahead a read left, and for the whole-file streams, to end. With a
    disk cache neither waits for readers (only chunks held for readers without one do), so
    both end on their own."""
    wait(ahead)
    for thread in threading.enumerate():
        if thread.name == "xnatfs-stream":
            thread.join()


def shifted_reads_recover(reader: Reader, tmp: str, *, size: int, ranged: list[list[str]],
                          whole: list[str], step: int, cache: str, seed: bytes) -> None:
    """The body of the property below, apart so that it can be run against broken readers."""
    content = content_of(size, seed)
    client = TriesClient(content, ranged, whole)
    file = RemoteFile("/data/f", size, hashlib.md5(content).hexdigest())
    failed: list[XnatfsError] = []
    with reader_over(reader, client, tmp, cache, None) as fetcher:
        ahead = recording_prefetch(fetcher)
        while True:
            handle = FileHandle(fetcher, file)
            try:
                got = read_all(handle, step)
            except XnatfsError as exc:
                failed.append(exc)
                assert isinstance(exc, DigestMismatch), f"only MD5 failures are allowed: {exc!r}"
                assert client.shifted, f"a read failed, and no answer was wrong: {exc!r}"
                assert len(failed) <= client.shifted, \
                    f"{len(failed)} failed reads for {client.shifted} wrong answers: {failed}"
                continue
            finally:
                handle.close()
                settle(ahead)
            assert got == content
            return


@settings(max_examples=60, deadline=None)
@given(size=sizes(8, 2),
       ranged=st.lists(tries((*ANSWERS, "shift")), max_size=8), whole=tries(ANSWERS),
       step=st.sampled_from([100, CHUNK, 3 * CHUNK]),
       cache=st.sampled_from(["tiny", "roomy"]), seed=st.binary(min_size=16, max_size=16))
# One wrong answer, for the first chunk; a reader of small reads takes it again from the disk
# while the file is evicted (the stale copy in Fetcher.evict's docstring): that race's hot spot.
@example(size=4 * CHUNK - 519, ranged=[["shift"]], whole=[], step=100, cache="roomy",
         seed=bytes(16))
def test_a_file_with_an_md5_reads_right_once_its_wrong_answers_are_caught(
        tmp_path_factory: pytest.TempPathFactory, size: int, ranged: list[list[str]],
        whole: list[str], step: int, cache: str, seed: bytes) -> None:
    """The fault model of the whole-read property, on files of 2 to 8 chunks with an MD5,
    where ranged answers may also be one off under right headers ("shift"), on any of a
    call's first three tries. Answers without Range are never wrong here: a whole body that
    fails the MD5 makes the file bad for good (``integrity``) and no reader could read it,
    so no plan has one. Reading the file through a new handle after each failure (once the
    failed read's read-ahead and streams have ended), a read fails only with DigestMismatch,
    only if some answer was wrong, at most once per wrong answer, and then the file reads
    exactly right:
    after a failure the file is fetched whole. Without an MD5 nothing can catch bytes one
    off: not part of this."""
    shifted_reads_recover(Fetcher, str(tmp_path_factory.mktemp("cache")), size=size,
                          ranged=ranged, whole=whole, step=step, cache=cache, seed=seed)


# -- the mutation check: each success property fails against a broken reader ------------------


class AlwaysFails(Fetcher):
    """A reader that never gives a byte."""

    def get(self, file: RemoteFile, index: int, *, store: bool = True,
            check: bool = True) -> Checked:
        raise ServerError("the mutant reader fails every chunk")


class GivesUpEarly(Fetcher):
    """A reader that tries each chunk twice, not ``MAX_TRIES`` times."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs["retries"] = 1
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


BUSY = [["short", "5xx", "reset"]] * 3  # three faults before the right answer, for every call
PROPERTIES: dict[str, tuple[Callable[..., None], dict[str, object]]] = {
    "whole": (whole_reads_succeed, dict(size=3 * CHUNK - 7, ranged=BUSY, whole=BUSY[0],
                                        step=CHUNK, digest=True, cache="none", memory=None,
                                        readers=1, seed=bytes(16))),
    "random": (random_reads_succeed, dict(size=3 * CHUNK - 7, reads=[(0, 100), (CHUNK, 9)],
                                          ranged=BUSY, whole=BUSY[0], digest=True)),
    "shift": (shifted_reads_recover, dict(size=3 * CHUNK - 7, ranged=BUSY, whole=BUSY[0],
                                          step=CHUNK, cache="roomy", seed=bytes(16))),
}


@pytest.mark.parametrize("mutant", [AlwaysFails, GivesUpEarly])
@pytest.mark.parametrize("name", sorted(PROPERTIES))
def test_each_success_property_fails_against_a_broken_reader(
        tmp_path: Path, name: str, mutant: Reader) -> None:
    """A property that counts errors as passes holds for a reader that always raises. Each
    success property, on a plan of three faults for every call, passes against the reader and
    fails against one that always raises, and against one that gives up two tries early."""
    body, args = PROPERTIES[name]
    body(Fetcher, str(tmp_path / "real"), **args)
    with pytest.raises(AssertionError):
        body(mutant, str(tmp_path / "mutant"), **args)


# -- reader bugs the success properties found, pinned down --------------------------------


class TwoChunks:
    """``integrity.Chunks`` of a file of two chunks, nothing cached, chunk 0 in flight as
    ``gap`` (``asked`` once someone waits for it)."""

    def __init__(self) -> None:
        self.gap: Future[Checked] = Future()
        self.asked = threading.Event()

    def chunk_count(self, file: RemoteFile) -> int:
        return 2

    def load(self, file: RemoteFile, index: int) -> Checked | None:
        return None

    def have(self, file: RemoteFile, index: int) -> bool:
        return False

    def in_flight(self, file: RemoteFile, index: int) -> Future[Checked] | None:
        self.asked.set()
        return self.gap if index == 0 else None

    def evict(self, file: RemoteFile, *, before: Callable[[], None] | None = None) -> None:
        if before is not None:
            before()

    def record(self, file: RemoteFile, tags: bytes) -> None:
        pass

    def recorded(self, file: RemoteFile) -> bytes | None:
        return None


def test_one_wrong_copy_moves_the_taint_once() -> None:
    """Read-ahead delivers the last chunk and waits in ``_finish`` for chunk 0, which the
    reader's own fetch then delivers one off: the reader's thread completes the hash and
    reports the mismatch; the read-ahead's must not report it a second time."""
    right = bytes(range(256)) * (2 * CHUNK // 256)
    file = RemoteFile("/data/f", 2 * CHUNK, hashlib.md5(right).hexdigest())
    chunks = TwoChunks()
    checks = Checks(chunks, server=FakeClient.base_url, deadline=DEADLINE)
    ahead = ThreadPoolExecutor(1)
    last = ahead.submit(checks.feed, file, 1, right[CHUNK:], last=True)
    assert chunks.asked.wait(DEADLINE)
    with pytest.raises(DigestMismatch):
        checks.feed(file, 0, b"x" + right[:CHUNK - 1])  # the reader's fetch, one off
    chunks.gap.set_exception(DigestMismatch("the reader's fetch failed"))  # as _fail does
    with contextlib.suppress(DigestMismatch):
        last.result(DEADLINE)
    ahead.shutdown()
    assert checks.taint(file) == 1


def test_a_read_during_the_eviction_after_a_mismatch_gets_no_stale_copy(
        tmp_path: Path) -> None:
    """Chunk 0 comes one off and goes to memory and disk; the read of chunk 1 completes the
    hash wrong and the file's chunks are evicted. Between chunk 0 leaving memory and leaving
    the disk (forced here; threads meet there by chance in the property), a second handle
    reads chunk 0. It must get the right bytes or an error, and so must every read after."""
    size = 2 * CHUNK - 5
    content = content_of(size, bytes(16))
    client = TriesClient(content, [["shift"]], [])
    store = cache_for("roomy", str(tmp_path))
    pool = ThreadPoolExecutor(2)
    fetcher = Fetcher(client, store, CHUNK, pool=pool, deadline=DEADLINE,  # type: ignore[arg-type]
                      pauses=NONE)
    file = RemoteFile("/data/f", size, hashlib.md5(content).hexdigest())
    delete = store.delete
    during: list[bytes | XnatfsError] = []

    def read_first(handle: FileHandle) -> None:
        try:
            during.append(handle.read(100, 100))
        except XnatfsError as exc:
            during.append(exc)

    def delete_after_a_read(of: RemoteFile, index: int) -> None:
        if index == 0 and not during:
            other = FileHandle(fetcher, file)
            reader = threading.Thread(target=read_first, args=(other,))
            reader.start()
            reader.join()
            other.close()
        delete(of, index)

    first = FileHandle(fetcher, file)
    try:
        first.read(0, 100)
        store.delete = delete_after_a_read  # type: ignore[method-assign]
        with pytest.raises(DigestMismatch):
            first.read(CHUNK, 100)
        store.delete = delete  # type: ignore[method-assign]
        first.close()
        assert client.shifted == 1 and len(during) == 1
        assert isinstance(during[0], XnatfsError) or during[0] == content[100:200], \
            "a read after the mismatch got the wrong copy"
        after = FileHandle(fetcher, file)
        try:
            assert read_all(after, 100) == content
        except XnatfsError as exc:
            raise AssertionError(f"a read after the mismatch failed: {exc!r}") from exc
        finally:
            after.close()
    finally:
        fetcher.close()
        pool.shutdown(wait=True)
        store.close()


def test_a_file_a_server_sends_whole_is_streamed_once_without_a_disk() -> None:
    """A server that ignores Range (from the request for chunk 1 on), no disk cache, a memory
    of one chunk: the stream holds what it brings ahead for the reader, so a sequential read
    costs the request for chunk 0, one stream, and at most one request of read-ahead that
    went out before the stream was known."""
    size = 12 * CHUNK - 10
    content = content_of(size, bytes(16))
    client = TriesClient(content, [[], ["whole"]], [])
    pool = ThreadPoolExecutor(4)
    fetcher = Fetcher(client, None, CHUNK, pool=pool, memory=CHUNK,  # type: ignore[arg-type]
                      deadline=0.5, pauses=NONE)
    handle = FileHandle(fetcher, RemoteFile("/data/f", size, None))
    try:
        got: bytes | XnatfsError = read_all(handle, 100)
    except XnatfsError as exc:
        got = exc
    finally:
        handle.close()
        fetcher.close()
        pool.shutdown(wait=True)
    assert got == content
    assert client.requests <= 3, f"{client.requests} GETs for one sequential read"
