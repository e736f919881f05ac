"""Writing response bodies: throttling, injected faults and exact byte accounting.

Bytes are counted in the request log *before* they are handed to the kernel (and corrected
if the send fails), so a client that has read a body always sees it fully counted. Fault
points are byte offsets into the body, so a truncation or a stall lands mid-body, after the
headers promised the full length.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field

from xnat_emulator.archive import File
from xnat_emulator.content import Content
from xnat_emulator.knobs import TokenBucket
from xnat_emulator.log import Record

_BUFFER = 64 * 1024
_SENDFILE_MAX = 8 << 20


class Abort(Exception):
    """The connection must end now: a planned truncation or reset, or the server stopping."""

    def __init__(self, reset: bool = False) -> None:
        super().__init__("reset" if reset else "closed")
        self.reset = reset


@dataclass
class Response:
    """An answer before it is written: a fixed body, a file range, or a zip stream."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    kind: str = "other"
    chunked: bool = False
    """Send ``body`` with Transfer-Encoding: chunked (XNAT's listings have no length)."""
    content: Content | None = None
    start: int = 0
    length: int = 0
    """File bytes promised by Content-Length; more than exist for XNAT's unchecked ranges."""
    zip_entries: list[tuple[str, File]] | None = None

    def header(self, name: str, value: str) -> Response:
        self.headers.append((name, value))
        return self

    @property
    def body_size(self) -> int:
        """Expected body bytes, used to place faults."""
        if self.content is not None:
            return self.length
        if self.zip_entries is not None:
            return sum(f.size for _, f in self.zip_entries)
        return len(self.body)


@dataclass
class Plan:
    """Where in the body a fault strikes (payload offsets)."""

    cut_at: int | None = None
    reset: bool = False
    stall_at: int | None = None
    stall_seconds: float = 0.0


class BodyWriter:
    """Writes one body to a socket, chunk-framed or raw, paced and faulted as planned."""

    def __init__(self, sock: socket.socket, record: Record, plan: Plan,
                 buckets: list[TokenBucket], stop: threading.Event, chunked: bool) -> None:
        self.sock = sock
        self.record = record
        self.plan = plan
        self.buckets = buckets
        self.stop = stop
        self.chunked = chunked
        self.sent = 0
        self._buffer = bytearray()

    # zipfile needs write() and flush(); flush must not emit, or every entry header would
    # become its own tiny chunk.
    def write(self, data: bytes | memoryview) -> int:
        size = len(data)
        if self.chunked and size < _BUFFER:
            self._buffer += data
            if len(self._buffer) >= _BUFFER:
                self._drain()
            return size
        self._drain()
        self._emit(memoryview(data).cast("B"))
        return size

    def flush(self) -> None:
        """Nothing to do: buffered bytes go out when the buffer fills or at ``finish``."""

    def finish(self) -> None:
        self._drain()
        if self.chunked:
            self._raw(b"0\r\n\r\n", count=False)

    def send_file(self, content: Content, start: int, length: int) -> None:
        """File bytes ``[start, start+length)`` as far as they exist; sendfile when possible."""
        end = min(content.size, start + length)
        quiet = self.plan.cut_at is None and self.plan.stall_at is None
        if content.path is not None and quiet and not any(b.active() for b in self.buckets):
            self._sendfile(content, start, end)
            return
        for piece in content.chunks(start, end - start):
            self._emit(memoryview(piece).cast("B"))

    def _sendfile(self, content: Content, offset: int, end: int) -> None:
        assert content.path is not None
        with open(content.path, "rb") as fh:
            while offset < end:
                want = min(_SENDFILE_MAX, end - offset)
                self.record.bytes_sent += want
                try:
                    done = os.sendfile(self.sock.fileno(), fh.fileno(), offset, want)
                except OSError:
                    self.record.bytes_sent -= want
                    raise
                self.record.bytes_sent -= want - done
                if done == 0:
                    return
                offset += done
                self.sent += done

    def _drain(self) -> None:
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            self._emit(memoryview(data))

    def _emit(self, view: memoryview) -> None:
        while len(view):
            limit = self._until_fault()
            size = min(len(view), limit, *(b.chunk_size() for b in self.buckets))
            for bucket in self.buckets:
                bucket.take(size, self.stop)
            if self.stop.is_set():
                raise Abort()
            piece = view[:size]
            if self.chunked:
                self._raw(b"%x\r\n" % size, count=False)
            self._raw(piece, count=True)
            if self.chunked:
                self._raw(b"\r\n", count=False)
            view = view[size:]

    def _until_fault(self) -> int:
        """Bytes that may go out before the next fault point; handles a point reached."""
        plan = self.plan
        if plan.stall_at is not None and self.sent >= plan.stall_at:
            plan.stall_at = None
            if self.stop.wait(plan.stall_seconds):
                raise Abort()
        if plan.cut_at is not None and self.sent >= plan.cut_at:
            raise Abort(plan.reset)
        points = [p - self.sent for p in (plan.stall_at, plan.cut_at) if p is not None]
        return min(points, default=1 << 30)

    def _raw(self, data: bytes | memoryview, *, count: bool) -> None:
        size = len(data)
        if count:
            self.record.bytes_sent += size
        done = 0
        try:
            while done < size:
                done += self.sock.send(data[done:])
        except OSError:
            if count:
                self.record.bytes_sent -= size - done
            raise
        if count:
            self.sent += size
