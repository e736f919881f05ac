"""``xnatfs verify DIR``: is a materialized folder still what xnatfs wrote? Offline.

Every file in DIR's manifest is re-hashed and compared with the size and MD5 recorded when it
was written, so a flipped bit, a truncated copy or a deleted file is found years later, on a
machine that never saw the server. One line per damaged file (``corrupt:``, ``truncated:``,
``missing:``) and exit 1; exit 0 when all is intact. ``materialize --verify`` repairs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import IO, Any

from xnatfs.cli.units import human_size, positive_int
from xnatfs.errors import LocalError, UsageError

PROGRESS_INTERVAL = 10.0
EPILOG = """\
DIR is a folder filled by `xnatfs materialize`; its record is DIR/.xnatfs/manifest.jsonl.
Files xnatfs did not write are not looked at. To fetch what verify finds damaged, rerun the
materialize command with --verify (or just rerun it for missing files).

exit status: 0 when every file is intact, 1 when some are not, 2 for bad usage.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify", help="re-hash a materialized folder against its manifest (offline)",
        description="Check every file materialize wrote into DIR against the size and MD5 "
                    "it recorded; no server needed.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", metavar="DIR", help="a folder filled by xnatfs materialize")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("-j", "--jobs", type=positive_int, default=4, metavar="N",
                   help="files hashed at once (default 4)")
    p.set_defaults(run=run)


def check(root: str, rel: str, size: int, md5: str) -> str | None:
    """``missing``, ``truncated``, ``corrupt`` or None (intact) for one manifest entry."""
    from xnatfs.materialize.output import file_md5

    path = os.path.join(root, rel)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "corrupt"
    if not os.path.isfile(path):
        return "missing"
    if st.st_size < size:
        return "truncated"
    if st.st_size != size:
        return "corrupt"
    try:
        return None if file_md5(path) == md5 else "corrupt"
    except LocalError:
        return "corrupt"


def run(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from xnatfs.materialize import manifest

    root = os.path.realpath(args.dir)
    if not os.path.isdir(root):
        raise UsageError(f"{args.dir} is not a folder")
    if not manifest.exists(root):
        raise UsageError(f"{args.dir} has no manifest ({manifest.META_DIR}/{manifest.MANIFEST});"
                         " was it filled by xnatfs materialize?")
    entries = sorted(manifest.read_entries(root).values(), key=lambda e: e.path)
    total = sum(e.size for e in entries)
    progress = _Progress(total, len(entries), sys.stderr)
    started = time.monotonic()

    def one(entry: manifest.Entry) -> tuple[str, str | None]:
        problem = check(root, entry.path, entry.size, entry.md5)
        progress.done(entry.size)
        return entry.path, problem

    try:
        with ThreadPoolExecutor(max(1, min(args.jobs, 32))) as pool:
            results = list(pool.map(one, entries))
    finally:  # the progress line never outlives the command (nor its stderr)
        progress.close()
    problems = [(path, what) for path, what in results if what]
    for path, what in problems:
        print(f"{what}: {path}", file=sys.stderr)
    seconds = time.monotonic() - started
    print(f"{len(entries)} files ({human_size(total)}) in {root}: "
          f"{len(entries) - len(problems)} intact, {len(problems)} damaged; "
          f"{seconds:.1f} s", file=sys.stderr)
    if args.json:
        json.dump({"ok": not problems, "output": root, "files": len(entries), "bytes": total,
                   "intact": len(entries) - len(problems),
                   "problems": [{"path": p, "problem": w} for p, w in problems]},
                  sys.stdout, indent=2, ensure_ascii=False)
        print()
    return 1 if problems else 0


class _Progress:
    """A tqdm bar on a terminal, a line every ``PROGRESS_INTERVAL`` seconds otherwise."""

    def __init__(self, total: int, files: int, stream: IO[str]) -> None:
        from tqdm import tqdm

        self._stream = stream
        self._files = files
        self._total = total
        self._checked = 0
        self._bytes = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._bar: Any = None
        if stream.isatty():
            self._bar = tqdm(total=max(total, 1), file=stream, desc="verify",
                             bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")
        else:
            threading.Thread(target=self._ticker, daemon=True, name="xnatfs-verify").start()

    def _text(self) -> str:
        rate = self._bytes / max(time.monotonic() - self._started, 1e-9)
        return (f"{self._checked}/{self._files} files, {human_size(self._bytes)} of "
                f"{human_size(self._total)}, {human_size(rate)}/s")

    def done(self, size: int) -> None:
        with self._lock:
            self._checked += 1
            self._bytes += size
            if self._bar is not None:
                self._bar.set_postfix_str(self._text(), refresh=False)
                self._bar.update(size)

    def _ticker(self) -> None:
        while not self._stop.wait(PROGRESS_INTERVAL):
            with self._lock:  # closed meanwhile: its stream may be closed too
                if not self._stop.is_set():
                    print(f"verify: {self._text()}", file=self._stream, flush=True)

    def close(self) -> None:
        with self._lock:
            self._stop.set()
        if self._bar is not None:
            self._bar.close()
