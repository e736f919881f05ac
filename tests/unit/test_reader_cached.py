"""Re-reads from the disk cache after a remount: no request, and no turn behind one.

After a remount nothing is known of whether the server honours Range, and the first ranged
request is a probe the others wait for (``rangeprobe``). A chunk the disk cache holds needs no
request, so it must not wait for that probe either: re-reads of a cached file went one chunk
at a time through the probe's turn, at a third of what the disk gives.
"""

from __future__ import annotations

import hashlib
import random
import threading
from pathlib import Path

from tests.unit.test_reader_faults import FakeBody
from xnatfs.reader.chunkcache import ChunkCache
from xnatfs.reader.fetcher import Fetcher
from xnatfs.reader.handle import FileHandle
from xnatfs.tree.model import RemoteFile

CHUNK = 1024
NONE = (0.0, 0.0, 0.0)


class GatedClient:
    """Serves files from memory; while ``gate`` is closed, every request waits for it."""

    base_url = "fake://xnat"

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.gate = threading.Event()
        self.asked = threading.Event()
        self.requests = 0

    def open_file(self, uri: str, start: int = 0, end: int | None = None,
                  attempts: object = None, since: str | None = None) -> FakeBody:
        self.requests += 1
        self.asked.set()
        assert self.gate.wait(30), "the test never opened the gate"
        data = self.files[uri]
        end = len(data) if end is None else end
        return FakeBody(data[start:end], start, True, len(data))


def test_a_remount_reads_its_cache_while_a_range_probe_is_out(tmp_path: Path) -> None:
    rng = random.Random(7)
    cached, other = rng.randbytes(10 * CHUNK - 3), rng.randbytes(6 * CHUNK)
    files = {"/cached": cached, "/other": other}
    x = RemoteFile("/cached", len(cached), hashlib.md5(cached).hexdigest())
    y = RemoteFile("/other", len(other), hashlib.md5(other).hexdigest())

    first = GatedClient(files)
    first.gate.set()
    cache = ChunkCache(str(tmp_path), 1 << 20, chunk_size=CHUNK)
    fetcher = Fetcher(first, cache, CHUNK, pauses=NONE)  # type: ignore[arg-type]
    handle = FileHandle(fetcher, x)
    assert handle.read(0, len(cached)) == cached
    handle.close()
    fetcher.close()
    cache.close()

    client = GatedClient(files)  # the remount: Range not known yet, the server held back
    cache = ChunkCache(str(tmp_path), 1 << 20, chunk_size=CHUNK)
    fetcher = Fetcher(client, cache, CHUNK, pauses=NONE, deadline=5)  # type: ignore[arg-type]
    probe = threading.Thread(target=fetcher.chunk, args=(y, 2))
    probe.start()
    assert client.asked.wait(30)  # the probe is out, and holds the turn
    try:
        handle = FileHandle(fetcher, x)
        got = b"".join(handle.read(offset, CHUNK) for offset in range(0, len(cached), CHUNK))
        handle.close()
        assert got == cached
        assert client.requests == 1  # the probe alone: every chunk came from the disk
    finally:
        client.gate.set()
        probe.join(30)
        fetcher.close()
        cache.close()
