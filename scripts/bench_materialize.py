"""How fast ``xnatfs materialize`` is, against the physical limit and against xnatpy.

Serves one synthetic project (thousands of small DICOM files and a few large files) from
the emulator in its own process, once on loopback and once with an emulated WAN (latency on
every response, one aggregate bandwidth cap), and in each profile times, each in a fresh
process and a fresh folder:

* ``xnatfs materialize URL PROJ01 -o DIR`` (exit code, file count and bytes checked);
* xnatpy (PyPI ``xnat``) downloading the same files its own way: a walk over subjects,
  sessions, scans and resources calling ``FileData.download`` (MD5-checked, one at a time);
* xnatpy ``project.download_dir`` (one server-side zip per session; scans only, so fewer bytes).

It prints wall time, rate, the ratio to the physical limit (bytes / emulated bandwidth) and
peak RSS of each. Usage (defaults: about 3200 x 64 KiB + 4 x 200 MiB)::

    .venv/bin/python scripts/bench_materialize.py [--profiles loopback,wan]
        [--latency 0.02] [--bandwidth 64M] [--dicoms 200] [--large-size 200M] [-j N]
        [--no-xnatpy]

Shrink it with e.g. ``--subjects 1 --dicoms 50 --large-size 32M``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from benchlib import PASSWORD, USER, Emulator, discard, scratch

from xnat_emulator import SyntheticSpec, synthetic_archive
from xnatfs.cli.units import parse_size

XNATPY_FILES = """
import os, sys, xnat
url, target = sys.argv[1], sys.argv[2]
user, password = os.environ["XNAT_USER"], os.environ["XNAT_PASS"]
with xnat.connect(url, user=user, password=password, loglevel="ERROR") as s:
    project = s.projects["PROJ01"]
    def fetch(resources, where):
        for res in resources.values():
            for f in res.files.values():
                path = os.path.join(target, where, res.label, f.id)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                f.download(path, verbose=False)
    fetch(project.resources, "")
    for subject in project.subjects.values():
        fetch(subject.resources, subject.label)
        for exp in subject.experiments.values():
            where = os.path.join(subject.label, exp.label)
            fetch(exp.resources, where)
            for scan in exp.scans.values():
                fetch(scan.resources, os.path.join(where, scan.id))
            for assessor in exp.assessors.values():
                fetch(assessor.resources, os.path.join(where, assessor.label))
"""

XNATPY_ZIP = """
import os, sys, xnat
user, password = os.environ["XNAT_USER"], os.environ["XNAT_PASS"]
with xnat.connect(sys.argv[1], user=user, password=password, loglevel="ERROR") as s:
    s.projects["PROJ01"].download_dir(sys.argv[2], verbose=False)
