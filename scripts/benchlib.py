"""Pieces shared by the benchmarks: the emulator and the mount in their own processes, their
CPU and memory from /proc, curl baselines, the emulator's request log, and a Markdown table.

Everything here drives xnatfs through its command line only (``xnatfs emulator``, ``xnatfs
mount``, ``xnatfs materialize``), so a benchmark keeps working while the code behind those
commands is rebuilt, and it measures what a user runs. The imports from xnatfs are the
mount-point check, taken from wherever it lives, and the names of materialize's records.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import requests

try:
    from xnatfs.mount.host import is_mounted
except ImportError:  # before the mount's host code moved out of its CLI module
    from xnatfs.mount.cli import is_mounted
from xnatfs.materialize.output import RESERVED

USER, PASSWORD = "bench", "bench"
XNATFS = [sys.executable, "-m", "xnatfs"]
CLOCK_TICK = os.sysconf("SC_CLK_TCK")

# The WAN profile: 20 ms added to every response, 400 Mbit/s shared by all connections,
# 100 Mbit/s per connection. A figure's link limit is LATENCY + bytes / BANDWIDTH: what a
# client with every request in flight at once needs (bench_mount.py explains why).
LATENCY, BANDWIDTH, CONN_BANDWIDTH = 0.02, 50e6, 12.5e6
WAN = ["--latency", str(LATENCY), "--bandwidth", f"{BANDWIDTH:.0f}",
       "--conn-bandwidth", f"{CONN_BANDWIDTH:.0f}"]

# The synthetic archives: one session whose scans hold every file, nothing else.
ONLY_FILES = ("niftis=0,session_resources=0,subject_resources=0,project_resources=0,"
              "assessors=0")
PROJECT, SUBJECT, SESSION = "PROJ01", "S001", "S001_MR1"
SESSION_PATH = f"{PROJECT}/{SUBJECT}/{SESSION}"
SCAN_FILES = f"/data/projects/{PROJECT}/subjects/{SUBJECT}/experiments/{SESSION}/scans/ALL/files"


# -- processes ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User plus system CPU of a live process so far (its threads included)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK  # utime, stime


def peak_rss(pid: int) -> int:
    """The largest resident memory a live process has had (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def child_env(home: Path) -> dict[str, str]:
    """The environment for xnatfs child processes: the password, and a private home so no
    user config, netrc, keyring or default cache takes part."""
    return {**os.environ, "XNAT_PASS": PASSWORD, "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"), "XDG_CACHE_HOME": str(home / "cache"),
            "XDG_DATA_HOME": str(home / "data")}


@dataclass
class Run:
    """One finished command: wall time, and its CPU and peak RSS from wait4."""

    seconds: float
    cpu: float
    peak_rss: int
    stdout: str


def run(cmd: Sequence[str], *, input: str | None = None, env: dict[str, str] | None = None,
        check: bool = True) -> Run:
    """Run ``cmd`` to the end; a failure stops the benchmark with its stderr."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        child = subprocess.Popen(cmd, stdin=subprocess.PIPE if input is not None else None,
                                 stdout=out, stderr=err, env=env, text=True)
        if input is not None:
            assert child.stdin is not None
            child.stdin.write(input)
            child.stdin.close()
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        child.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if code and check:
            raise SystemExit(f"bench: {' '.join(cmd[:3])} ... failed ({code}): "
                             f"{err.read().strip()[-400:]}")
        return Run(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, out.read())


def drop_caches() -> None:
    """Drop the page cache (root only), so a cold figure reads nothing from memory."""
    if os.geteuid() == 0:
        subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=True)


# -- the emulator ---------------------------------------------------------------------------


@dataclass
class Request:
    """One line of the emulator's request log."""

    method: str
    path: str
    kind: str
    status: int
    bytes_sent: int
    start: float
    done: float


