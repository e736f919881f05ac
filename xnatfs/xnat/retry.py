"""The one retry policy: how often, and for how long, one call may try a request again.

A call (a FUSE read, an fsspec call, a listing, a materialize step) gets one ``Attempts``
with its deadline; every layer under it that may try again (the HTTP exchange before its
headers, a body that broke after them) spends the same budget, so retries never stack: a
request is tried at most ``MAX_TRIES`` times in all, and never past the deadline. The pause
before a try grows (``PAUSES``) unless the server said how long to wait (``Retry-After``),
and is never longer than what is left of the deadline.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from xnatfs.errors import ServerTimeout, XnatfsError

log = logging.getLogger(__name__)

MAX_TRIES = 4  # one try and three more, at most, whatever fails
PAUSES = (0.1, 0.3, 0.9)  # seconds before the second, third and fourth try
RETRY_AFTER_MAX = 10.0  # a Retry-After above this is taken as this (still within the deadline)
MIN_WAIT = 0.05  # seconds any socket operation is given, even at the deadline


@dataclass
class Attempts:
    """The budget of one call: ``MAX_TRIES`` tries before ``deadline`` (``time.monotonic``)."""

    deadline: float
    tries: int = MAX_TRIES
    used: int = 0
    retry_after: float | None = field(default=None, repr=False)
    pauses: tuple[float, ...] = field(default_factory=lambda: PAUSES, repr=False)
    """``PAUSES`` as it is when the budget is made (a test may shorten them for a process)."""

    @classmethod
    def within(cls, seconds: float, tries: int = MAX_TRIES) -> Attempts:
        return cls(time.monotonic() + seconds, tries)

    def left(self) -> float:
        """Seconds until the deadline (at least ``MIN_WAIT``: a socket needs some timeout)."""
        return max(self.deadline - time.monotonic(), MIN_WAIT)

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def start(self, what: str) -> None:
        """Before a try: count it; ServerTimeout if the deadline has passed already."""
        if self.used and self.expired():
            raise ServerTimeout(f"{what}: no answer within the time allowed")
        self.used += 1

    def again(self, exc: XnatfsError, what: str) -> None:
        """After a failed try: pause and return if one more is allowed, else raise ``exc``.
        Only transient failures are tried again."""
        if not exc.transient or self.used >= self.tries:
            raise exc
        pause = self.pauses[min(self.used - 1, len(self.pauses) - 1)]
        if self.retry_after is not None:
            pause, self.retry_after = min(self.retry_after, RETRY_AFTER_MAX), None
        if time.monotonic() + pause >= self.deadline:
            raise exc
        log.info("%s failed (%s); trying again in %.2g s", what, exc, pause)
        time.sleep(pause)
