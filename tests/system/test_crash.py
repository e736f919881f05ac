"""Crash safety (SECURITY.md): materialize killed with SIGKILL at random moments and rerun;
a mount killed with SIGKILL leaves a chunk cache whose damaged entries are refetched, never
served."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import diskcache
import pytest

from tests.support.mount import Mount, needs_fuse, unmount
from tests.support.oracle import Oracle, is_record, output_files
from xnat_emulator import Emulator, EmulatorConfig, SyntheticSpec, synthetic_archive
from xnatfs.materialize.output import PART_SUFFIX
from xnatfs.reader.chunkcache import SMALL_IN_DB

USERS = {"alice": "secret"}
FILE = 50_000
SPEC = SyntheticSpec(projects=1, subjects=1, sessions=2, scans=2, dicoms=10, dicom_size=FILE,
                     niftis=0, assessors=0, session_resources=0, subject_resources=0,
                     project_resources=0, seed=41)
# Above chunkcache.SMALL_IN_DB: cached chunks are files of their own, which a crash can damage
# (smaller ones live inside SQLite, whose transactions a SIGKILL cannot cut).
DAMAGE_SPEC = dataclasses.replace(SPEC, dicoms=2, dicom_size=SMALL_IN_DB + 1000)
pytestmark = pytest.mark.timeout(180)


def committed_files(cache: Path) -> int:
    """Chunks stored in files whose index rows a live cache has committed (read-only)."""
    db = cache / diskcache.core.DBNAME
    if not db.exists():
        return 0
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as con:
        try:
            row = con.execute("SELECT COUNT(*) FROM Cache WHERE filename IS NOT NULL").fetchone()
        except sqlite3.OperationalError:  # the table is not made yet
            return 0
    return int(row[0])


def expected(emu: Emulator) -> dict[str, bytes]:
    o = Oracle.of(emu)
    return {p: o.read(p) for p in o.files}


def test_sigkill_at_ten_random_moments_then_rerun(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "XNAT_USER": "alice", "XNAT_PASS": "secret"}
    rng = random.Random(5)
    with Emulator(synthetic_archive(SPEC), EmulatorConfig(bandwidth=5e5),
                  users=USERS) as emu:
        want = expected(emu)
        total = sum(map(len, want.values()))
        emu.log.clear()
        # The per-file route, whose kills land between and inside ranged GETs; a kill inside
        # a zip stream is tests/system/test_materialize_zip_cli.py's.
        cmd = [sys.executable, "-m", "xnatfs", "materialize", emu.url, "/", "-o", str(out),
               "-j", "2", "--no-zip"]
        bad: list[str] = []
        stop = threading.Event()

        def watch() -> None:  # at every moment, a final name holds the whole, right file
            while not stop.wait(0.01):
                for path in out.rglob("*"):
                    if path.is_file() and not path.name.endswith(PART_SUFFIX) and \
                            not is_record(path, out):
                        rel = str(path.relative_to(out))
                        if rel not in want:
                            bad.append(f"{rel} is no tree file")
                            continue
                        try:
                            if path.read_bytes() != want[rel]:
                                bad.append(rel)
                        except FileNotFoundError:
                            bad.append(f"{rel} vanished")

        watcher = threading.Thread(target=watch)
        watcher.start()
        kills = 0
        try:
            for _ in range(10):
                proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
                before = emu.log.bytes_sent(kind="file")
                # Kill once some bytes flowed, at a random point of the rest of the run.
                deadline = time.monotonic() + 20
                while emu.log.bytes_sent(kind="file") == before and proc.poll() is None \
                        and time.monotonic() < deadline:
                    time.sleep(0.005)
                time.sleep(rng.uniform(0.0, 0.15))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    kills += 1
                proc.wait()
            # The bandwidth limit is there to put the kills mid-run; the rerun that completes
            # needs none, and reads on at full speed (what it fetches is counted, not timed).
            emu.config.bandwidth = None
            final = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60,
                                   check=False)
        finally:
            stop.set()
            watcher.join()
        fetched = emu.log.bytes_sent(kind="file")
    assert final.returncode == 0, final.stderr
    assert kills >= 8  # the run was really interrupted, again and again
    assert bad == []
    have = {rel: p.read_bytes() for rel, p in output_files(out).items()}
    assert have == want  # byte-identical, and no part file left
    # Each kill may lose the files in flight (-j 2), never what was already written.
    assert total <= fetched <= total + kills * 2 * FILE


@needs_fuse
@pytest.mark.fuse
def test_a_damaged_cache_after_sigkill_is_refetched_not_served(
        mount: Callable[..., Mount], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with Emulator(synthetic_archive(DAMAGE_SPEC), EmulatorConfig(), users=USERS) as emu:
        want = expected(emu)
        first = mount(emu, cache_dir=str(cache))
        for path, data in want.items():
            assert (first / path).read_bytes() == data
        assert first.process is not None
        # Chunks reach the disk after their readers have them, and are in the cache once their
        # index rows are committed: a chunk's file is written before its row, and a kill
        # between the two leaves a file the next mount rightly does not know of.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and committed_files(cache) < len(want):
            time.sleep(0.02)
        first.process.send_signal(signal.SIGKILL)  # no clean shutdown of the cache
        first.process.wait()
        unmount(first.path)
        values = sorted(cache.rglob("*.val"))
        assert len(values) == len(want)
        flipped, halved = values[0], values[1]
        data = bytearray(flipped.read_bytes())
        data[len(data) // 2] ^= 0xFF
        flipped.write_bytes(bytes(data))
        os.truncate(halved, halved.stat().st_size // 2)  # a write cut short
        emu.log.clear()
        second = mount(emu, cache_dir=str(cache))
        for path, data in want.items():
            assert (second / path).read_bytes() == data, path
        assert emu.log.count(kind="file") == 2  # exactly the two damaged chunks, refetched