class Emulator:
    """``xnatfs emulator`` in its own process, so it does not take the CPU being measured,
    with its request log in a file."""

    def __init__(self, spec: str, knobs: Sequence[str] = (), *, workdir: Path) -> None:
        self.log_path = workdir / "requests.jsonl"
        # --hash-first: a real XNAT's catalog holds every MD5; the emulator would otherwise
        # hash each file on its first listing, inside the first client's timed run.
        self.argv = [*XNATFS, "emulator", "--synthetic", spec, "--user", f"{USER}:{PASSWORD}",
                     "--hash-first", "--request-log", str(self.log_path), *knobs]
        self.url = ""

    def __enter__(self) -> Emulator:
        self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        match = re.search(r"at (http://\S+)", line)
        if not match:
            self.process.kill()
            raise SystemExit(f"bench: the emulator did not start: {line!r}")
        self.url = match[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)

    def files(self, path: str) -> list[dict[str, str]]:
        """The file listing rows (URI, Size, digest, ...) of a REST path such as
        ``/data/experiments/E/scans/ALL/files``. The emulator computes digests on the first
        listing, so call this before timing anything."""
        reply = requests.get(f"{self.url}{path}", params={"format": "json"},
                             auth=(USER, PASSWORD), timeout=600)
        reply.raise_for_status()
        return list(reply.json()["ResultSet"]["Result"])

    def mark(self) -> int:
        """A position in the request log; ``requests(mark)`` returns what came after it."""
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def requests(self, mark: int) -> list[Request]:
        """Requests finished since ``mark``. A response's line is written just after its last
        byte is sent, so wait until the log has been still for a moment."""
        size, still_since = -1, time.monotonic()
        while time.monotonic() - still_since < 0.1:
            time.sleep(0.02)
            now = self.mark()
            if now != size:
                size, still_since = now, time.monotonic()
        with open(self.log_path, encoding="utf-8") as log:
            log.seek(mark)
            rows = [json.loads(line) for line in log.read().splitlines()]
        return [Request(r["method"], r["path"], r["kind"], r["status"], r["bytes_sent"],
                        r["time"], r["done"]) for r in rows]


def flight(requests: Iterable[Request]) -> tuple[int, float]:
    """File downloads at once: the peak, and the mean over the span from the first request
    to the last response."""
    spans = [(r.start, r.done) for r in requests if r.kind == "file"]
    if not spans:
        return 0, 0.0
    events = sorted([(s, 1) for s, _ in spans] + [(d, -1) for _, d in spans])
    peak = now = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    wall = max(d for _, d in spans) - min(s for s, _ in spans)
    return peak, sum(d - s for s, d in spans) / wall if wall > 0 else float(peak)


def traffic(requests: list[Request]) -> str:
    """A short account of what a figure cost the server."""
    files = [r for r in requests if r.kind == "file"]
    peak, mean = flight(files)
    text = f"{len(files)} GETs"
    if len(requests) > len(files):
        text += f" + {len(requests) - len(files)} other"
    if files:
        text += f", {peak} in flight at most ({mean:.1f} on average)"
    failed = sum(r.status >= 400 for r in requests)
    return text + (f", {failed} failed" if failed else "")


