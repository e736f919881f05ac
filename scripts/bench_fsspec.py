#!/usr/bin/env python3
"""Benchmark the ``xnat://`` fsspec filesystem: every figure beside a same-run baseline, as one
Markdown table.

    .venv/bin/python scripts/bench_fsspec.py               # full run, medians of 3 (root)
    .venv/bin/python scripts/bench_fsspec.py --quick       # small smoke configuration
    .venv/bin/python scripts/bench_fsspec.py --runs 1

Figures (the targets are issue 9's "Performance"):

* WAN (benchlib's profile, as bench_mount's WAN figures): ``cat_file`` of a 256 MiB file, and
  ``get`` of a session of 1,000 files of 128 KiB, each against the link limit L + B / BW;
* loopback: ``cat_file`` of a 256 MiB file, and ``open`` then 1 MiB reads to the end (what
  ``dd`` does; ``cat_file`` also builds one bytes object), against a cold ``dd bs=1M`` of the
  same file through a fresh mount; ``get`` of the session against ``cp -r`` through one.

The filesystem runs in this process, so its CPU is this process's (all threads, until the
server has been quiet a moment); the emulator and the mount run in their own. Every run
starts with a new filesystem on an empty chunk cache, logged in (as a mount is before its
first read), and page caches dropped when root. The walk down to a file read is not timed (as
for the mount's ``dd``); the walk of a session fetched is (as for ``cp -r``). Bytes are
checked against the listing's MD5s after each run. Medians of ``--runs``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from benchlib import (
    BANDWIDTH,
    LATENCY,
    PASSWORD,
    SCAN_FILES,
    SESSION_PATH,
    USER,
    WAN,
    Emulator,
    Mount,
    Table,
    big_file_spec,
    check,
    child_env,
    dd,
    drop_caches,
    footer,
    header,
    human,
    listed,
    mb_per_s,
    median,
    run,
    scratch,
    session_spec,
    traffic,
)

COLUMNS = ("figure", "xnat://", "baseline (same run)", "ratio", "goal (issue 9)",
           "CPU (xnat://)", "requests")


@dataclass(frozen=True)
class Config:
    runs: int = 3
    read_size: int = 256 << 20
    session_files: int = 1000
    file_size: int = 128 << 10


QUICK = Config(runs=1, read_size=32 << 20, session_files=100)


@dataclass
class Timed:
    """One timed operation: its result, wall and CPU seconds, and what it cost the server."""

    result: Any
    seconds: float
    cpu: float
    requests: str


def timed(emu: Emulator, operation: Callable[[], Any]) -> Timed:
    drop_caches()
    mark, cpu = emu.mark(), time.process_time()
    start = time.perf_counter()
    result = operation()
    seconds = time.perf_counter() - start
    requests = traffic(emu.requests(mark))
    return Timed(result, seconds, time.process_time() - cpu, requests)


def connect(url: str, cache: Path) -> fsspec.AbstractFileSystem:
    """A new filesystem on ``cache``, logged in and with the projects listed."""
    fs = fsspec.filesystem("xnat", url=url, user=USER, password=PASSWORD, cache_dir=str(cache),
                           cache_size="20G", skip_instance_cache=True)
    fs.ls("")
    return fs


# -- figures -------------------------------------------------------------------------------


def cat(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    return fs.cat_file(path)


def stream(fs: fsspec.AbstractFileSystem, path: str) -> int:
    """What ``dd bs=1M`` does: 1 MiB reads to the end, kept nowhere; the bytes read."""
    got = 0
    with fs.open(path) as f:
        while piece := f.read(1 << 20):
            got += len(piece)
    return got


def read_file(emu: Emulator, size: int,
              read: Callable[[fsspec.AbstractFileSystem, str], Any]) -> Timed:
    """``read(fs, path)`` of the archive's one file, cold; the walk to it is not timed."""
    with scratch("bench-cache-") as cache:
        fs = connect(emu.url, cache)
        [path] = [p for p, info in fs.find(SESSION_PATH, detail=True).items()
                  if info["size"] == size]
        return timed(emu, lambda: read(fs, path))


def get_session(emu: Emulator, expected: list[tuple[int, str]]) -> Timed:
    with scratch("bench-cache-") as cache, scratch("bench-get-") as out:
        fs = connect(emu.url, cache)
        done = timed(emu, lambda: fs.get(SESSION_PATH, str(out / "session"), recursive=True))
        check(out, expected, "get")
    return done


def mount_dd(emu: Emulator, size: int, home: Path) -> float:
    with scratch("bench-cache-") as cache, Mount(emu.url, cache, home) as m:
        [path] = [p for p in (m.point / SESSION_PATH).rglob("*")
                  if p.is_file() and p.stat().st_size == size]
        drop_caches()
        return run(dd(path)).seconds


