"""How long ``xnatfs datalad`` takes to make a dataset of 10,000 files, and what it costs.

The emulator (in its own process, loopback) serves one project of ``--files`` DICOM files
spread over subjects, sessions and scans. Timed: the first run (a new DataLad dataset, one
annexed file per XNAT file, content absent), a rerun against the unchanged server (a sync
that finds nothing to do), and ``git annex get`` of one session's files through the
special remote. Each line says what the server was asked: the first run must download no
file body. The target for the first run is 30 s on a 2-CPU machine. Usage::

    .venv/bin/python scripts/bench_datalad.py [--files 10000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import sysconfig

from scripts.benchlib import (
    ONLY_FILES,
    PROJECT,
    USER,
    XNATFS,
    Emulator,
    Table,
    child_env,
    footer,
    header,
    run,
    scratch,
    traffic,
)

TARGET = 30.0  # seconds for 10,000 files


def spec(files: int) -> str:
    """10 subjects of 2 sessions of 5 scans: ``files`` DICOMs in 100 scans."""
    per_scan = max(1, files // 100)
    return (f"projects=1,subjects=10,sessions=2,scans=5,dicoms={per_scan},dicom_size=2048,"
            f"{ONLY_FILES}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args()
    start = header(["git", "git-annex"])
    table = Table(["figure", "wall", "CPU (xnatfs)", "server"])
    with scratch("xnatfs-bench-datalad-") as work:
        home = work / "home"
        home.mkdir()
        env = {**child_env(home), "XNAT_USER": USER, "GIT_AUTHOR_NAME": "bench",
               "GIT_AUTHOR_EMAIL": "bench@example.org", "GIT_COMMITTER_NAME": "bench",
               "GIT_COMMITTER_EMAIL": "bench@example.org"}
        env["PATH"] = sysconfig.get_path("scripts") + os.pathsep + env.get("PATH", "")
        with Emulator(spec(args.files), workdir=work) as emu:
            out = work / "ds"
            command = [*XNATFS, "datalad", emu.url, PROJECT, "-o", str(out)]
            run([*XNATFS, "ls", emu.url, PROJECT, "-R"], env=env)  # digests computed once
            mark = emu.mark()
            first = run(command, env=env)
            asked = emu.requests(mark)
            staged = subprocess.run(["git", "ls-files", "-s"], cwd=out, capture_output=True,
                                    text=True, check=True).stdout
            files = sum(line.startswith("120000 ") for line in staged.splitlines())
            bodies = sum(r.kind == "file" for r in asked)
            verdict = "ok" if first.seconds <= TARGET * args.files / 10_000 else "over target"
            table.add(f"first run: dataset of {files:,} files ({verdict})",
                      f"{first.seconds:.1f} s", f"{first.cpu:.1f} s", traffic(asked))
            mark = emu.mark()
            again = run(command, env=env)
            table.add("rerun, server unchanged", f"{again.seconds:.1f} s", f"{again.cpu:.1f} s",
                      traffic(emu.requests(mark)))
            session = f"{PROJECT}/S001/S001_MR1"
            mark = emu.mark()
            got = run(["git", "-C", str(out), "annex", "get", "-J4", "--quiet", session],
                      env=env)
            table.add(f"git annex get -J4 of one session ({args.files // 20:,} files)",
                      f"{got.seconds:.1f} s", "-", traffic(emu.requests(mark)))
            if bodies:
                print(f"bench: the first run downloaded {bodies} file bodies", file=sys.stderr)
                return 1
    footer(table, start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
