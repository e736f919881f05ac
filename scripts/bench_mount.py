#!/usr/bin/env python3
"""Benchmark the mount against the bundled emulator; every figure beside a same-run baseline.

    .venv/bin/python -m scripts.bench_mount                 # full run (a few minutes, root)
    .venv/bin/python -m scripts.bench_mount --size 256M --session-files 200 --stat-files 2000

Run it from the repository root: mount paths come from the tests' layout oracle
(``tests.support.oracle``).

Figures (issue 3, "Performance"):

* cold sequential read of one large file (``dd bs=1M``), on loopback and on an emulated WAN
  (latency plus a per-connection and a total bandwidth limit), against a single-stream ``curl``
  of the same file from the same emulator;
* warm re-reads: from the kernel page cache, and after a remount, from the chunk cache;
* ``cp -r`` of a session of many files, against one ``curl`` fetching the same URLs in turn
  over one connection;
* ``find | xargs stat`` over many files with listings cached, against the same tree on disk;
* ``ls -lR`` of a project: requests sent (none may be a file download) and time;
* the mount process's peak resident memory.

The emulator runs in this process, the mount in its own (``xnatfs mount -f``), the readers are
ordinary tools. Page caches are dropped before every cold or disk figure when root: this also
keeps numbers steady on VMs whose hypervisor takes back freed guest memory (free page
reporting), where the first touch of every page costs a host fault. Medians of ``--runs``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from xnat_emulator import Emulator, EmulatorConfig, File, SyntheticSpec, synthetic_archive
from xnatfs.cli.units import parse_size
from xnatfs.mount.host import is_mounted

USER, PASSWORD = "bench", "bench"
SMALL = {"niftis": 0, "assessors": 0, "session_resources": 0, "subject_resources": 0,
         "project_resources": 0}
ROWS: list[tuple[str, str, str, str]] = []
PEAK_RSS: dict[str, int] = {}  # phase -> the largest peak resident memory of its mounts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=parse_size, default=parse_size("1G"),
                   help="large file for sequential reads (default 1G)")
    p.add_argument("--wan-size", type=parse_size, default=parse_size("256M"),
                   help="large file read over the emulated WAN (default 256M)")
    p.add_argument("--wan-latency", type=float, default=0.04,
                   help="seconds added to every response on the WAN (default 0.04)")
    p.add_argument("--wan-conn-bandwidth", type=parse_size, default=parse_size("20M"),
                   help="bytes/s per connection on the WAN (default 20M)")
    p.add_argument("--wan-bandwidth", type=parse_size, default=parse_size("100M"),
                   help="bytes/s of the whole WAN link (default 100M)")
    p.add_argument("--session-files", type=int, default=1000,
                   help="files in the session copied with cp -r (default 1000)")
    p.add_argument("--file-size", type=parse_size, default=parse_size("128K"),
                   help="size of each of those files (default 128K)")
    p.add_argument("--stat-files", type=int, default=10000,
                   help="files for find | xargs stat and ls -lR (default 10000)")
    p.add_argument("--runs", type=int, default=3, help="repetitions, median shown (default 3)")
    p.add_argument("--skip-wan", action="store_true", help="loopback figures only")
    args = p.parse_args()
    if not __package__:  # run as a file: the repository root is not on sys.path
        print("bench_mount: run it from the repository root: python -m scripts.bench_mount",
              file=sys.stderr)
        return 2
    for tool in ("curl", "dd", "cp", "find", "xargs", "stat", "ls"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is needed")
    if os.geteuid() != 0:
        print("bench: not root: page caches cannot be dropped; cold figures may be warm")
    print(f"bench: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"bench: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")

    big_read(args, "loopback", EmulatorConfig(), args.size)
    if not args.skip_wan:
        wan = EmulatorConfig(latency=args.wan_latency, conn_bandwidth=args.wan_conn_bandwidth,
                             bandwidth=args.wan_bandwidth)
        big_read(args, "WAN", wan, args.wan_size, warm=False)
    session_copy(args)
    stat_storm(args)
    phase, rss = max(PEAK_RSS.items(), key=lambda item: item[1])
    row("mount process peak RSS", f"{rss / 2**20:.0f} MiB", f"during: {phase}",
        ", ".join(f"{k}: {v / 2**20:.0f} MiB" for k, v in PEAK_RSS.items() if k != phase))
    report()
    return 0


# -- figures -------------------------------------------------------------------------------


def big_read(args: argparse.Namespace, profile: str, config: EmulatorConfig, size: int,
             *, warm: bool = True) -> None:
    spec = SyntheticSpec(projects=1, subjects=1, sessions=1, scans=1, dicoms=1, nifti_size=size,
                         **SMALL | {"niftis": 1})
    with emulator(spec, config) as emu:
        f = next(f for f in emu.archive.files() if f.size == size)
        assert f.md5  # the emulator hashes a file once, at its first listing: not in a timing
        curl = median([throughput(size, *curl_get(emu, [f.uri])) for _ in range(args.runs)])
        label = f"{profile}: cold sequential read, {human(size)}"
        colds, warm_page, requests = [], [], []
        warm_chunk: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.runs):
            cache = tempfile.mkdtemp(prefix="bench-cache-")
            with mounted(emu, cache, f"{profile} read") as point:
                path = point / tree_path(f)
                drop_caches()
                emu.log.clear()
                colds.append(throughput(size, dd(path)))
                requests.append(emu.log.count(kind="file"))
                if warm:
                    warm_page.append(throughput(size, dd(path)))
                    digest = md5(path)
                    assert digest == f.md5, f"wrong bytes through the mount: {digest}"
            for dropped in (False, True) if warm else ():
                with mounted(emu, cache, f"{profile} read") as point:
                    if dropped:
                        drop_caches()
                    path = point / tree_path(f)
                    emu.log.clear()
                    warm_chunk[dropped].append(throughput(size, dd(path)))
                    assert emu.log.count(kind="file") == 0
            shutil.rmtree(cache)
        baseline = "curl, one stream" + (" (the link's per-connection limit)" if config.latency
                                         else "")
        row(label, mbps(median(colds)), f"{baseline}: {mbps(curl)}",
            f"{median(colds) / curl:.2f}x  ({int(median(requests))} GETs)")
        if warm:
            row(f"{profile}: warm re-read, page cache", mbps(median(warm_page)),
                f"curl: {mbps(curl)}", f"{median(warm_page) / curl:.2f}x")
            for dropped, where in ((False, "cache files in memory"), (True, "from disk")):
                rate = median(warm_chunk[dropped])
                row(f"{profile}: warm re-read after remount, chunk cache ({where})",
                    mbps(rate), f"curl: {mbps(curl)}", f"{rate / curl:.2f}x")


def session_copy(args: argparse.Namespace) -> None:
    scans = max(1, args.session_files // 100)
    spec = SyntheticSpec(projects=1, subjects=1, sessions=1, scans=scans,
                         dicoms=args.session_files // scans, dicom_size=args.file_size, **SMALL)
    with emulator(spec, EmulatorConfig()) as emu:
        files = list(emu.archive.files())
        total = sum(f.size for f in files)
        curl = median([elapsed(*curl_get(emu, [f.uri for f in files]))
                       for _ in range(args.runs)])
        times, gets = [], []
        for _ in range(args.runs):
            cache = tempfile.mkdtemp(prefix="bench-cache-")
            out = Path(tempfile.mkdtemp(prefix="bench-copy-"))
            with mounted(emu, cache, "cp -r") as point:
                session = (point / tree_path(files[0])).parents[5]
                drop_caches()
                emu.log.clear()
                times.append(elapsed(["cp", "-r", str(session), str(out / "s")]))
                gets.append(emu.log.count(kind="file"))
            copied = sum(1 for _ in (out / "s").rglob("*.dcm"))
            assert copied == len(files), f"cp -r copied {copied} of {len(files)} files"
            shutil.rmtree(out)
            shutil.rmtree(cache)
        t = median(times)
        row(f"cp -r of a session, {len(files)} files, {human(total)}, cold",
            f"{t:.2f} s ({len(files) / t:.0f} files/s)",
            f"curl, same URLs in turn: {curl:.2f} s", f"{curl / t:.2f}x  "
            f"({int(median(gets))} GETs)")


def stat_storm(args: argparse.Namespace) -> None:
    sessions = max(1, args.stat_files // 1000)
    spec = SyntheticSpec(projects=1, subjects=1, sessions=sessions, scans=10,
                         dicoms=args.stat_files // (sessions * 10), dicom_size=4096, **SMALL)
    with emulator(spec, EmulatorConfig()) as emu:
        n = sum(1 for _ in emu.archive.files())
        cache = tempfile.mkdtemp(prefix="bench-cache-")
        with mounted(emu, cache, "ls -lR and stat") as point:
            emu.log.clear()
            ls_time = elapsed(["ls", "-lR", str(point)])
            listings, downloads = emu.log.count(), emu.log.count(kind="file")
            find_stat = ["sh", "-c", f"find {point} -type f | xargs stat > /dev/null"]
            run(find_stat)  # the kernel's entries and attributes are now cached
            warm = median([elapsed(find_stat) for _ in range(args.runs)])
        local = Path(tempfile.mkdtemp(prefix="bench-tree-"))
        for path in emu.archive.files():
            target = local / path.uri.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
        local_stat = ["sh", "-c", f"find {local} -type f | xargs stat > /dev/null"]
        run(local_stat)
        disk = median([elapsed(local_stat) for _ in range(args.runs)])
        shutil.rmtree(local)
        shutil.rmtree(cache)
    row(f"find | xargs stat, {n} files, warm", f"{warm:.2f} s", f"local disk: {disk:.2f} s",
        f"{warm / disk:.2f}x the time")
    row(f"ls -lR, {n} files in {sessions} sessions, cold", f"{ls_time:.2f} s",
        f"{listings} requests, {downloads} downloads", f"{listings / sessions:.1f} per session")


# -- pieces --------------------------------------------------------------------------------


@contextmanager
def emulator(spec: SyntheticSpec, config: EmulatorConfig) -> Iterator[Emulator]:
    emu = Emulator(synthetic_archive(spec), config, users={USER: PASSWORD})
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@contextmanager
def mounted(emu: Emulator, cache: str, phase: str) -> Iterator[Path]:
    point = Path(tempfile.mkdtemp(prefix="bench-mnt-"))
    env = {**os.environ, "XNAT_PASS": PASSWORD}
    proc = subprocess.Popen([sys.executable, "-m", "xnatfs", "mount", emu.url, str(point),
                             "-u", USER, "--cache-dir", cache, "--cache-size", "20G", "-f"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(str(point)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("bench: the mount did not start")
            time.sleep(0.02)
        os.stat(point)
        yield point
        PEAK_RSS[phase] = max(PEAK_RSS.get(phase, 0), peak_rss(proc.pid))
    finally:
        subprocess.run(["fusermount3", "-u", str(point)], check=False, capture_output=True)
        proc.wait(timeout=30)
        point.rmdir()


def tree_path(f: File) -> str:
    """The mount path of a file of a plain synthetic archive."""
    from tests.support.oracle import layout_path

    path = layout_path(f)
    assert path is not None, f.uri
    return path


def curl_get(emu: Emulator, uris: list[str]) -> tuple[list[str], str]:
    """One curl process, one connection and one session cookie (XNAT caps sessions per
    user), the files one after the other: the command and its input."""
    config = "".join(f'url = "{emu.url}{quote(u)}"\noutput = "/dev/null"\n' for u in uris)
    return ["curl", "-sf", "-b", "/dev/null", "-u", f"{USER}:{PASSWORD}", "-K", "-"], config


def dd(path: Path) -> list[str]:
    return ["dd", f"if={path}", "of=/dev/null", "bs=1M"]


def md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while piece := fh.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


def drop_caches() -> None:
    if os.geteuid() == 0:
        run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"])


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def run(cmd: list[str], input: str | None = None) -> None:
    subprocess.run(cmd, check=True, input=input, text=input is not None,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def elapsed(cmd: list[str], input: str | None = None) -> float:
    start = time.perf_counter()
    run(cmd, input)
    return time.perf_counter() - start


def throughput(size: int, cmd: list[str], input: str | None = None) -> float:
    return size / elapsed(cmd, input)


def median(values: list[float]) -> float:
    return statistics.median(values)


def mbps(rate: float) -> str:
    return f"{rate / 1e6:,.0f} MB/s"


def human(n: int) -> str:
    return f"{n / 2**30:g} GiB" if n >= 2**30 else f"{n / 2**20:g} MiB"


def row(figure: str, value: str, baseline: str, ratio: str) -> None:
    ROWS.append((figure, value, baseline, ratio))
    print(f"  {figure}: {value}  [{baseline}]  {ratio}", flush=True)


def report() -> None:
    widths = [max(len(r[i]) for r in ROWS) for i in range(4)]
    print()
    for r in [("figure", "xnatfs", "baseline (same run)", "ratio"), *ROWS]:
        print(" | ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


if __name__ == "__main__":
    raise SystemExit(main())
