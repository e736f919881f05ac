"""The request log: what every request cost, so tests can assert on requests and bytes.

It keeps only the most recent ``limit`` records (``EmulatorConfig.log_limit``), so a demo or
soak server that runs for days holds a bounded amount of memory; the default is far above
what any one test or benchmark asserts on.

A record is appended when the request arrives and completed as the response goes out, so a
client that has just read a response always finds its record, with the status already set
and every body byte it received already counted.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TextIO


@dataclass
class Record:
    """One request as the server saw it."""

    method: str
    path: str
    """Raw path as sent, without the query and without the context path."""
    query: str
    range: str | None
    """The Range header, if any."""
    time: float
    """Arrival, seconds since the epoch."""
    status: int = 0
    """0 until the status line is sent."""
    bytes_sent: int = 0
    """Body bytes handed to the socket (chunk framing and headers excluded)."""
    user: str | None = None
    login: str | None = None
    """The name the request's session logged in with: the user, or an alias token."""
    done: float = 0.0
    """When the response was finished (0 until then), seconds since the epoch."""
    kind: str = "other"
    """What was served: listing, item (a single object), file, zip, auth (login, session,
    token and the 401/302 turn-aways), page (HTML pages), error (404s and the like), other."""
    fault: str | None = None
    """The injected fault, if any: error, truncate, reset, stall, timeout."""
    catalog_entries: int = 0
    """Catalog entries the request was charged for (``EmulatorConfig.catalog_cost``)."""


class RequestLog:
    """Thread-safe ring of the most recent records, with small query helpers."""

    def __init__(self, limit: int = 100_000, sink: TextIO | None = None) -> None:
        self._lock = threading.Lock()
        self._records: deque[Record] = deque(maxlen=limit)
        self._sink = sink

    def add(self, record: Record) -> Record:
        with self._lock:
            self._records.append(record)
        return record

    def finish(self, record: Record) -> None:
        """Stamp the end of a response, and copy the record to the sink as one JSON line:
        a client in another process (a benchmark) can then count what it cost."""
        record.done = time.time()
        if self._sink is not None:
            line = json.dumps(asdict(record), separators=(",", ":")) + "\n"
            with self._lock:
                self._sink.write(line)
                self._sink.flush()

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def records(self) -> list[Record]:
        with self._lock:
            return list(self._records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records())

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def select(
        self,
        *,
        method: str | None = None,
        path_prefix: str | None = None,
        status: int | None = None,
        kind: str | None = None,
        user: str | None = None,
        fault: str | None = None,
    ) -> list[Record]:
        """Records matching every filter given."""
        return [
            r
            for r in self.records()
            if (method is None or r.method == method)
            and (path_prefix is None or r.path.startswith(path_prefix))
            and (status is None or r.status == status)
            and (kind is None or r.kind == kind)
            and (user is None or r.user == user)
            and (fault is None or r.fault == fault)
        ]

    def count(self, **filters: str | int | None) -> int:
        """How many requests match, e.g. ``count(method="GET", status=206)``."""
        return len(self.select(**filters))  # type: ignore[arg-type]

    def bytes_sent(self, **filters: str | int | None) -> int:
        """Body bytes sent by the matching requests, e.g. ``bytes_sent(kind="file")``."""
        return sum(r.bytes_sent for r in self.select(**filters))  # type: ignore[arg-type]

    def bytes_sent_for(self, path_prefix: str) -> int:
        """Body bytes sent for paths under ``path_prefix``."""
        return self.bytes_sent(path_prefix=path_prefix)
