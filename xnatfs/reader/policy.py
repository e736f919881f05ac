"""Read-ahead arithmetic for one file: which chunks to fetch next, given the reads so far.

Pure: no threads, no I/O, so it is tested exhaustively (tests/test_reader_policy.py) and
the scheduler (``readahead.Readahead``) only carries out what it says. The shape is
mountpoint-s3's and rclone's, sized to the links xnatfs meets:

* The window (chunks fetched ahead of the reader) starts at zero, so a program that reads a
  header and stops costs one chunk, even in several small reads (nibabel, pydicom).
* Once a run of sequential reads has covered a quarter of a chunk (1 MiB: one read of ``cp``
  or ``dd``, or a reader that clearly streams) or crossed into the next chunk, the window opens
  at once to ``first`` chunks (16 MiB with 4 MiB chunks: a high-latency link needs several
  requests in flight from the start, or the first tens of megabytes go at one request's
  speed), and each later step into a new chunk doubles it, up to ``maximum``.
* A read that is not within ``tolerance`` of the furthest point reached is a seek: the window
  closes and the fetches not yet started are dropped. Kernel readahead sends several reads at
  once through several FUSE threads, so they arrive slightly out of order; the tolerance (four
  chunks, four times the kernel readahead the mount sets, and mountpoint-s3's forward
  tolerance for the same reason) keeps that sequential.
* Chunks ahead are fetched in spans of ``max(1, window // streams)`` chunks per request, whole
  spans only (the last of the file may be shorter). With the defaults every span is one chunk:
  up to ``maximum`` requests in flight, as many at the end of a file as in its middle (larger
  spans left three or four streams running over the last 64 MiB, measured in issue 8).
"""

from __future__ import annotations

from dataclasses import dataclass

FIRST_WINDOW = 4  # chunks ahead once a second read continues the first
# Chunks ahead at most (32 MiB): the WAN profile's cold dd runs at 1.00x its limit (with 6,
# 1.01-1.04x; with 12, the same, for more memory).
MAX_WINDOW = 8
STREAMS = 16  # requests in flight per sequential reader, once the window is open
TOLERANCE = 4  # chunks


@dataclass(frozen=True, slots=True)
class Plan:
    """What one read asks of the scheduler: drop what has not started, then fetch spans."""

    cancel: bool
    spans: tuple[tuple[int, int], ...]  # (first chunk, last chunk), in order


class Window:
    """The sequential detector of one file of ``chunks`` chunks of ``chunk_size`` bytes."""

    def __init__(
        self, chunk_size: int, chunks: int, *, first: int = FIRST_WINDOW,
        maximum: int = MAX_WINDOW, streams: int = STREAMS, tolerance: int = TOLERANCE,
    ) -> None:
        self.chunk_size = chunk_size
        self.last_chunk = chunks - 1
        self.first = min(first, maximum)
        self.maximum = maximum
        self.streams = streams
        self.tolerance = tolerance * chunk_size
        self.size = 0  # chunks ahead now
        self._end: int | None = None  # furthest byte read so far
        self._start = 0  # where the present run of sequential reads began
        self._ahead = -1  # furthest chunk scheduled so far

    def read(self, offset: int, end: int) -> Plan:
        """A read of bytes [offset, end) is about to be served."""
        chunk_size = self.chunk_size
        chunk = (end - 1) // chunk_size
        cancel = False
        if self._end is not None and abs(offset - self._end) <= self.tolerance:
            crossed = chunk > (self._end - 1) // chunk_size
            if self.size == 0:
                if crossed or end - self._start >= chunk_size // 4:
                    self.size = self.first
            elif crossed:
                self.size = min(self.maximum, self.size * 2)
            self._end = max(self._end, end)
        else:
            cancel = self._end is not None
            self.size = 0
            self._start = offset
            self._end = end
            self._ahead = chunk
        return Plan(cancel, self._spans((self._end - 1) // chunk_size))

    def _spans(self, chunk: int) -> tuple[tuple[int, int], ...]:
        """Spans up to ``size`` chunks past ``chunk``, only whole ones (see the docstring)."""
        self._ahead = max(self._ahead, chunk)
        target = min(chunk + self.size, self.last_chunk)
        span = max(1, self.size // self.streams)
        spans = []
        while self._ahead < target and (target - self._ahead >= span
                                        or target == self.last_chunk):
            first = self._ahead + 1
            last = min(first + span - 1, self.last_chunk)
            spans.append((first, last))
            self._ahead = last
        return tuple(spans)
