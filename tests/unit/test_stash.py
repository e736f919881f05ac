"""The tree's stash: while the server cannot be reached, a listing costs it at most one try per
``PROBE_INTERVAL``; one that answers with errors or late is still asked every time."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from xnatfs.errors import ConnectError, ServerTimeout, XnatfsError
from xnatfs.tree import stash
from xnatfs.tree.stash import Stash


class Blobs:
    def __init__(self) -> None:
        self.kept: dict[str, bytes] = {}

    def get_blob(self, key: str) -> bytes | None:
        return self.kept.get(key)

    def put_blob(self, key: str, data: bytes) -> bool:
        self.kept[key] = data
        return True


class Server:
    """A listing's fetch that fails with ``error`` while it is set; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.error: XnatfsError | None = None

    def fetch(self) -> list[dict[str, str]]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return [{"ID": "P1"}]


def test_an_unreachable_server_is_not_asked_again_for_a_listing_never_kept(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(stash, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    kept, server = Stash(Blobs(), "http://xnat", "alice"), Server()
    assert kept.listing("/data/projects", {}, server.fetch) == [{"ID": "P1"}]
    server.error = ConnectError("cannot reach http://xnat")
    for path in ("/data/projects/P1/subjects", "/data/projects/P1/subjects",
                 "/data/projects/P1/files"):
        with pytest.raises(ConnectError):
            kept.listing(path, {}, server.fetch)
    assert server.calls == 2  # the first failure only: the others fail at once
    assert kept.listing("/data/projects", {}, server.fetch) == [{"ID": "P1"}]  # as kept
    assert server.calls == 2
    clock[0] += stash.PROBE_INTERVAL
    server.error = None  # back: the first listing after the interval asks, and gets it
    assert kept.listing("/data/projects/P1/files", {}, server.fetch) == [{"ID": "P1"}]
    assert server.calls == 3 and not kept.offline
    assert kept.listing("/data/projects/P1/subjects", {}, server.fetch) == [{"ID": "P1"}]
    assert server.calls == 4


def test_a_server_that_answers_late_is_asked_for_every_listing_never_kept(monkeypatch):
    monkeypatch.setattr(stash, "time", SimpleNamespace(monotonic=lambda: 1000.0))
    kept, server = Stash(Blobs(), "http://xnat", "alice"), Server()
    assert kept.listing("/data/projects", {}, server.fetch) == [{"ID": "P1"}]
    server.error = ServerTimeout("no answer")
    assert kept.listing("/data/projects", {}, server.fetch) == [{"ID": "P1"}]  # kept rows
    assert kept.offline
    for _ in range(3):
        with pytest.raises(ServerTimeout):
            kept.listing("/data/projects/P1/files", {}, server.fetch)
    assert server.calls == 5