"""


@dataclass
class Timing:
    name: str
    seconds: float
    files: int
    nbytes: int
    peak_rss: int  # bytes
    ok: bool


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="loopback,wan",
                        help="loopback, wan or both (default both)")
    parser.add_argument("--latency", default="0.02", help="WAN seconds per response")
    parser.add_argument("--bandwidth", default="64M", help="WAN aggregate bytes/s (64M)")
    parser.add_argument("--subjects", type=int, default=2)
    parser.add_argument("--sessions", type=int, default=2, help="per subject")
    parser.add_argument("--scans", type=int, default=4, help="per session")
    parser.add_argument("--dicoms", type=int, default=200, help="small files per scan")
    parser.add_argument("--dicom-size", default="64K")
    parser.add_argument("--large-size", default="200M", help="one large file per session")
    parser.add_argument("-j", "--jobs", help="materialize -j (default: its own)")
    parser.add_argument("--no-xnatpy", action="store_true", help="time materialize only")
    args = parser.parse_args()

    spec = SyntheticSpec(
        projects=1, subjects=args.subjects, sessions=args.sessions, scans=args.scans,
        dicoms=args.dicoms, dicom_size=parse_size(args.dicom_size), niftis=0,
        session_niftis=1, nifti_size=parse_size(args.large_size), seed=1)
    files = [f for f in synthetic_archive(spec).files() if f.project_id == "PROJ01"]
    total = sum(f.size for f in files)
    small = sum(f.size < (1 << 20) for f in files)
    print(f"project: {len(files)} files, {total / 2**20:.0f} MiB ({small} small, "
          f"{len(files) - small} large of {args.large_size}); python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs")
    spec_text = (f"projects=1,subjects={spec.subjects},sessions={spec.sessions},"
                 f"scans={spec.scans},dicoms={spec.dicoms},dicom_size={spec.dicom_size},"
                 f"niftis=0,session_niftis=1,nifti_size={spec.nifti_size},seed=1")
    for profile in args.profiles.split(","):
        if profile == "loopback":
            knobs: list[str] = []
            limit = None
        elif profile == "wan":
            bandwidth = parse_size(args.bandwidth)
            knobs = ["--latency", args.latency, "--bandwidth", str(bandwidth)]
            limit = total / bandwidth
        else:
            parser.error(f"unknown profile {profile!r}")
        print(f"\n== {profile}" + (f": {args.latency} s per response, "
                                   f"{parse_size(args.bandwidth) / 2**20:.0f} MiB/s aggregate; "
                                   f"physical limit {limit:.1f} s" if limit else ""))
        with scratch("bench-emu-") as logs, Emulator(spec_text, knobs, workdir=logs) as emu:
            url = emu.url
            runs = [materialize(url, args.jobs)]
            if not args.no_xnatpy:
                runs.append(python_script("xnatpy per file", XNATPY_FILES, url))
                runs.append(python_script("xnatpy download_dir", XNATPY_ZIP, url))
        for t in runs:
            rate = t.nbytes / t.seconds / 2**20
            versus = f"{t.seconds / limit:5.2f}x limit" if limit else ""
            status = "" if t.ok else "  FAILED"
            print(f"  {t.name:20s} {t.seconds:7.1f} s  {rate:7.1f} MiB/s  {t.files:5d} files "
                  f"{t.nbytes / 2**20:7.0f} MiB  {versus}  peak RSS "
                  f"{t.peak_rss / 2**20:4.0f} MiB{status}")
        base = runs[0]
        for t in runs[1:]:
            print(f"  materialize is {t.seconds / base.seconds:.1f}x faster than {t.name}"
                  f" (per byte: {(t.seconds / t.nbytes) / (base.seconds / base.nbytes):.1f}x)")
        if base.files != len(files) or base.nbytes != total:
            print(f"  materialize got {base.files} files / {base.nbytes} bytes, expected "
                  f"{len(files)} / {total}")
            return 1
    return 0


def timed(name: str, argv: list[str], target: str, env: dict[str, str] | None = None,
          ) -> tuple[Timing, str]:
    """Run ``argv`` in a fresh process; wall time, its peak RSS, what landed in ``target``."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        child = subprocess.Popen(argv, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        child.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    count, size = 0, 0
    for folder, folders, entries in os.walk(target):
        if folder == target:  # materialize's records are not tree files
            folders[:] = [f for f in folders if f != ".xnatfs"]
            entries = [e for e in entries if e != "MD5SUMS"]
        for entry in entries:
            count += 1
            size += os.path.getsize(os.path.join(folder, entry))
    if code:
        print(f"  {name} failed ({code}): {stderr.strip()[-500:]}")
    return Timing(name, seconds, count, size, usage.ru_maxrss * 1024, code == 0), stdout


ENV = {**os.environ, "XNAT_USER": USER, "XNAT_PASS": PASSWORD}


def materialize(url: str, jobs: str | None) -> Timing:
    target = tempfile.mkdtemp(prefix="bench-materialize-")
    env = {**ENV, "XDG_CACHE_HOME": os.path.join(target, ".no-cache")}  # no mount cache
    try:
        timing, out = timed("xnatfs materialize", [
            sys.executable, "-m", "xnatfs", "materialize", url, "PROJ01", "-o",
            os.path.join(target, "out"), "--json", *(["-j", jobs] if jobs else [])],
            os.path.join(target, "out"), env)
        timing.ok = timing.ok and json.loads(out)["ok"]
        return timing
    finally:
        discard(target)


def python_script(name: str, script: str, url: str) -> Timing:
    target = tempfile.mkdtemp(prefix="bench-xnatpy-")
    try:
        return timed(name, [sys.executable, "-c", script, url, target], target, ENV)[0]
    finally:
        discard(target)


if __name__ == "__main__":
    raise SystemExit(main())
