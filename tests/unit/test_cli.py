"""The command line's own plumbing: global options in both places, and ``cache`` refusing
folders that are not a cache."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from xnatfs.cli import build_parser, main
from xnatfs.reader.chunkcache import ChunkCache
from xnatfs.tree.model import RemoteFile


@pytest.mark.parametrize(("argv", "count"), [
    (["materialize", "URL", "-o", "out"], 0),
    (["-v", "materialize", "URL", "-o", "out"], 1),
    (["materialize", "URL", "-o", "out", "-v"], 1),
    (["materialize", "URL", "-o", "out", "--verbose"], 1),
    (["materialize", "URL", "-vv", "-o", "out"], 2),
    (["--verbose", "ls", "URL", "-v"], 2),
    (["cache", "stats", "-vv"], 2),
])
def test_verbose_before_and_after_the_command(argv: list[str], count: int) -> None:
    args = build_parser().parse_args(argv)
    assert args.verbose + args.verbose_after == count


def _plain_folder(tmp_path: Path, database: bytes | None) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    folder.chmod(0o755)
    (folder / "holiday.jpg").write_bytes(b"not a chunk")
    if database is not None:
        (folder / "cache.db").write_bytes(database)
    return folder


@pytest.mark.parametrize("action", ["stats", "clear"])
@pytest.mark.parametrize("database", [None, b"my own notes, not SQLite"])
def test_cache_command_leaves_a_folder_that_is_not_a_cache_alone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], action: str,
        database: bytes | None) -> None:
    folder = _plain_folder(tmp_path, database)
    before = sorted(os.listdir(folder))
    assert main(["cache", action, "--cache-dir", str(folder)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "is not an xnatfs chunk cache" in err
    assert sorted(os.listdir(folder)) == before  # no cache.db, -wal or -shm created
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755  # not made private
    assert (folder / "holiday.jpg").read_bytes() == b"not a chunk"
    if database is not None:
        assert (folder / "cache.db").read_bytes() == database  # not "repaired" by a wipe


def test_cache_command_works_on_a_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = ChunkCache(str(tmp_path / "c"), min_free=0)
    assert cache.put(RemoteFile("/data/files/x", 3, None), 0, b"abc")
    cache.close()
    assert main(["cache", "stats", "--cache-dir", str(tmp_path / "c")]) == 0
    assert "chunks:    1" in capsys.readouterr().out
    assert main(["cache", "clear", "--cache-dir", str(tmp_path / "c")]) == 0
    assert capsys.readouterr().out.startswith("removed 1 chunks")
