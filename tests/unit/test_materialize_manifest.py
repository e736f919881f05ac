"""The manifest on its own: batched appends, what ``finish`` reads back, a torn last line.
Several runs (shards of one job array) share one output folder, so two ``Manifest`` objects
on one folder stand for two processes."""

from __future__ import annotations

import os

from xnatfs.materialize.manifest import BATCH, MANIFEST, MD5SUMS, Manifest, entry_for, meta_dir
from xnatfs.materialize.manifest import read_entries as read
from xnatfs.tree.model import Context


def entry(path: str, md5: str = "0" * 32):
    return entry_for(path, 3, md5, from_server=True, uri=f"/data/{path}",
                     context=Context(level="scan", project="P"))


def md5sums(root) -> set[str]:
    return set((root / MD5SUMS).read_text().splitlines())


def test_entries_are_written_a_batch_at_a_time_and_all_of_them_by_finish(tmp_path):
    manifest = Manifest(str(tmp_path))
    for k in range(BATCH - 1):
        manifest.record(entry(f"f{k}"))
    assert set(read(str(tmp_path))) == set()  # not yet a batch (and not yet 0.25 s old)
    manifest.record(entry(f"f{BATCH - 1}"))
    assert set(read(str(tmp_path))) == {f"f{k}" for k in range(BATCH)}
    manifest.record(entry("last"))
    manifest.finish()
    manifest.close()
    assert set(read(str(tmp_path))) == {f"f{k}" for k in range(BATCH)} | {"last"}
    assert len(md5sums(tmp_path)) == BATCH + 1


def test_a_forget_is_written_at_once_with_what_came_before_it(tmp_path):
    first = Manifest(str(tmp_path))
    first.record(entry("a"))
    first.finish()
    first.close()
    manifest = Manifest(str(tmp_path))
    manifest.record(entry("b"))
    manifest.forget("a")  # before its file is replaced: never an entry for bytes not there
    assert set(read(str(tmp_path))) == {"b"}
    manifest.close()


def test_finish_reads_back_what_another_run_appended_or_replaced(tmp_path):
    one, other = Manifest(str(tmp_path)), Manifest(str(tmp_path))
    one.record(entry("mine"))
    other.record(entry("theirs"))
    other.close()  # written
    one.finish()
    assert set(read(str(tmp_path))) == {"mine", "theirs"}
    assert md5sums(tmp_path) == {f"{'0' * 32}  mine", f"{'0' * 32}  theirs"}
    # the other run, started before, finishes after: the file it appended to was replaced
    late = Manifest(str(tmp_path))
    one.record(entry("more"))
    one.close()
    late.record(entry("late"))
    late.finish()
    late.close()
    assert set(read(str(tmp_path))) == {"mine", "theirs", "more", "late"}


def test_a_line_torn_by_a_kill_does_not_take_the_next_runs_first_entry(tmp_path):
    first = Manifest(str(tmp_path))
    first.record(entry("kept"))
    first.finish()
    first.close()
    path = os.path.join(meta_dir(str(tmp_path)), MANIFEST)
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"path": "torn", "si')  # a kill mid-write
    manifest = Manifest(str(tmp_path))
    assert set(manifest.entries) == {"kept"}
    manifest.record(entry("next"))
    manifest.close()  # appended after the torn line, which it ends first
    assert set(read(str(tmp_path))) == {"kept", "next"}
    again = Manifest(str(tmp_path))
    again.finish()
    again.close()
    assert set(read(str(tmp_path))) == {"kept", "next"}
    assert md5sums(tmp_path) == {f"{'0' * 32}  kept", f"{'0' * 32}  next"}
