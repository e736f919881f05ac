"""Whether the server honours Range, learnt from one request before the others go out.

A server that answers a Range with the whole file (200, not 206) sends a request for chunk
``k`` the ``k`` chunks before it as well, and the fetcher cannot take them from that body for
the readers of those chunks: they were claimed, and asked for, by requests of their own. A
reader that opens its window at once (read-ahead, materialize's eight chunks of one file) had
up to eight requests out before the first answer came back; each then streamed the file from
byte 0 to its chunk. Measured with materialize on a Range-less emulator, one 21-chunk file:
2.5-3.3x the file sent, the more the busier the machine.

So until some request has shown what the server does with Range, requests for chunks of files
of several chunks go one at a time: the first goes out (the probe) and the others wait for its
answer's headers. If it was a 206, they all go out at once; if a 200, the probe's body has
claimed the whole file by then, and they wait for its chunks instead of asking again. The cost
is one response time, once per process. A probe that fails before its answer (a refused
connection, a 5xx) hands the turn to the next waiter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from xnatfs.errors import ServerTimeout


class RangeProbe:
    """One probe at a time until a ranged request has been answered; then no gate at all."""

    def __init__(self) -> None:
        self.known = False  # set once, never cleared: read without the lock
        self._probing = False
        self._answer = threading.Condition()

    @contextmanager
    def turn(self, deadline: float) -> Iterator[None]:
        """Around claiming and fetching chunks: the caller's turn, once no probe is out or the
        answer is known. Raises ServerTimeout if the probe is still out at ``deadline``."""
        if self.known:
            yield
            return
        with self._answer:
            while self._probing and not self.known:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ServerTimeout("no answer yet to the first ranged request")
                self._answer.wait(left)
            mine = not self.known
            self._probing |= mine
        try:
            yield
        finally:
            if mine:
                with self._answer:
                    self._probing = False
                    self._answer.notify_all()

    def answered(self) -> None:
        """A ranged request has its answer, and what follows from it is in place (a whole-file
        body has claimed the chunks it will bring): the waiters may go."""
        if not self.known:
            with self._answer:
                self.known = True
                self._answer.notify_all()
