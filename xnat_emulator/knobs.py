"""Runtime knobs of the emulator: realism switches and fault injection.

One mutable dataclass, read by the serving threads on every request, so a test can flip a
knob while the server runs (``emu.config.error_rate = 0.3``) without restarting it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class EmulatorConfig:
    """Everything about the emulator's behaviour that is not the archive or the users."""

    latency: float = 0.0
    """Seconds added before every response."""
    bandwidth: float | None = None
    """Aggregate body bytes/s across all connections (None: unlimited)."""
    conn_bandwidth: float | None = None
    """Body bytes/s per connection (None: unlimited)."""
    bandwidth_kinds: frozenset[str] | None = None
    """Kinds of answer (``Record.kind``, e.g. ``{"file"}``) the two bandwidth limits pace; the
    others go at full speed. None: every body."""
    range_enabled: bool = True
    """False: Range is ignored and the full body comes back with 200."""
    error_rate: float = 0.0
    """Fraction of requests answered 500/502/503/504 instead."""
    retry_after: float | None = None
    """Set: the injected errors are all 503 with ``Retry-After`` of this many seconds
    (rounded up to whole seconds, the header's form), as an overloaded server or a
    maintenance page says when to come back."""
    truncate_rate: float = 0.0
    """Fraction of bodies cut short: the full length is promised, the connection closes early."""
    reset_rate: float = 0.0
    """Fraction of bodies interrupted by a TCP reset."""
    stall_rate: float = 0.0
    """Fraction of bodies that stop mid-way for ``stall_seconds`` before going on."""
    stall_seconds: float = 30.0
    session_timeout: float = 900.0
    """Idle seconds before a JSESSIONID expires (XNAT default: 15 minutes)."""
    html_login_on_expiry: bool = False
    """Unauthenticated data requests get 200 + the HTML login page instead of 401."""
    context_path: str = ""
    """Deployment prefix such as ``/xnat``; never part of the URIs inside listings."""
    require_login: bool = True
    """False: requests without credentials run as ``guest`` and see public projects."""
    max_failed_logins: int = 20
    """Failed logins after which an account is locked for ``lockout_seconds``."""
    seed: int = 0
    """Seeds the fault draws, so a serial run injects the same faults every time."""
    lockout_seconds: float = 3600.0
    max_sessions: int = 1000
    """Live sessions per user; past it, logins fail with 401 (XNAT's concurrentMaxSessions)."""
    token_lifetime: float = 2 * 24 * 3600.0
    """Seconds an alias token lives from its issue (XNAT's ``aliasTokenTimeout``, 2 days)."""
    listing_delay: float = 0.0
    """Extra seconds before every JSON listing (a slow database)."""
    proxy_timeout: float | None = None
    """A response slower than this becomes a proxy's 504 after this many seconds."""
    validate_ranges: bool = False
    """True: a range past the end gets 416. XNAT does not check, it sends a short body."""
    shuffle_rows: bool = False
    """Shuffle row order in listings, as an unordered SQL result may."""
    login_page_rate: float = 0.0
    """Fraction of data requests (listings, items, files; GET and HEAD) whose session is
    dropped and that get 200 + the HTML login page, as a flaky session store behind a proxy
    gives."""
    shift_rate: float = 0.0
    """Fraction of 206 file bodies whose bytes are one off (from start+1, or start-1 at the
    end of the file) under correct headers: a lying proxy or cache."""
    blank_file_rows: bool = False
    """Every file row of a listing has an empty Size and digest (XNAT before a catalog
    refresh)."""
    fault_streak: int | None = None
    """At most this many faults in a row for the same request (method, path, query, range);
    the next try of it is clean. None: no limit."""
    log_limit: int = 100_000
    """Records the request log keeps (the most recent ones); read when the server is made."""
    fault_kinds: frozenset[str] | None = None
    """Kinds of answer (see ``Record.kind``, e.g. ``{"file", "zip"}``) the fault knobs may
    hit. None: errors hit any request, truncations, resets and stalls hit data bodies
    (listing, item, file, zip)."""

    catalog_cost: float = 0.0
    """Seconds of server work per catalog entry, charged on every file GET, file listing and
    zip of the resources the request touches: XNAT parses a resource's whole catalog XML on
    each of them (``CatalogUtils.getOrCreateAndClean``), so a resource fetched file by file
    costs O(N) per file and O(N^2) in all, a zip O(N) once."""
    server_cores: int | None = None
    """Requests whose catalog work runs at once; the others wait for a core (None: no
    limit). Read when the server is made."""
    zip_truncate_rate: float = 0.0
    """Fraction of zip bodies cut after a random number of bytes (the connection closes)."""
    zip_garble_rate: float = 0.0
    """Fraction of zip entries whose bytes are changed before they are zipped: the CRC fits
    the wrong bytes, only the listing's MD5 tells."""
    broken_zips: str = ""
    """``"garbage"``: zip bodies that are not zips; ``"names"``: entry names that match no
    listed file; ``"patterns"``: no zips of file patterns (``files/1*?format=zip`` is 404,
    as on a server without ``FileList``'s patterns); ``"whole"``: patterns ignored, the
    whole resource sent. Empty: sound zips."""

    @property
    def path_prefix(self) -> str:
        """``context_path`` normalised: ``""`` or ``/name`` without a trailing slash."""
        path = self.context_path.strip("/")
        return f"/{path}" if path else ""


class TokenBucket:
    """A bytes/s limiter whose rate is read on each call, so it follows the knobs live.

    Callers take tokens before sending and sleep off any debt, so several connections sharing
    one bucket together stay under the rate.
    """

    def __init__(self, rate: Callable[[], float | None]) -> None:
        self._rate = rate
        self._lock = threading.Lock()
        self._tokens = 0.0
        self._stamp = time.monotonic()

    def active(self) -> bool:
        return bool(self._rate())

    def chunk_size(self) -> int:
        """A piece small enough to pace smoothly (about 20 ms of the rate)."""
        rate = self._rate()
        return 1 << 20 if not rate else max(4096, min(256 * 1024, int(rate / 50)))

    def take(self, n: int, stop: threading.Event) -> None:
        rate = self._rate()
        if not rate:
            return
        with self._lock:
            now = time.monotonic()
            burst = rate * 0.05
            self._tokens = min(burst, self._tokens + (now - self._stamp) * rate) - n
            self._stamp = now
            debt = -self._tokens
        if debt > 0:
            stop.wait(debt / rate)


class Cores:
    """The server's cores for catalog work: at most ``count()`` requests charged at once, the
    others wait for one, as requests queue on a real server's CPUs. The count is read on each
    call, so it follows the knobs live; ``peak`` is the most that ever ran at once."""

    def __init__(self, count: Callable[[], int | None]) -> None:
        self._count = count
        self._free = threading.Condition()
        self.busy = 0
        self.peak = 0

    def work(self, seconds: float, stop: threading.Event) -> None:
        """Hold a core for ``seconds`` (less if the server stops)."""
        with self._free:
            while (limit := self._count()) and self.busy >= limit and not stop.is_set():
                self._free.wait(0.1)
            self.busy += 1
            self.peak = max(self.peak, self.busy)
        try:
            stop.wait(seconds)
        finally:
            with self._free:
                self.busy -= 1
                self._free.notify()
