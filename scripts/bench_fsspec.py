#!/usr/bin/env python3
"""Benchmark the ``xnat://`` fsspec filesystem; every figure beside a same-run baseline.

    .venv/bin/python scripts/bench_fsspec.py               # full run (a few minutes, root)
    .venv/bin/python scripts/bench_fsspec.py --size 256M --wan-size 64M --session-files 200

Figures (issue 9, "Performance"):

* WAN (``--wan-latency`` per response, ``--wan-bandwidth`` for the whole link: 20 ms and
  400 Mbit/s): ``cat_file`` of one large file, and ``get`` of a session of many files, each
  against the link limit (bytes / bandwidth); the targets are 1.1x;
* loopback: the same two, against the mount on the same server (``dd`` of the file, ``cp -r``
  of the session, each through a fresh mount); the target is 1.2x. Also ``open`` and 1 MiB
  reads to the end, which is what ``dd`` does (``cat_file`` also builds one bytes object).

The emulator runs in its own process (bench_materialize's ``Server``), the filesystem in this
one, the mount in its own (bench_mount's ``mounted``); every run starts with an empty chunk
cache, and page caches are dropped first when root. Medians of ``--runs``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import fsspec
from bench_materialize import Server
from bench_mount import (
    PASSWORD,
    SMALL,
    USER,
    dd,
    drop_caches,
    elapsed,
    human,
    mbps,
    median,
    mounted,
    report,
    row,
)
from xnatfs.cli.units import parse_size


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=parse_size, default=parse_size("1G"),
                   help="large file read on loopback (default 1G)")
    p.add_argument("--wan-size", type=parse_size, default=parse_size("256M"),
                   help="large file read over the emulated WAN (default 256M)")
    p.add_argument("--wan-latency", type=float, default=0.02,
                   help="seconds added to every response on the WAN (default 0.02)")
    p.add_argument("--wan-bandwidth", type=parse_size, default=50_000_000,
                   help="bytes/s of the whole WAN link (default 50000000: 400 Mbit/s)")
    p.add_argument("--session-files", type=int, default=1000,
                   help="files in the session fetched with get (default 1000)")
    p.add_argument("--file-size", type=parse_size, default=parse_size("128K"),
                   help="size of each of those files (default 128K)")
    p.add_argument("--runs", type=int, default=3, help="repetitions, median shown (default 3)")
    p.add_argument("--skip-wan", action="store_true", help="loopback figures only")
    p.add_argument("--skip-mount", action="store_true", help="no mount baselines (no FUSE)")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench: not root: page caches cannot be dropped; cold figures may be warm")
    print(f"bench: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"bench: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")

    if not args.skip_wan:
        wan = ["--latency", str(args.wan_latency), "--bandwidth", str(args.wan_bandwidth)]
        link = f"link limit at {mbps(args.wan_bandwidth)}"
        with serve(large_spec(args.wan_size), wan) as url:
            t = median([cold(url, lambda fs, path: check_len(fs.cat_file(path), args.wan_size),
                             large_path(url, args.wan_size)) for _ in range(args.runs)])
            limit = args.wan_size / args.wan_bandwidth
            row(f"WAN: cat_file, {human(args.wan_size)}", mbps(args.wan_size / t), link,
                f"{t / limit:.2f}x the limit")
        with serve(session_spec(args), wan) as url:
            total, session = session_of(url)
            t = median([cold(url, get_into(total), session) for _ in range(args.runs)])
            limit = total / args.wan_bandwidth
            row(f"WAN: get of a session, {args.session_files} files, {human(total)}",
                f"{t:.2f} s", f"{link}: {limit:.2f} s", f"{t / limit:.2f}x the limit")

    with serve(large_spec(args.size), []) as url:
        path = large_path(url, args.size)
        t = median([cold(url, lambda fs, path: check_len(fs.cat_file(path), args.size), path)
                    for _ in range(args.runs)])
        mount = None if args.skip_mount else median(
            [through_mount(url, lambda point: elapsed(dd(point / path)))
             for _ in range(args.runs)])
        row(f"loopback: cat_file, {human(args.size)}", mbps(args.size / t),
            "mount, dd: " + (mbps(args.size / mount) if mount else "skipped"),
            f"{t / mount:.2f}x the mount's time" if mount else "")
        t = median([cold(url, stream, path) for _ in range(args.runs)])
        row(f"loopback: open + read(1 MiB) to the end, {human(args.size)}",
            mbps(args.size / t), "mount, dd: " + (mbps(args.size / mount) if mount else "skipped"),
            f"{t / mount:.2f}x the mount's time" if mount else "")
    with serve(session_spec(args), []) as url:
        total, session = session_of(url)
        t = median([cold(url, get_into(total), session) for _ in range(args.runs)])
        mount = None if args.skip_mount else median(
            [through_mount(url, copy_session(session)) for _ in range(args.runs)])
        row(f"loopback: get of a session, {args.session_files} files, {human(total)}",
            f"{t:.2f} s", "mount, cp -r: " + (f"{mount:.2f} s" if mount else "skipped"),
            f"{t / mount:.2f}x the mount's time" if mount else "")
    report()
    return 0


# -- archives --------------------------------------------------------------------------------


def large_spec(size: int) -> str:
    return spec_text(scans=1, dicoms=1, niftis=1, nifti_size=size)


def session_spec(args: argparse.Namespace) -> str:
    scans = max(1, args.session_files // 100)
    return spec_text(scans=scans, dicoms=args.session_files // scans,
                     dicom_size=args.file_size)


def spec_text(**fields: int) -> str:
    values = {"projects": 1, "subjects": 1, "sessions": 1, **SMALL, **fields}
    return ",".join(f"{k}={v}" for k, v in values.items())


@contextmanager
def serve(spec: str, knobs: list[str]) -> Iterator[str]:
    """bench_materialize's emulator process, with bench_mount's user too."""
    with Server(spec, [*knobs, "--user", f"{USER}:{PASSWORD}"]) as url:
        yield url


# -- one timed operation ---------------------------------------------------------------------


def connect(url: str, cache: str) -> fsspec.AbstractFileSystem:
    return fsspec.filesystem("xnat", url=url, user=USER, password=PASSWORD, cache_dir=cache,
                             cache_size="20G", skip_instance_cache=True)


def cold(url: str, operation: Callable[[fsspec.AbstractFileSystem, str], object],
         path: str) -> float:
    """Seconds for ``operation(fs, path)`` with an empty chunk cache, logged in already (as a
    mount is before its first read); the walk down to ``path`` is timed, as in the mount."""
    cache = tempfile.mkdtemp(prefix="bench-cache-")
    try:
        fs = connect(url, cache)
        fs.ls("")
        drop_caches()
        start = time.perf_counter()
        operation(fs, path)
        return time.perf_counter() - start
    finally:
        shutil.rmtree(cache)


def stream(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """What dd does on the mount: 1 MiB reads into nothing (cat_file must also build the
    whole file as one bytes object)."""
    with fs.open(path) as f:
        while f.read(1 << 20):
            pass


def check_len(data: bytes, size: int) -> None:
    assert len(data) == size, f"cat_file gave {len(data)} bytes, expected {size}"


def get_into(total: int) -> Callable[[fsspec.AbstractFileSystem, str], None]:
    def get(fs: fsspec.AbstractFileSystem, path: str) -> None:
        out = Path(tempfile.mkdtemp(prefix="bench-get-"))
        try:
            fs.get(path, str(out / "s"), recursive=True)
            got = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
            assert got == total, f"get wrote {got} bytes, expected {total}"
        finally:
            shutil.rmtree(out)

    return get


def through_mount(url: str, operation: Callable[[Path], float]) -> float:
    cache = tempfile.mkdtemp(prefix="bench-cache-")
    try:
        with mounted(SimpleNamespace(url=url), cache, "baseline") as point:  # type: ignore[arg-type]
            drop_caches()
            return operation(point)
    finally:
        shutil.rmtree(cache)


def copy_session(session: str) -> Callable[[Path], float]:
    def copy(point: Path) -> float:
        out = Path(tempfile.mkdtemp(prefix="bench-copy-"))
        try:
            return elapsed(["cp", "-r", str(point / session), str(out / "s")])
        finally:
            shutil.rmtree(out)

    return copy


# -- paths -----------------------------------------------------------------------------------


def large_path(url: str, size: int) -> str:
    cache = tempfile.mkdtemp(prefix="bench-cache-")
    try:
        found = connect(url, cache).find("", detail=True)
        return next(p for p, info in found.items() if info["size"] == size)
    finally:
        shutil.rmtree(cache)


def session_of(url: str) -> tuple[int, str]:
    """The session's bytes and tree path (the archive has one)."""
    cache = tempfile.mkdtemp(prefix="bench-cache-")
    try:
        fs = connect(url, cache)
        project = fs.ls("", detail=False)[0]
        subject = next(p for p in fs.ls(project, detail=False) if not p.endswith("resources"))
        session = next(p for p in fs.ls(subject, detail=False) if not p.endswith("resources"))
        return fs.du(session), session
    finally:
        shutil.rmtree(cache)


if __name__ == "__main__":
    raise SystemExit(main())
