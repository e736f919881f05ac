"""A whole-file stream without a disk cache, read by several handles at once: it goes at the
pace of its slowest reader, so none of them has to stream the file again from byte 0
(``Fetcher.reader_at``); a reader that does not move is waited for only ``PATIENCE``."""

from __future__ import annotations

import threading
import time

import pytest

from tests.unit.test_reader_faults import CHUNK, NONE, FakeClient
from xnatfs.reader import fetcher as fetcher_module
from xnatfs.reader.fetcher import HELD_AHEAD, Fetcher
from xnatfs.reader.handle import FileHandle
from xnatfs.tree.model import RemoteFile

CHUNKS = 3 * HELD_AHEAD
CONTENT = bytes(range(256)) * (CHUNKS * CHUNK // 256)


def rangeless() -> tuple[FakeClient, Fetcher, RemoteFile]:
    """A server that answers every Range with the whole file, and a reader whose memory holds
    two chunks: what the stream brings ahead survives only while held for a reader."""
    client = FakeClient(CONTENT, ["whole"] * 100)
    fetcher = Fetcher(client, None, CHUNK, memory=2 * CHUNK, pauses=NONE)  # type: ignore[arg-type]
    return client, fetcher, RemoteFile("/data/f", len(CONTENT), None)


def read_all(handle: FileHandle) -> bytes:
    parts, offset = [], 0
    while offset < len(CONTENT):
        parts.append(handle.read(offset, CHUNK // 2))
        offset += len(parts[-1])
    return b"".join(parts)


def test_a_fast_reader_waits_for_a_slow_one_and_the_file_is_streamed_once() -> None:
    client, fetcher, file = rangeless()
    slow, fast = FileHandle(fetcher, file), FileHandle(fetcher, file)
    got: list[bytes] = []
    thread = threading.Thread(target=lambda: got.append(read_all(fast)))
    thread.start()
    item = fetcher.item(file)
    deadline = time.monotonic() + 10  # the stream fills what it may hold for the slow one
    while len(item.held) < HELD_AHEAD and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert thread.is_alive()  # held back, not run to the end past the slow reader
    assert read_all(slow) == CONTENT
    thread.join(10)
    assert got == [CONTENT]
    assert client.requests == 1
    slow.close(), fast.close(), fetcher.close()


def test_a_handle_that_never_reads_holds_the_stream_back_only_for_a_while(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetcher_module, "PATIENCE", 0.2)
    client, fetcher, file = rangeless()
    idle, reader = FileHandle(fetcher, file), FileHandle(fetcher, file)
    assert read_all(reader) == CONTENT  # the idle handle was given up on, once
    assert client.requests == 1
    assert read_all(idle) == CONTENT  # when it does read, it streams the file itself
    assert client.requests == 2
    idle.close(), reader.close(), fetcher.close()


def test_a_closed_handle_is_not_waited_for() -> None:
    client, fetcher, file = rangeless()
    gone, reader = FileHandle(fetcher, file), FileHandle(fetcher, file)
    gone.close()
    assert read_all(reader) == CONTENT
    reader.close()
    assert client.requests == 1 and not fetcher.item(file).readers
    fetcher.close()