def mount_cp(emu: Emulator, expected: list[tuple[int, str]], home: Path) -> float:
    with scratch("bench-cache-") as cache, scratch("bench-cp-") as out:
        with Mount(emu.url, cache, home) as m:
            drop_caches()
            seconds = run(["cp", "-r", str(m.point / SESSION_PATH), str(out)]).seconds
        check(out, expected, "cp -r through the mount")
    return seconds


def reads(c: Config, table: Table, home: Path, knobs: Sequence[str]) -> None:
    """``cat_file`` against the link limit (WAN); on loopback, ``cat_file`` and ``open`` +
    reads against the mount's ``dd``."""
    wan, size = bool(knobs), c.read_size
    with scratch("bench-emu-") as logs, Emulator(big_file_spec(size), knobs, workdir=logs) as emu:
        [row] = emu.files(SCAN_FILES)
        cats, streams, dds = [], [], []
        for _ in range(c.runs):
            cats.append(read_file(emu, size, cat))
            if hashlib.md5(cats[-1].result).hexdigest() != row["digest"]:
                raise SystemExit("bench: cat_file gave wrong bytes")
            cats[-1].result = None
            if not wan:
                streams.append(read_file(emu, size, stream))
                if streams[-1].result != size:
                    raise SystemExit(f"bench: open + read gave {streams[-1].result} bytes")
                dds.append(mount_dd(emu, size, home))
    if wan:
        t, limit = median(x.seconds for x in cats), LATENCY + size / BANDWIDTH
        table.add(f"WAN: cold `cat_file` of a {human(size)} file",
                  f"{t:.2f} s ({mb_per_s(size, t)})", f"link limit {limit:.2f} s",
                  f"{t / limit:.2f}x limit", "≤ 1.1x limit", cpu(cats), cats[-1].requests)
        return
    mount = median(dds)
    for what, runs in (("`cat_file`", cats), ("`open` + `read(1 MiB)` to the end", streams)):
        t = median(x.seconds for x in runs)
        table.add(f"loopback: cold {what} of a {human(size)} file", mb_per_s(size, t),
                  f"mount, cold `dd bs=1M` {mb_per_s(size, mount)}", f"{t / mount:.2f}x mount time",
                  "≤ 1.2x mount", cpu(runs), runs[-1].requests)


def gets(c: Config, table: Table, home: Path, knobs: Sequence[str]) -> None:
    """``get`` of a session against the link limit (WAN) or the mount's ``cp -r``."""
    spec = session_spec(c.session_files, c.file_size)
    with scratch("bench-emu-") as logs, Emulator(spec, knobs, workdir=logs) as emu:
        expected = listed(emu)
        runs, copies = [], []
        for _ in range(c.runs):
            runs.append(get_session(emu, expected))
            if not knobs:
                copies.append(mount_cp(emu, expected, home))
    n, total = len(expected), sum(size for size, _ in expected)
    t = median(x.seconds for x in runs)
    what = f"`get` of a session ({n:,} files, {human(total)})"
    if knobs:
        limit = LATENCY + total / BANDWIDTH
        table.add(f"WAN: {what}", f"{t:.2f} s", f"link limit {limit:.2f} s",
                  f"{t / limit:.2f}x limit", "≤ 1.1x limit", cpu(runs), runs[-1].requests)
    else:
        mount = median(copies)
        table.add(f"loopback: {what}", f"{t:.2f} s ({n / t:,.0f} files/s)",
                  f"mount, `cp -r` {mount:.2f} s", f"{t / mount:.2f}x mount time",
                  "≤ 1.2x mount", cpu(runs), runs[-1].requests)


def cpu(runs: list[Timed]) -> str:
    return f"{median(x.cpu for x in runs):.2f} s"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, help="repetitions, medians shown (default 3; 1 quick)")
    p.add_argument("--quick", action="store_true", help="a small smoke configuration")
    args = p.parse_args()
    config = QUICK if args.quick else Config()
    if args.runs:
        config = dataclasses.replace(config, runs=args.runs)
    start = header(("dd", "cp", "fusermount3"))
    table = Table(COLUMNS)
    with scratch("bench-") as work:
        home = work / "home"
        os.environ.update(child_env(home))  # this process too: no user config, netrc, keyring
        for name, figure, knobs in (("WAN cat_file", reads, WAN), ("WAN get", gets, WAN),
                                    ("loopback reads", reads, []), ("loopback get", gets, [])):
            print(f"bench: {name} ...", flush=True)
            figure(config, table, home, knobs)
    footer(table, start)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
