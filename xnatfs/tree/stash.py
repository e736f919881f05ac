"""The last answer to every listing, kept on disk, so that a mount goes on while the server is
away: a laptop on a train reads yesterday's session from the cache.

Each listing (and each size asked of the server) that succeeds is written beside the chunk
cache; when the same listing later fails because the server cannot be reached, is silent or
answers with errors (``exc.transient``), the stored rows are served instead, stale, and the
tree keeps them only for its usual TTL, so the server is asked again soon. While it is away, the
server is asked at most once every ``PROBE_INTERVAL`` seconds, by whichever listing comes
first; the others get the stored rows at once instead of each waiting out the retries of a
dead server (a walk of a session is several listings deep). A listing never stored fails at
once too while the server cannot be reached at all (``ConnectError``: refused, no route), as
the reader's fetches do; a server that answers with errors or late is still asked. A refusal
(403, 404, a refused login) is never papered over. The store is the chunk cache's folder
(private, 0700; the rows are the server's, which may be as sensitive as the files), keyed by
server and user, so one user's listings are never shown to another.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from xnatfs.errors import ConnectError, XnatfsError

log = logging.getLogger(__name__)
T = TypeVar("T")
PROBE_INTERVAL = 5.0  # seconds between tries of a server that is away


class Store(Protocol):
    """Small values by key, checked on the way back (``ChunkCache`` is one)."""

    def get_blob(self, key: str) -> bytes | None: ...

    def put_blob(self, key: str, data: bytes) -> bool: ...


class Stash:
    """Serve the last good answer while the server is away; say once when it goes and comes."""

    def __init__(self, store: Store, server: str, user: str | None) -> None:
        self.store = store
        self.prefix = f"tree\0{server}\0{user or ''}\0"
        self.offline = False
        self._unreachable: ConnectError | None = None  # why the server could not be reached
        self._next_probe = 0.0
        self._lock = threading.Lock()

    def knows_server(self) -> bool:
        """Whether the list of projects was kept: enough to start a mount while away."""
        return self.store.get_blob(self.prefix + self._listing_key("/data/projects", {})) \
            is not None

    def listing(self, path: str, params: dict[str, str], fetch: Callable[[], T]) -> T:
        """``fetch()``'s rows, stored; the stored ones if it fails on the way."""
        return self._through(self._listing_key(path, params), fetch)

    @staticmethod
    def _listing_key(path: str, params: dict[str, str]) -> str:
        return f"listing\0{path}\0{json.dumps(params, sort_keys=True)}"

    def size(self, uri: str, fetch: Callable[[], int]) -> int:
        return self._through(f"size\0{uri}", fetch)

    def _through(self, key: str, fetch: Callable[[], T]) -> T:
        blob = None
        with self._lock:
            skip = self.offline and time.monotonic() < self._next_probe
            if self.offline and not skip:
                self._next_probe = time.monotonic() + PROBE_INTERVAL
            unreachable = self._unreachable
        if skip:
            blob = self.store.get_blob(self.prefix + key)
            if blob is not None:
                return json.loads(blob)  # type: ignore[no-any-return]
            if unreachable is not None:  # nothing kept, and no server: no use retrying it
                raise ConnectError(f"{unreachable} (asked again every {PROBE_INTERVAL:g} s)")
        try:
            value = fetch()
        except XnatfsError as exc:
            if not exc.transient:
                raise
            blob = blob or self.store.get_blob(self.prefix + key)
            if blob is None and not isinstance(exc, ConnectError):
                raise
            with self._lock:
                if not self.offline:
                    log.warning("offline: the server cannot be reached (%s); serving the cache",
                                exc)
                self.offline = True
                self._unreachable = exc if isinstance(exc, ConnectError) else None
                self._next_probe = time.monotonic() + PROBE_INTERVAL
            if blob is None:
                raise
            return json.loads(blob)  # type: ignore[no-any-return]
        with self._lock:
            self._unreachable = None
            if self.offline:
                self.offline = False
                log.warning("back online: the server answers again")
        self.store.put_blob(self.prefix + key, json.dumps(value).encode())
        return value
