"""Offline: while the server cannot be reached, the mount serves the last listings and the
cached files, says so once, and picks the server up again when it returns."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.mount import Mount, needs_fuse
from tests.support.oracle import Oracle
from xnat_emulator import Emulator

pytestmark = [pytest.mark.timeout(120), needs_fuse, pytest.mark.fuse]


def test_a_mount_reads_its_cache_while_the_server_is_away_and_comes_back(
        emulator: Emulator, mount: Callable[..., Mount], oracle: Callable[..., Oracle],
        tmp_path: Path) -> None:
    want = oracle(emulator)
    paths = sorted(want.files)
    read, unread = paths[: len(paths) // 2], paths[len(paths) // 2:]
    cache = str(tmp_path / "cache")
    ttl, probe = 0.5, 1.0  # the listings' TTL; how often a mount tries a server that is away
    m = mount(emulator, "--ttl", str(ttl), "--timeout", "2", cache_dir=cache, probe=probe)
    for path in read:
        assert (m / path).read_bytes() == want.read(path)
    for path in unread:  # listed, not read
        os.stat(m / path)
    port = emulator.port
    emulator.stop()
    time.sleep(ttl + 0.2)  # the listings' TTL: the mount must ask again, and cannot
    assert sorted(os.listdir(m.path)) == sorted({p.split("/")[0] for p in paths})
    for path in read:
        assert (m / path).read_bytes() == want.read(path), path
    with pytest.raises(OSError) as failure:
        (m / unread[0]).read_bytes()
    assert failure.value.errno == errno.EIO
    log = m.log.read_text()
    assert log.count("offline:") == 1, log

    # A mount started while the server is away comes up on its cache.
    m.stop()
    again = mount(emulator, "--ttl", str(ttl), "--timeout", "2", cache_dir=cache, probe=probe)
    assert "offline" in again.log.read_text()
    for path in read:
        assert (again / path).read_bytes() == want.read(path), path

    # The server comes back: what was not cached reads too.
    emulator.start(port)
    time.sleep(probe + 0.2)  # the offline mount asks the server again within ``probe``
    for path in unread:
        assert (again / path).read_bytes() == want.read(path), path
    assert "back online" in again.log.read_text()
