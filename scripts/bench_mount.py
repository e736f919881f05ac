#!/usr/bin/env python3
"""Benchmark the mount: every figure beside a same-run baseline, as one Markdown table.

    .venv/bin/python scripts/bench_mount.py                # full run, medians of 3 (root)
    .venv/bin/python scripts/bench_mount.py --quick        # small smoke configuration
    .venv/bin/python scripts/bench_mount.py --only wan-read --runs 5

Figures (the targets are those of issues 8 and 19):

* ``wan-copy``: ``cp -r`` of a session of 1,000 files (500 MiB) through a fresh mount, against
  the link limit and against ``xnatfs materialize`` of the same session;
* ``wan-read``: cold ``dd bs=1M`` of a 256 MiB file, against the link limit and against 8
  parallel ranged curls of the same file;
* ``loop-read``: cold ``dd`` of a 256 MiB file against a single-stream curl, and against the
  same curl piped into ``md5sum`` (a download checked as the mount checks it: MD5, not the
  network, is then the limit on loopback), with the mount's CPU seconds per GiB; then
  re-reads from the page cache, and after a remount with the page cache dropped, from the
  chunk cache;
* ``loop-copy``: ``cp -r`` of 1,000 files of 64 KiB against one curl process fetching the same
  URLs in turn on one kept-alive connection, with the mount's CPU milliseconds per file;
* ``tree``: ``ls -lR`` of 10,000 files in 10 sessions (requests sent: none may be a download)
  and a warm ``find | xargs stat``, each against the same tree on the local disk.

Profiles: **loopback** has no limits (the CPU is the limit). **WAN** adds 20 ms to every
response, shares 400 Mbit/s among all connections (50e6 bytes/s) and allows 100 Mbit/s per
connection (12.5e6 bytes/s).

The link limit of a WAN figure is ``L + B / BW``: latency L, the bytes B the figure reads, the
aggregate bandwidth BW. It is what a perfect pipelined client needs: it asks for every file (or
range) at once, on at least BW / per-connection bandwidth = 4 connections and with at least
L x BW = 1 MB outstanding, so every response's latency overlaps other responses' bytes and
only the first one's is paid; for many files as for one, B / BW is then the time the link
needs to carry them. Login and listing round trips (a few L) are left out: under 1 % here.

Every figure uses a fresh mount and a fresh chunk cache (the chunk-cache re-read excepted),
and page caches are dropped before cold figures when root. The emulator, the mount, the
readers and the baselines each run in their own process; the mount's CPU (utime + stime from
/proc/PID/stat around the timed command) and peak RSS (VmHWM) are reported with each figure,
and the emulator's request log gives the GETs and how many were in flight. Bytes read through
the mount are checked against the listing's MD5s after each timed run. Medians of ``--runs``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchlib import (
    BANDWIDTH,
    LATENCY,
    ONLY_FILES,
    SCAN_FILES,
    SESSION_PATH,
    USER,
    WAN,
    XNATFS,
    Emulator,
    Mount,
    Table,
    big_file_spec,
    check,
    child_env,
    curl_in_turn,
    curl_ranges,
    dd,
    discard,
    drop_caches,
    footer,
    header,
    human,
    listed,
    mb_per_s,
    md5,
    median,
    parallel,
    requests_in_turn,
    run,
    scratch,
    session_spec,
    traffic,
)

COLUMNS = ("figure", "xnatfs", "baseline (same run)", "ratio", "goal", "mount CPU",
           "mount peak RSS", "requests")


@dataclass(frozen=True)
class Config:
    runs: int = 3
    wan_files: int = 1000
    wan_file_size: int = 512 << 10
    wan_read_size: int = 256 << 20
    loop_read_size: int = 256 << 20
    small_files: int = 1000
    small_size: int = 64 << 10
    tree_files: int = 10000


QUICK = Config(runs=1, wan_files=100, wan_read_size=32 << 20, loop_read_size=32 << 20,
               small_files=200, tree_files=1000)


class Bench:
    """The run's settings, its scratch folder and its table."""

    def __init__(self, config: Config, work: Path) -> None:
        self.config, self.work = config, work
        self.home = work / "home"
        self.table = Table(COLUMNS)
        self.peak_rss: dict[str, int] = {}

    def folder(self, name: str) -> Path:
        """A fresh, empty folder for this run's caches and copies."""
        path = self.work / name
        discard(path)
        path.mkdir(parents=True)
        return path

    def mount(self, url: str, cache: Path) -> Mount:
        return Mount(url, cache, self.home)

    def rss(self, figure: str, values: list[int]) -> str:
        self.peak_rss[figure] = max(values)
        return f"{max(values) / 2**20:.0f} MiB"


