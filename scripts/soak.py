#!/usr/bin/env python3
"""Soak: many readers on a mount (parallel cp, md5sum, random reads) while materialize runs
against the same emulator, for a while; loopback only.

Checks every byte read, and samples the mount process: resident memory, open file descriptors
and threads must stay flat, the chunk cache under its limit. Prints a JSON report; exits 1 if
a check failed. ``tests/system/test_soak.py`` runs it for seconds; run it for minutes by hand,
from the repository root (it uses the tests' mount helper and oracle, ``tests.support``):

    .venv/bin/python -m scripts.soak --minutes 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from xnat_emulator import Emulator, EmulatorConfig, SyntheticSpec, synthetic_archive

SPEC = SyntheticSpec(projects=1, subjects=2, sessions=2, scans=2, dicoms=6, dicom_size=40_000,
                     niftis=1, nifti_size=5 << 20, assessors=0, seed=51)
CACHE_LIMIT = 24 << 20


def sample(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return {"rss_kib": rss, "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": len(os.listdir(f"/proc/{pid}/task"))}


def cache_bytes(cache: Path) -> int:
    """The chunk files' bytes. The cache evicts while it is counted, and diskcache removes a
    folder it empties: a file or folder that vanishes meanwhile no longer counts."""
    total = 0
    for folder, _, names in os.walk(cache):  # os.walk skips a folder that vanished
        for name in names:
            if name.endswith(".val"):
                with contextlib.suppress(FileNotFoundError):
                    total += os.stat(os.path.join(folder, name)).st_size
    return total


def soak(seconds: float, work: Path, readers: int = 6) -> dict:
    from tests.support.mount import Mount
    from tests.support.oracle import Oracle

    cache, out = work / "cache", work / "out"
    (work / "mnt").mkdir()
    errors: list[str] = []
    counts = {"cp": 0, "md5sum": 0, "random": 0, "materialize": 0}
    with Emulator(synthetic_archive(SPEC), EmulatorConfig(), users={"alice": "secret"}) as emu:
        files = Oracle.of(emu).files
        m = Mount(emu.url, str(work / "mnt"), str(cache),
                  ("--cache-size", str(CACHE_LIMIT))).start()
        assert m.process is not None
        pid = m.process.pid
        end = time.monotonic() + seconds
        paths = sorted(files)
        sessions = sorted({"/".join(p.split("/")[:3]) for p in paths})

        def cp(rng: random.Random) -> None:
            session = rng.choice(sessions)
            dest = Path(tempfile.mkdtemp(dir=work))
            subprocess.run(["cp", "-r", str(m / session), str(dest)], check=True)
            for p in paths:
                if p.startswith(session + "/"):
                    got = (dest / Path(session).name / p[len(session) + 1:]).read_bytes()
                    if got != files[p].read():
                        errors.append(f"cp: {p}")
            shutil.rmtree(dest)

        def md5sum(rng: random.Random) -> None:
            chosen = rng.sample(paths, 4)
            done = subprocess.run(["md5sum", *(str(m / p) for p in chosen)],
                                  capture_output=True, text=True, check=True)
            for line, p in zip(done.stdout.splitlines(), chosen, strict=True):
                if line.split()[0] != files[p].md5:
                    errors.append(f"md5sum: {p}")

        def random_reads(rng: random.Random) -> None:
            p = rng.choice(paths)
            f = files[p]
            with open(m / p, "rb", buffering=0) as fh:
                for _ in range(8):
                    off = rng.randrange(f.size)
                    n = rng.randrange(1, 300_000)
                    if os.pread(fh.fileno(), n, off) != f.read(off, min(n, f.size - off)):
                        errors.append(f"pread: {p}@{off}")

        def reader(k: int) -> None:
            rng = random.Random(k)
            jobs = [("cp", cp), ("md5sum", md5sum), ("random", random_reads)]
            while time.monotonic() < end and len(errors) < 10:
                name, job = jobs[k % 3] if rng.random() < 0.5 else rng.choice(jobs)
                try:
                    job(rng)
                    counts[name] += 1
                except Exception as exc:  # any failure is a finding, reported
                    errors.append(f"{name}: {exc!r}")

        def materializer() -> None:
            env = {**os.environ, "XNAT_USER": "alice", "XNAT_PASS": "secret"}
            while time.monotonic() < end:
                shutil.rmtree(out, ignore_errors=True)
                done = subprocess.run([sys.executable, "-m", "xnatfs", "materialize", emu.url,
                                       "/", "-o", str(out), "-j", "4"], env=env,
                                      capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    errors.append(f"materialize: {done.stderr.strip()[-300:]}")
                    return
                for p, f in files.items():
                    if (out / p).read_bytes() != f.read():
                        errors.append(f"materialize: {p}")
                counts["materialize"] += 1

        threads = [threading.Thread(target=reader, args=(k,)) for k in range(readers)]
        threads.append(threading.Thread(target=materializer))
        for t in threads:
            t.start()
        samples, peak_cache = [], 0
        while any(t.is_alive() for t in threads):
            samples.append(sample(pid))
            peak_cache = max(peak_cache, cache_bytes(cache))
            time.sleep(0.5)
        for t in threads:
            t.join()
        after = sample(pid)  # idle again: every reader is done
        status = m.stop()
    warm = samples[min(len(samples) - 1, max(1, len(samples) // 4))]
    report = {
        "seconds": seconds, "counts": counts, "errors": errors, "mount_exit": status,
        "warm": warm, "peak": {k: max(s[k] for s in samples) for k in warm}, "after": after,
        "cache_peak_bytes": peak_cache, "cache_limit": CACHE_LIMIT,
    }
    report["ok"] = (not errors and status == 0 and peak_cache <= CACHE_LIMIT
                    and after["fds"] <= warm["fds"] + 4
                    and after["threads"] <= warm["threads"] + 4
                    and report["peak"]["rss_kib"] <= warm["rss_kib"] + 96 * 1024
                    and all(counts.values()))
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--readers", type=int, default=6)
    args = parser.parse_args()
    if not __package__:  # run as a file: the repository root is not on sys.path
        print("soak: run it from the repository root: python -m scripts.soak", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="xnatfs-soak-") as work:
        report = soak(args.minutes * 60, Path(work), args.readers)
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
