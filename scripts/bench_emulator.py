"""Download throughput of the emulator against a plain static file server, both on loopback.

Serves one synthetic file from the emulator and one file of the same size on disk through
``python -m http.server``, times ``curl -o /dev/null`` on each (best and median of N runs)
and prints MB/s and the emulator/static ratio. Also times the same file served by the
emulator from disk (``load_folder``, sendfile), and the first and second listing of the
synthetic file's resource (the first computes its MD5). Usage::

    .venv/bin/python scripts/bench_emulator.py [--size 1G] [--runs 3]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from xnat_emulator import (
    Emulator,
    EmulatorConfig,
    SyntheticSpec,
    load_folder,
    synthetic_archive,
)
from xnatfs.cli.units import parse_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G", help="file size (default 1G)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = parse_size(args.size)
    spec = SyntheticSpec(subjects=1, sessions=1, scans=1, dicoms=0, niftis=1, nifti_size=size,
                         session_resources=0, subject_resources=0, project_resources=0,
                         assessors=0)
    archive = synthetic_archive(spec)
    (big,) = [f for f in archive.files() if f.size == size]
    config = EmulatorConfig(require_login=False)
    with Emulator(archive, config) as emulator, tempfile.TemporaryDirectory() as top:
        folder = Path(top, "P/S/MR/scans/1-T1/resources/NIFTI/files")
        folder.mkdir(parents=True)
        with open(folder / "big.bin", "wb") as out:
            for piece in big.content.chunks(0, size):
                out.write(piece)
        listing = emulator.url + big.uri.rsplit("/files/", 1)[0] + "/files"
        first, second = _timings(listing, 2)
        port = _free_port()
        static = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port),
             "--directory", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for(port)
            emulated = _timings(emulator.url + big.uri, args.runs)
            served = _timings(f"http://127.0.0.1:{port}/big.bin", args.runs)
        finally:
            static.terminate()
            static.wait()
        disk = load_folder(top)
        with Emulator(disk, config) as from_disk:
            (on_disk,) = disk.files()
            from_folder = _timings(from_disk.url + on_disk.uri, args.runs)
    mb = size / 1e6
    for name, times in (("emulator", emulated), ("static", served), ("folder", from_folder)):
        print(f"{name:9s} best {mb / min(times):8.0f} MB/s   median "
              f"{mb / statistics.median(times):8.0f} MB/s   ({args.runs} runs of {args.size})")
    print(f"listing of the {args.size} file's resource: first {first:.2f} s (computes the MD5), "
          f"then {second * 1000:.1f} ms")
    ratio = statistics.median(served) / statistics.median(emulated)
    print(f"ratio emulator/static (median): {ratio:.2f}  "
          f"(best: {min(served) / min(emulated):.2f}; target >= 0.5)")
    return 0


def _timings(url: str, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        result = subprocess.run(["curl", "-sS", "-f", "-o", "/dev/null", "-w", "%{time_total}",
                                 url], check=True, capture_output=True, text=True)
        times.append(float(result.stdout))
    return times


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("static server did not start")


if __name__ == "__main__":
    raise SystemExit(main())