def session_spec(files: int, size: int) -> str:
    scans = max(1, files // 100)
    return (f"projects=1,subjects=1,sessions=1,scans={scans},dicoms={files // scans},"
            f"dicom_size={size},{ONLY_FILES}")


def big_file_spec(size: int) -> str:
    return (f"projects=1,subjects=1,sessions=1,scans=1,dicoms=0,{ONLY_FILES},niftis=1,"
            f"nifti_size={size}")


def listed(emu: Emulator) -> list[tuple[int, str]]:
    """(size, MD5) of every scan file of the session, sorted: what a copy must hold."""
    return sorted((int(r["Size"]), r["digest"]) for r in emu.files(SCAN_FILES))


# -- the mount ------------------------------------------------------------------------------


class Mount:
    """``xnatfs mount -f`` in its own process, on a fresh mount point."""

    def __init__(self, url: str, cache: Path, home: Path) -> None:
        self.url, self.cache, self.home = url, cache, home

    def __enter__(self) -> Mount:
        self.point = Path(tempfile.mkdtemp(prefix="bench-mnt-"))
        self.process = subprocess.Popen(
            [*XNATFS, "mount", self.url, str(self.point), "-u", USER, "--cache-dir",
             str(self.cache), "--cache-size", "20G", "-f"],
            env=child_env(self.home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not is_mounted(str(self.point)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                assert self.process.stderr is not None
                raise SystemExit(f"bench: the mount did not start: "
                                 f"{self.process.stderr.read().decode()[-400:]}")
            time.sleep(0.02)
        os.stat(self.point)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["fusermount3", "-u", str(self.point)], check=False, capture_output=True)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.point.rmdir()

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def peak_rss(self) -> int:
        return peak_rss(self.pid)


def dd(path: Path) -> list[str]:
    return ["dd", f"if={path}", "of=/dev/null", "bs=1M"]


# -- curl baselines -------------------------------------------------------------------------


def curl_in_turn(url: str, uris: Iterable[str]) -> tuple[list[str], str]:
    """One curl process fetching ``uris`` one after the other on one kept-alive connection,
    logged in once (the session cookie it gets is sent back): the command and its stdin."""
    config = "".join(f'url = "{url}{quote(u)}"\noutput = "/dev/null"\n' for u in uris)
    return ["curl", "-sf", "-b", "/dev/null", "-u", f"{USER}:{PASSWORD}", "-K", "-"], config


_REQUESTS_LOOP = """
import sys, time, requests
url, user, password = sys.argv[1:4]
uris = sys.stdin.read().split()
with requests.Session() as s:
    s.auth = (user, password)
    s.get(url + "/data/projects", params={"format": "json"}).raise_for_status()
    start = time.process_time()
    for uri in uris:
        r = s.get(url + uri)
        r.raise_for_status()
        r.content
    print(time.process_time() - start)
"""


def requests_in_turn(url: str, uris: Iterable[str]) -> tuple[list[str], str]:
    """One ``requests.Session`` fetching ``uris`` in turn on a kept-alive connection; it prints
    the CPU seconds of its GETs alone (not its start-up): a Python client's floor per file."""
    return [sys.executable, "-c", _REQUESTS_LOOP, url, USER, PASSWORD], \
        "\n".join(quote(u) for u in uris)


def curl_ranges(url: str, uri: str, size: int, streams: int) -> list[list[str]]:
    """``streams`` curl commands, each fetching one contiguous range of the file."""
    step = -(-size // streams)
    return [["curl", "-sf", "-u", f"{USER}:{PASSWORD}", "-r",
             f"{start}-{min(start + step, size) - 1}", "-o", "/dev/null", f"{url}{quote(uri)}"]
            for start in range(0, size, step)]


def parallel(commands: list[list[str]]) -> float:
    """Start every command at once; seconds until the last one is done."""
    start = time.perf_counter()
    children = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                for c in commands]
    for child in children:
        if child.wait():
            assert child.stderr is not None
            raise SystemExit(f"bench: {' '.join(map(str, child.args))} failed: "
                             f"{child.stderr.read().decode()[-400:]}")
    return time.perf_counter() - start


# -- checks -------------------------------------------------------------------------------


def md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while piece := fh.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


def check(folder: Path, expected: list[tuple[int, str]], what: str) -> None:
    """Every listed file arrived whole: the (size, MD5) pairs under ``folder`` are the
    listing's (names are the front end's business, not the benchmark's); materialize's
    records (its manifest folder and checksum list) are not listed files."""
    got = sorted((p.stat().st_size, md5(p)) for p in folder.rglob("*")
                 if p.is_file() and p.relative_to(folder).parts[0] not in RESERVED)
    if got != expected:
        missing = len(expected) - len(set(got) & set(expected))
        raise SystemExit(f"bench: {what} gave {len(got)} files, {missing} of the "
                         f"{len(expected)} listed missing or wrong")


# -- results --------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    return statistics.median(values)


@dataclass
class Table:
    """The figures as a Markdown table, printed as it grows and again whole at the end."""

    columns: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)

    def add(self, *cells: str) -> None:
        assert len(cells) == len(self.columns)
        self.rows.append(cells)
        print("  " + " | ".join(c for c in cells if c), flush=True)

    def markdown(self) -> str:
        rows = [tuple(c.replace("|", "\\|") for c in row) for row in self.rows]
        widths = [max(len(r[i]) for r in [self.columns, *rows]) for i in range(len(self.columns))]
        lines = [self.columns, tuple("-" * w for w in widths), *rows]
        return "\n".join("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True))
                         + " |" for line in lines)


def mb_per_s(nbytes: float, seconds: float) -> str:
    return f"{nbytes / seconds / 1e6:,.0f} MB/s"


def human(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


_DISCARDED: list[str] = []


def discard(path: str | Path) -> None:
    """Put a run's output out of the way, removed when the benchmark ends. Removing it at
    once made the next run pay: ext4 scans past recently freed inodes when it allocates new
    ones (``recently_deleted``), so a run creating 6,000 files right after another's
    ``rm -rf`` of as many spent a quarter of its CPU there (perf), and more with several
    writers in one folder, which then wait on its lock."""
    if not os.path.exists(path):
        return
    if not _DISCARDED:
        _DISCARDED.append(tempfile.mkdtemp(prefix="bench-discarded-"))
        atexit.register(lambda: shutil.rmtree(_DISCARDED[0], ignore_errors=True))
    try:
        os.rename(path, os.path.join(_DISCARDED[0], f"{len(_DISCARDED)}"))
        _DISCARDED.append(str(path))
    except OSError:  # another file system, or busy: remove it now
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A temporary folder, removed afterwards whatever happens."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def header(tools: Iterable[str]) -> float:
    """Check the tools a benchmark runs, print what a table's reader needs to weigh it (the
    command, the commit, the CPUs and the load: the machine may be shared), and return the
    start time for ``footer``."""
    for tool in tools:
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is needed")
    if os.geteuid() != 0:
        print("bench: not root: page caches cannot be dropped; cold figures may be warm")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()
    print(f"bench: {' '.join([os.path.basename(sys.executable), *sys.argv])}  (commit {commit})")
    print(f"bench: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"load {os.getloadavg()[0]:.1f}")
    return time.monotonic()


def footer(table: Table, start: float) -> None:
    print(f"bench: load {os.getloadavg()[0]:.1f} at the end; took "
          f"{time.monotonic() - start:.0f} s\n")
    print(table.markdown())
