#!/usr/bin/env python3
"""What one failing file costs: requests per read against a server that always answers 500,
and seconds to an error against one whose every body stalls, for the mount and fsspec.

    .venv/bin/python -m scripts.bench_faults            # from the repository root (root: FUSE)
    .venv/bin/python -m scripts.bench_faults --timeout 3

Counts, not timings, are what the tests hold (issue 19: at most 4 GETs per chunk); the seconds
are printed beside the deadline they must keep (``--timeout`` plus one second). The file is of
several chunks, so read-ahead runs too: the GETs counted include its requests for the chunks
after the one read.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

import fsspec

from tests.support.mount import Mount, needs_fuse
from xnat_emulator import Emulator, EmulatorConfig, SyntheticSpec, synthetic_archive
from xnatfs.reader.chunkcache import CHUNK_SIZE

USERS = {"alice": "secret"}
SIZE = 3 * CHUNK_SIZE + 17


def archive():  # type: ignore[no-untyped-def]
    return synthetic_archive(SyntheticSpec(
        projects=1, subjects=1, sessions=1, scans=1, dicoms=0, niftis=1, nifti_size=SIZE,
        assessors=0, session_resources=0, subject_resources=0, project_resources=0, seed=3))


def measure(emu: Emulator, read: Callable[[], object]) -> tuple[int, float, str]:
    """(file GETs, seconds, outcome) of one read."""
    emu.log.clear()
    start = time.monotonic()
    try:
        read()
        outcome = "data"
    except OSError as exc:
        outcome = type(exc).__name__ + (f" errno {exc.errno}" if exc.errno else "")
    gets = [r for r in emu.log.records() if r.method == "GET" and "/files/" in r.path]
    return len(gets), time.monotonic() - start, outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args()
    rows = []
    with Emulator(archive(), EmulatorConfig(), users=USERS) as emu:
        [(path, _)] = [(p, f) for p, f in _files(emu)]
        with tempfile.TemporaryDirectory() as tmp:
            fs = fsspec.filesystem("xnat", url=emu.url, user="alice", password="secret",
                                   cache_dir=os.path.join(tmp, "fs"), timeout=args.timeout,
                                   skip_instance_cache=True)
            fs.info(path)
            mount = None
            if not needs_fuse.args[0]:
                point = os.path.join(tmp, "mnt")
                os.mkdir(point)
                mount = Mount(emu.url, point, os.path.join(tmp, "cache"),
                              ("--timeout", f"{args.timeout:g}")).start()
                os.stat(os.path.join(point, path))
            try:
                # Stalls first: nothing of the file is cached after them (a healthy server
                # between the two would let read-ahead bring it in).
                for knobs, what in (({"stall_rate": 1.0, "stall_seconds": 60.0},
                                     "every body stalls"),
                                    ({"error_rate": 1.0}, "every GET answers 500")):
                    for name, value in knobs.items():
                        setattr(emu.config, name, value)
                    rows.append((what, "fsspec cat_file(path, 0, 1 MiB)",
                                 *measure(emu, lambda fs=fs: fs.cat_file(path, 0, 1 << 20))))
                    if mount is not None:
                        rows.append((what, "mount: os.read 1 MiB at 0",
                                     *measure(emu, lambda: _read(mount / path))))
                    emu.config = EmulatorConfig()
                    fs = fsspec.filesystem("xnat", url=emu.url, user="alice",
                                           password="secret", timeout=args.timeout,
                                           cache_dir=os.path.join(tmp, f"fs{len(rows)}"),
                                           skip_instance_cache=True)
                    fs.info(path)
            finally:
                if mount is not None:
                    mount.stop()
    print(f"| server | call | file GETs | seconds (deadline {args.timeout + 1:g}) | outcome |")
    print("|---|---|---|---|---|")
    for what, call, gets, seconds, outcome in rows:
        print(f"| {what} | {call} | {gets} | {seconds:.1f} | {outcome} |")


def _files(emu: Emulator) -> list[tuple[str, object]]:
    from tests.support.oracle import Oracle

    return list(Oracle.of(emu).files.items())


def _read(path: object) -> bytes:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        return os.read(fd, 1 << 20)
    finally:
        os.close(fd)


if __name__ == "__main__":
    main()