# -- figures -------------------------------------------------------------------------------


def wan_copy(b: Bench) -> None:
    c = b.config
    spec = session_spec(c.wan_files, c.wan_file_size)
    with scratch("bench-emu-") as logs, Emulator(spec, WAN, workdir=logs) as emu:
        expected = listed(emu)
        total = sum(size for size, _ in expected)
        limit = LATENCY + total / BANDWIDTH
        cp, cpu, rss, notes = [], [], [], []
        mat, mat_cpu, mat_rss = [], [], []
        for _ in range(c.runs):
            out, cache = b.folder("out"), b.folder("cache")
            drop_caches()
            done = run([*XNATFS, "materialize", emu.url, SESSION_PATH, "-u", USER, "-o",
                        str(out), "--cache-dir", str(cache)], env=child_env(b.home))
            check(out, expected, "materialize")
            mat.append(done.seconds)
            mat_cpu.append(done.cpu)
            mat_rss.append(done.peak_rss)
            seconds, used, peak, requests = copy_session(b, emu, expected)
            cp.append(seconds)
            cpu.append(used)
            rss.append(peak)
            notes.append(requests)
    t, tm = median(cp), median(mat)
    what = f"{len(expected):,} files, {human(total)}"
    b.table.add(f"WAN: `cp -r` of a session ({what}), fresh mount", f"{t:.1f} s",
                f"link limit {limit:.1f} s; materialize {tm:.1f} s",
                f"{t / limit:.2f}x limit; {t / tm:.2f}x materialize", "≤ 1.1x limit",
                f"{median(cpu):.1f} s", b.rss("WAN cp -r", rss), notes[-1])
    b.table.add(f"WAN: `xnatfs materialize` of the same session ({what})", f"{tm:.1f} s",
                f"link limit {limit:.1f} s", f"{tm / limit:.2f}x limit", "≤ 1.05x limit",
                f"({median(mat_cpu):.1f} s materialize)",
                f"({max(mat_rss) / 2**20:.0f} MiB materialize)", "")


def wan_read(b: Bench) -> None:
    size = b.config.wan_read_size
    with scratch("bench-emu-") as logs, Emulator(big_file_spec(size), WAN, workdir=logs) as emu:
        [row] = emu.files(SCAN_FILES)
        limit = LATENCY + size / BANDWIDTH
        curls = curl_ranges(emu.url, row["URI"], size, 8)
        times, baseline, cpu, rss, notes = [], [], [], [], []
        for _ in range(b.config.runs):
            baseline.append(parallel(curls))
            with b.mount(emu.url, b.folder("cache")) as m:
                path = find_file(m.point / SESSION_PATH, size)
                drop_caches()
                seconds, used, requests = timed(m, emu, dd(path))
                check_file(path, row["digest"])
                rss.append(m.peak_rss())
            times.append(seconds)
            cpu.append(used)
            notes.append(requests)
    t, curl = median(times), median(baseline)
    b.table.add(f"WAN: cold `dd bs=1M` of a {human(size)} file", f"{t:.2f} s",
                f"link limit {limit:.2f} s; 8 ranged curls {curl:.2f} s",
                f"{t / limit:.2f}x limit; {t / curl:.2f}x curls", "≤ 1.1x limit",
                f"{median(cpu):.1f} s", b.rss("WAN dd", rss), notes[-1])


