"""``xnatfs bids`` of a multi-session project against doing it by hand, in the same run.

By hand: ``xnatfs materialize`` of the very DICOM series ``xnatfs bids`` converts, then
dcm2niix on each series in turn, as a user with a download tool and a converter would. Both
against the emulator's BIDS project behind the WAN profile (20 ms per response, 400 Mbit/s),
so downloads take time that conversion can overlap. ``xnatfs bids`` also reuses what the
server holds as NIfTI with sidecars; by hand, that is left out, so the comparison favours the
baseline. Target: ≤ 1.0x. Medians of ``--runs``. Usage::

    .venv/bin/python scripts/bench_bids.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

from scripts.benchlib import (
    WAN,
    XNATFS,
    Emulator,
    Table,
    child_env,
    footer,
    header,
    median,
    run,
    scratch,
)

PROJECT = "BIDS01"
DCM2NIIX = shutil.which("dcm2niix", path=os.path.dirname(sys.executable)) or "dcm2niix"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    start = header([])
    table = Table(("figure", "median wall", "runs"))
    with scratch("xnatfs-bench-bids-") as work:
        home = work / "home"
        home.mkdir()
        env = {**child_env(home), "XNAT_USER": "bench"}
        with Emulator("projects=0,bids=1", WAN, workdir=work) as emu:
            plan = json.loads(run([*XNATFS, "bids", emu.url, PROJECT, "-o", str(work / "p"),
                                   "--dry-run", "--json"], env=env).stdout)
            dicom = [row["dicom"] for row in plan["series"] if row["action"] == "convert"]
            ours, by_hand = [], []
            for n in range(args.runs):
                out = work / f"bids{n}"
                ours.append(run([*XNATFS, "bids", emu.url, PROJECT, "-o", str(out)],
                                env=env).seconds)
                began = time.perf_counter()
                raw = work / f"dicom{n}"
                run([*XNATFS, "materialize", emu.url, *dicom, "-o", str(raw)], env=env)
                for i, path in enumerate(dicom):
                    converted = work / f"nifti{n}" / str(i)
                    converted.mkdir(parents=True)
                    run([DCM2NIIX, "-b", "y", "-z", "y", "-o", str(converted), str(raw / path)])
                by_hand.append(time.perf_counter() - began)
            ratio = median(ours) / median(by_hand)
            table.add(f"xnatfs bids {PROJECT} ({len(plan['series'])} series, "
                      f"{len(dicom)} converted)", f"{median(ours):.2f} s",
                      " ".join(f"{t:.2f}" for t in ours))
            table.add("by hand: materialize the DICOM, then dcm2niix per series",
                      f"{median(by_hand):.2f} s", " ".join(f"{t:.2f}" for t in by_hand))
            verdict = "ok" if ratio <= 1.0 else "over target"
            table.add(f"ratio xnatfs bids / by hand (target ≤ 1.0x: {verdict})",
                      f"{ratio:.2f}x", "")
    footer(table, start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
