"""A file body being received: the hot path of every read, held to its caller's deadline.

The body comes straight off the urllib3 pool of ``http`` (why requests is bypassed for file
bodies is told there). What is checked while it comes: a body shorter than it said
(``IntegrityError``), a server silent for the read timeout, and the deadline of the call it
serves (``ServerTimeout``, both).

A deadline must hold against a server that stalls mid-body, and a socket timeout set once
would not hold it: one ``read`` is many ``recv`` calls, each allowed the whole timeout. So
every ``recv`` is its own step (urllib3's ``read1``), given ``min(read timeout, what is left
of the deadline)``, and at the deadline the connection is dropped, never returned to the
pool with a half-read body on it. A body never tries again by itself: the reader resumes a
broken body with the same ``Attempts`` (``attempts.again``), so the header phase and the
body share one budget.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import urllib3

from xnatfs.errors import IntegrityError, ServerTimeout, TransferError
from xnatfs.xnat.http import kind_of, reason
from xnatfs.xnat.retry import Attempts

PIECE = 1 << 20  # bytes taken off the socket at a time, unless a caller asks for more


class Body:
    """A file body being received. ``start`` is where it begins in the file; ``ranged`` is
    False when the server ignored Range and sent the whole file. ``attempts`` is the budget it
    was opened with: every ``read`` ends by its deadline (a caller that reads one body across
    several calls may give it each call's budget in turn)."""

    def __init__(self, response: urllib3.BaseHTTPResponse, start: int, length: int | None,
                 total: int | None, ranged: bool, uri: str, head: bytes = b"", *,
                 attempts: Attempts | None = None, read_timeout: float = 60.0,
                 last_modified: str | None = None) -> None:
        self.response = response
        self._head = head  # bytes already taken off the socket (an HTML file, looked at)
        self.start = start
        self.length = length
        self.total = total
        self.ranged = ranged
        self.uri = uri
        self.got = 0
        self.attempts = attempts or Attempts.within(read_timeout)
        self.read_timeout = read_timeout
        self.last_modified = last_modified
        self._timeout: float | None = None  # the socket's, as last set (each set is a syscall)

    def read(self, size: int) -> bytes:
        """Exactly ``size`` bytes (fewer only at the declared end); IntegrityError when the
        body ends early, TransferError when it breaks, ServerTimeout when the server is silent
        for the read timeout or the deadline comes."""
        if self.length is not None:
            size = min(size, self.length - self.got)
        if size <= 0:
            return b""
        pieces: list[bytes] = []
        want = size
        while want > 0:
            piece = self.read1(want)
            if not piece:
                break
            pieces.append(piece)
            want -= len(piece)
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if len(data) < size and self.length is not None:
            self.response.close()
            raise IntegrityError(f"truncated body: {self.got} of {self.length} bytes")
        return data

    def read1(self, most: int) -> bytes:
        """Up to ``most`` bytes from one receive (b"" at the end), for a reader that keeps
        its own buffer: a zip's headers are a few bytes each, and a receive for each costs
        syscalls and a hand-off of the interpreter lock per file."""
        if self.length is not None:
            most = min(most, self.length - self.got)
        if most <= 0:
            return b""
        if self._head:
            data, self._head = self._head[:most], self._head[most:]
        else:
            data = self._recv(most)
        self.got += len(data)
        return data

    def _recv(self, most: int) -> bytes:
        """One ``recv`` of at most ``most`` bytes, within the deadline."""
        left = self.attempts.deadline - time.monotonic()
        if left <= 0:
            self._drop()
            raise ServerTimeout(f"{self.uri}: no more of it within the time allowed "
                                f"({self.got} bytes came)")
        timeout = min(self.read_timeout, left)
        if timeout != self._timeout:
            conn = self.response.connection
            sock = getattr(conn, "sock", None)
            if sock is not None:
                sock.settimeout(timeout)
                self._timeout = timeout
        try:
            return self.response.read1(most)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            self._drop()
            if kind_of(exc) is ServerTimeout:
                raise ServerTimeout(f"the server stopped sending {self.uri} after {self.got} "
                                    f"bytes (nothing for {timeout:.3g} s)") from None
            raise TransferError(f"download of {self.uri} interrupted after {self.got} bytes: "
                                f"{reason(exc)}") from None

    def _drop(self) -> None:
        """Close the connection: with part of a body on it, it cannot serve another request."""
        self.response.close()

    def chunks(self, size: int = PIECE) -> Iterator[bytes]:
        """The rest of the body in pieces of ``size`` bytes (the last may be shorter)."""
        while True:
            data = self.read(size)
            if not data:
                return
            yield data
            if self.length is None and len(data) < size:
                return

    def close(self) -> None:
        """Done with it: a body read to its end goes back to the pool, any other is dropped
        (its connection could not be reused before the rest of the body was drained)."""
        if self.length is not None and self.got >= self.length:
            self.response.release_conn()
        else:
            self._drop()

    def __enter__(self) -> Body:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