def loopback_read(b: Bench) -> None:
    size = b.config.loop_read_size
    with scratch("bench-emu-") as logs, Emulator(big_file_spec(size), workdir=logs) as emu:
        [row] = emu.files(SCAN_FILES)
        curl_cmd, curl_input = curl_in_turn(emu.url, [row["URI"]])
        checked_cmd = ["sh", "-c", f"{shlex.join(curl_cmd)} -o - | md5sum"]
        checked_input = curl_input.replace('output = "/dev/null"\n', "")
        cold, warm, chunk, baseline, checked, cpu, rss, notes = [], [], [], [], [], [], [], []
        for _ in range(b.config.runs):
            baseline.append(run(curl_cmd, input=curl_input).seconds)
            verified = run(checked_cmd, input=checked_input)
            if row["digest"] not in verified.stdout:
                raise SystemExit("bench: curl | md5sum did not give the listing's MD5")
            checked.append(verified.seconds)
            cache = b.folder("cache")
            with b.mount(emu.url, cache) as m:
                path = find_file(m.point / SESSION_PATH, size)
                drop_caches()
                seconds, used, requests = timed(m, emu, dd(path))
                cold.append(seconds)
                cpu.append(used)
                notes.append(requests)
                warm.append(run(dd(path)).seconds)
                check_file(path, row["digest"])
                rss.append(m.peak_rss())
            with b.mount(emu.url, cache) as m:
                path = find_file(m.point / SESSION_PATH, size)
                drop_caches()
                mark = emu.mark()
                chunk.append(run(dd(path)).seconds)
                if any(r.kind == "file" for r in emu.requests(mark)):
                    raise SystemExit("bench: the chunk cache re-read downloaded the file again")
                rss.append(m.peak_rss())
    curl, md5 = median(baseline), median(checked)
    rate = f"curl, one stream {mb_per_s(size, curl)}"
    gib = size / 2**30
    t = median(cold)
    b.table.add(f"loopback: cold `dd bs=1M` of a {human(size)} file", mb_per_s(size, t),
                f"{rate}; curl | md5sum {mb_per_s(size, md5)}",
                f"{curl / t:.2f}x curl speed; {md5 / t:.2f}x curl | md5sum",
                "≥ 1.0x curl | md5sum",
                f"{median(cpu):.2f} s ({median(cpu) / gib:.1f} s/GiB)",
                b.rss("loopback dd", rss), notes[-1])
    t = median(warm)
    b.table.add("loopback: warm re-read (page cache)", mb_per_s(size, t), rate,
                f"{curl / t:.2f}x curl speed", "", "", "", "")
    t = median(chunk)  # issue 19: a re-read costs a fast hash and a copy, not an MD5
    b.table.add("loopback: re-read after remount (chunk cache on disk)", mb_per_s(size, t),
                f"{rate}; curl | md5sum {mb_per_s(size, md5)}",
                f"{curl / t:.2f}x curl speed; {md5 / t:.2f}x curl | md5sum",
                "≥ 1.5x curl | md5sum", "", "", "0 GETs")


def loopback_copy(b: Bench) -> None:
    c = b.config
    spec = session_spec(c.small_files, c.small_size)
    with scratch("bench-emu-") as logs, Emulator(spec, workdir=logs) as emu:
        expected = listed(emu)
        uris = [r["URI"] for r in emu.files(SCAN_FILES)]
        curl_cmd, curl_input = curl_in_turn(emu.url, uris)
        py_cmd, py_input = requests_in_turn(emu.url, uris)
        times, baseline, cpu, rss, notes, py_cpu = [], [], [], [], [], []
        for _ in range(c.runs):
            baseline.append(run(curl_cmd, input=curl_input).seconds)
            py_cpu.append(float(run(py_cmd, input=py_input).stdout))
            seconds, used, peak, requests = copy_session(b, emu, expected)
            times.append(seconds)
            cpu.append(used)
            rss.append(peak)
            notes.append(requests)
    t, curl = median(times), median(baseline)
    n = len(expected)
    per_file, py_file = median(cpu) / n * 1e3, median(py_cpu) / n * 1e3
    b.table.add(f"loopback: `cp -r` of {n:,} files of {human(c.small_size)}",
                f"{t:.2f} s ({n / t:,.0f} files/s)",
                f"one kept-alive curl {curl:.2f} s; requests.Session GET {py_file:.2f} ms "
                "CPU/file", f"{t / curl:.1f}x curl time; {per_file / py_file:.2f}x requests CPU",
                "≤ 2.5x curl; CPU/file ≤ requests",
                f"{median(cpu):.2f} s ({per_file:.2f} ms/file)",
                b.rss("loopback cp -r", rss), notes[-1])


