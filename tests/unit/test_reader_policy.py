"""The read-ahead arithmetic, without threads, sockets or the kernel: property tests over any
sequence of reads, and the shape a sequential reader must see."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from xnatfs.reader.policy import FIRST_WINDOW, MAX_WINDOW, Window

CHUNK = 1 << 20


def _scheduled(window: Window, reads: list[tuple[int, int]]) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for offset, end in reads:
        spans.extend(window.read(offset, end).spans)
    return spans


@settings(max_examples=300, deadline=None)
@given(chunks=st.integers(1, 200), data=st.data())
def test_spans_stay_in_the_file_and_never_overlap_between_seeks(chunks: int, data) -> None:
    size = chunks * CHUNK - data.draw(st.integers(0, CHUNK - 1))
    window = Window(CHUNK, chunks)
    fetched: set[int] = set()
    for _ in range(data.draw(st.integers(1, 60))):
        offset = data.draw(st.integers(0, size - 1))
        end = min(size, offset + data.draw(st.integers(1, 3 * CHUNK)))
        plan = window.read(offset, end)
        if plan.cancel:
            fetched.clear()  # what was not started is dropped: it may be asked again
        for first, last in plan.spans:
            assert 0 <= first <= last < chunks
            assert last - first + 1 <= max(1, MAX_WINDOW // window.streams)
            new = set(range(first, last + 1))
            assert not new & fetched, "a chunk scheduled twice without a seek between"
            fetched |= new
        assert 0 <= window.size <= MAX_WINDOW


@settings(max_examples=100, deadline=None)
@given(chunks=st.integers(2, 300), step=st.sampled_from([4096, 128 << 10, 1 << 20, 3 << 20]))
def test_a_sequential_reader_always_has_the_window_fetched_ahead(chunks: int, step: int) -> None:
    size = chunks * CHUNK
    window = Window(CHUNK, chunks)
    ahead = -1
    offset = 0
    while offset < size:
        end = min(size, offset + step)
        for _, last in window.read(offset, end).spans:
            ahead = max(ahead, last)
        reading = (end - 1) // CHUNK
        ahead = max(ahead, reading)  # what the reader reads itself needs no read-ahead
        if offset > 0 and (end >= CHUNK // 4 or reading > 0):  # a streaming reader by now
            assert window.size >= min(FIRST_WINDOW, MAX_WINDOW)
        assert ahead >= min(chunks - 1, reading + window.size)
        offset = end
    assert ahead == chunks - 1


def test_a_header_costs_one_chunk_and_a_seek_closes_the_window() -> None:
    window = Window(CHUNK, 100)
    assert window.read(0, 352).spans == ()  # a header costs one chunk, read by the reader
    assert window.read(352, 4096).spans == ()  # ... even in several small reads
    plan = window.read(4096, CHUNK // 2)  # a reader that streams
    assert window.size == FIRST_WINDOW and plan.spans == tuple((i, i) for i in range(1, 5))
    plan = window.read(50 * CHUNK, 50 * CHUNK + 10)
    assert plan.cancel and plan.spans == () and window.size == 0


def test_reads_reordered_by_the_kernel_stay_sequential() -> None:
    window = Window(CHUNK, 100, tolerance=4)
    for offset in (0, CHUNK, 3 * CHUNK, 2 * CHUNK, 4 * CHUNK, 6 * CHUNK, 5 * CHUNK):
        assert not window.read(offset, offset + CHUNK).cancel
    assert window.size == MAX_WINDOW


def test_the_window_doubles_up_to_its_maximum() -> None:
    window = Window(CHUNK, 1000, first=1, maximum=8)
    sizes = []
    for offset in range(0, 12 * CHUNK, CHUNK // 2):
        window.read(offset, offset + CHUNK // 2)
        sizes.append(window.size)
    assert sizes[:2] == [0, 1] and max(sizes) == 8 and sizes == sorted(sizes)