def tree(b: Bench) -> None:
    sessions = 10
    per_scan = max(1, b.config.tree_files // (sessions * 10))
    spec = (f"projects=1,subjects=1,sessions={sessions},scans=10,dicoms={per_scan},"
            f"dicom_size=4096,{ONLY_FILES}")
    local = b.folder("tree")
    with (scratch("bench-emu-") as logs, Emulator(spec, workdir=logs) as emu,
          b.mount(emu.url, b.folder("cache")) as m):
        seconds, used, requests = timed(m, emu, ["ls", "-lR", str(m.point)])
        n = mirror(m.point, local)
        find_stat = ["sh", "-c", f"find {m.point} -type f | xargs stat > /dev/null"]
        run(find_stat)  # the kernel's entries and attributes are now cached
        cpu0 = m.cpu()
        warm = median([run(find_stat).seconds for _ in range(b.config.runs)])
        stat_cpu = (m.cpu() - cpu0) / b.config.runs
        rss = m.peak_rss()
    ls_local = median([run(["ls", "-lR", str(local)]).seconds for _ in range(b.config.runs)])
    local_stat = ["sh", "-c", f"find {local} -type f | xargs stat > /dev/null"]
    disk = median([run(local_stat).seconds for _ in range(b.config.runs)])
    b.table.add(f"`ls -lR` of {n:,} files in {sessions} sessions, cold", f"{seconds:.2f} s",
                f"local disk {ls_local:.2f} s", f"{seconds / ls_local:.0f}x local",
                "no downloads", f"{used:.2f} s", b.rss("ls -lR", [rss]), requests)
    b.table.add(f"`find | xargs stat` of {n:,} files, warm", f"{warm:.2f} s",
                f"local disk {disk:.2f} s", f"{warm / disk:.1f}x local", "",
                f"{stat_cpu:.2f} s", "", "")


FIGURES: dict[str, Callable[[Bench], None]] = {
    "wan-copy": wan_copy, "wan-read": wan_read, "loop-read": loopback_read,
    "loop-copy": loopback_copy, "tree": tree,
}


# -- pieces --------------------------------------------------------------------------------


def copy_session(b: Bench, emu: Emulator, expected: list[tuple[int, str]],
                 ) -> tuple[float, float, int, str]:
    """``cp -r`` of the session through a fresh mount on an empty cache, checked: seconds,
    mount CPU seconds, mount peak RSS, and the requests it cost."""
    out = b.folder("out")
    with b.mount(emu.url, b.folder("cache")) as m:
        drop_caches()
        seconds, used, requests = timed(m, emu, ["cp", "-r", str(m.point / SESSION_PATH),
                                                 str(out)])
        peak = m.peak_rss()
    check(out, expected, "cp -r through the mount")
    return seconds, used, peak, requests


def timed(m: Mount, emu: Emulator, cmd: list[str]) -> tuple[float, float, str]:
    """Run ``cmd``: its wall time, the requests it cost, and the mount's CPU seconds until
    the server has been quiet a moment (work the mount finishes after the reader is done,
    such as cache writes behind it, counts too)."""
    mark, cpu = emu.mark(), m.cpu()
    seconds = run(cmd).seconds
    requests = traffic(emu.requests(mark))
    return seconds, m.cpu() - cpu, requests


def find_file(folder: Path, size: int) -> Path:
    """The one file of ``size`` below ``folder`` (walking it lists the folders: not timed)."""
    for parent, _, names in os.walk(folder):
        for name in names:
            path = Path(parent, name)
            if path.stat().st_size == size:
                return path
    raise SystemExit(f"bench: no file of {size} bytes under {folder}")


def check_file(path: Path, digest: str) -> None:
    if md5(path) != digest:
        raise SystemExit(f"bench: wrong bytes through the mount in {path}")


def mirror(point: Path, local: Path) -> int:
    """Recreate the mount's tree as empty files on the local disk; the number of files."""
    count = 0
    for parent, _, names in os.walk(point):
        target = local / Path(parent).relative_to(point)
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            (target / name).touch()
            count += 1
    return count


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, help="repetitions, medians shown (default 3; 1 quick)")
    p.add_argument("--quick", action="store_true", help="a small smoke configuration")
    p.add_argument("--only", action="append", choices=list(FIGURES), metavar="NAME",
                   help=f"run only this figure (repeatable): {', '.join(FIGURES)}")
    args = p.parse_args()
    config = QUICK if args.quick else Config()
    if args.runs:
        config = dataclasses.replace(config, runs=args.runs)
    start = header(("curl", "dd", "cp", "find", "xargs", "stat", "ls", "fusermount3"))
    with scratch("bench-") as work:
        bench = Bench(config, work)
        for name in args.only or FIGURES:
            print(f"bench: {name} ...", flush=True)
            FIGURES[name](bench)
    figure, rss = max(bench.peak_rss.items(), key=lambda item: item[1])
    bench.table.add("mount peak RSS, all figures", f"{rss / 2**20:.0f} MiB", "", "",
                    "≤ 150 MiB", "", f"during {figure}", "")
    footer(bench.table, start)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
