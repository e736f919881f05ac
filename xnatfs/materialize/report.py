"""What a run did: progress while it runs, a summary and every failure at the end.

Progress is a tqdm bar when stderr is a terminal, and otherwise (a SLURM or cron log) one line
every ``interval`` seconds; both say the same thing (files, bytes, rate, ETA, failures so far)
in the units of ``human_size``, like the summary. The bar's total grows while the selection is
still being listed and shrinks when a file turns out to be there already. The summary goes to
stderr: ``gone:`` and ``failed:`` lines, then one line of totals; ``--json`` prints the same as
a JSON object on stdout for scripts and job arrays. After ``freeze`` (an interrupted run) no
outcome is counted any more, so the summary says exactly what is on disk.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import IO, Any

from tqdm import tqdm

from xnatfs.cli.units import human_size

PROGRESS_INTERVAL = 10.0
"""Seconds between progress lines when stderr is not a terminal."""
BAR_INTERVAL = 0.25
"""Seconds between redraws of the bar at a terminal, and between makings of its text."""


class Outcome(StrEnum):
    DOWNLOADED = "downloaded"
    """Fetched in this run (or continued from a part file) and verified."""
    PRESENT = "present"
    """Already in the output folder, unchanged on the server since it was fetched."""
    VERIFIED = "verified"
    """Already there, and its MD5 was checked (``--verify``, or a file the manifest lacked)."""
    FAILED = "failed"


class Change(StrEnum):
    """What a sync does with one file, from the manifest, DIR and the server's listing."""

    NEW = "new"
    CHANGED = "changed"
    """Its size or MD5 changed on the server, or the local copy is not what xnatfs wrote."""
    UNCHANGED = "unchanged"
    OVERWRITE = "overwrite"
    """Unchanged, but ``--overwrite`` fetches it again."""
    GONE = "gone"
    """In the manifest and the selection, no longer on the server."""


@dataclass(frozen=True, slots=True)
class Result:
    path: str
    outcome: Outcome
    size: int = 0
    reason: str = ""
    checked: str = ""
    """How the bytes were checked: ``md5`` or ``size`` (the listing had no digest)."""
    replaced: bool = False
    """A local copy that failed ``--verify`` was downloaded again."""
    change: str = ""
    """For a download: ``new`` or ``changed``."""


@dataclass(frozen=True, slots=True)
class Summary:
    ok: bool
    output: str
    selected: int
    downloaded: int
    new: int
    changed: int
    present: int
    verified: int
    replaced: int
    failed: int
    """Every failure listed in ``failures``: files, and folders whose listing failed."""
    size_only: int
    selected_bytes: int
    downloaded_bytes: int
    seconds: float
    failures: list[dict[str, str]]
    gone: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unfinished: int = 0

    @property
    def rate(self) -> float:
        return self.downloaded_bytes / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class PlanRow:
    path: str
    size: int | None
    change: Change


class Report:
    """Collects results from every worker thread. Thread-safe."""

    def __init__(self, output: str, *, progress: bool | None = None,
                 stream: IO[str] | None = None,
                 interval: float = PROGRESS_INTERVAL) -> None:
        self.output = output
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._results: dict[str, Result] = {}
        self._problems: list[tuple[str, str]] = []  # listing failures: (path, reason)
        self._gone: list[str] = []
        self._deleted: list[str] = []
        self._selected = 0
        self._selected_bytes = 0
        self._written = 0
        self._todo = 0  # bytes this run expects to write
        self._frozen = False
        self._failed = 0  # results that are failures (counted as they come, not per redraw)
        self._texted = 0.0  # when the bar's text was last made
        self._stopped = threading.Event()
        show = self.stream.isatty() if progress is None else progress
        self._bar: tqdm[Any] | None = tqdm(
            total=0, file=self.stream, dynamic_ncols=True, mininterval=BAR_INTERVAL,
            desc="materialize", bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}",
        ) if show else None
        if not show and interval > 0:
            threading.Thread(target=self._ticker, args=(interval,), name="xnatfs-progress",
                             daemon=True).start()

    # -- events from the engine ------------------------------------------------------------

    def planned(self, size: int | None) -> None:
        """One more file selected (size None: not known until the file is looked at)."""
        with self._lock:
            self._selected += 1
            self._selected_bytes += size or 0
            self._todo += size or 0
            self._refresh()

    def resolved_size(self, size: int) -> None:
        """A file planned without a size turned out to have this one."""
        with self._lock:
            self._selected_bytes += size
        self.expect(size)

    def expect(self, n: int) -> None:
        """``n`` more (or, negative, fewer) bytes to write than thought so far."""
        with self._lock:
            self._todo += n
            self._refresh()

    def wrote(self, n: int) -> None:
        with self._lock:
            self._written += n
            self._refresh(update=n)

    def finished(self, result: Result) -> None:
        """A file's final outcome (a later attempt's outcome replaces an earlier one)."""
        with self._lock:
            if self._frozen:
                return
            old = self._results.get(result.path)
            self._failed += (result.outcome is Outcome.FAILED) - \
                (old is not None and old.outcome is Outcome.FAILED)
            self._results[result.path] = result
            self._refresh()

    def listing_failed(self, path: str, reason: str) -> None:
        with self._lock:
            self._problems.append((path, reason))

    def gone(self, path: str, *, deleted: bool) -> None:
        with self._lock:
            (self._deleted if deleted else self._gone).append(path)

    def freeze(self) -> None:
        """Count nothing more: the run was interrupted and its summary is being made."""
        with self._lock:
            self._frozen = True

    # -- progress --------------------------------------------------------------------------

    def progress_text(self) -> str:
        with self._lock:
            return self._progress_text()

    def _progress_text(self) -> str:
        done, failed = len(self._results), self._failed
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self._written / elapsed
        total = max(self._todo, self._written)
        text = (f"{done}/{self._selected} files, {human_size(self._written)} of "
                f"{human_size(total)}, {human_size(rate)}/s")
        if rate > 0 and total > self._written:
            text += f", ETA {_clock((total - self._written) / rate)}"
        return text + (f", {failed} failed" if failed else "")

    def _refresh(self, update: int = 0) -> None:
        """Bring the bar up to date (lock held). Its text is made at most as often as the
        bar is drawn: made at every event, it cost 0.5 ms a file at a terminal."""
        if self._bar is None:
            return
        self._bar.total = max(self._todo, self._written, 1)
        now = time.monotonic()
        if now - self._texted >= BAR_INTERVAL:
            self._texted = now
            self._bar.set_postfix_str(self._progress_text(), refresh=False)
        self._bar.update(update)

    def _ticker(self, interval: float) -> None:
        while not self._stopped.wait(interval):
            print(f"materialize: {self.progress_text()}", file=self.stream, flush=True)

    # -- the end ---------------------------------------------------------------------------

    def close(self) -> None:
        self._stopped.set()
        with self._lock:
            if self._bar is not None:
                self._bar.set_postfix_str(self._progress_text(), refresh=True)  # the last word
                self._bar.close()
                self._bar = None

    def summary(self) -> Summary:
        with self._lock:
            results = list(self._results.values())
            problems = list(self._problems)
            selected, selected_bytes = self._selected, self._selected_bytes
            written = self._written
            gone, deleted = sorted(self._gone), sorted(self._deleted)
        count = {o: sum(r.outcome is o for r in results) for o in Outcome}
        failures = [{"path": p, "reason": f"listing failed: {why}"} for p, why in problems]
        failures += [{"path": r.path, "reason": r.reason}
                     for r in sorted(results, key=lambda r: r.path)
                     if r.outcome is Outcome.FAILED]
        missing = selected - len(results)  # planned but never finished (interrupted)
        downloaded = [r for r in results if r.outcome is Outcome.DOWNLOADED]
        return Summary(
            ok=not failures and not missing,
            output=self.output,
            selected=selected,
            downloaded=len(downloaded),
            new=sum(r.change == Change.NEW for r in downloaded),
            changed=sum(r.change == Change.CHANGED for r in downloaded),
            present=count[Outcome.PRESENT],
            verified=count[Outcome.VERIFIED],
            replaced=sum(r.replaced for r in results),
            failed=len(failures),
            size_only=sum(r.checked == "size" for r in results
                          if r.outcome is not Outcome.FAILED),
            selected_bytes=selected_bytes,
            downloaded_bytes=written,
            seconds=round(time.monotonic() - self.started, 3),
            failures=failures,
            gone=gone,
            deleted=deleted,
            unfinished=missing,
        )

    def print_summary(self, summary: Summary, *, json_out: IO[str] | None = None) -> None:
        """Gone files, failures and totals on the report stream; with ``json_out``, the JSON."""
        self.close()
        out = self.stream
        for path in summary.deleted:
            print(f"deleted: {path}", file=out)
        for path in summary.gone:
            print(f"gone: {path}", file=out)
        for failure in summary.failures:
            print(f"failed: {failure['path']}: {failure['reason']}", file=out)
        got = f"{summary.downloaded} downloaded ({human_size(summary.downloaded_bytes)})"
        if summary.changed:
            got = got[:-1] + f"; {summary.new} new, {summary.changed} changed)"
        parts = [got]
        if summary.present or summary.verified:
            checked = f" ({summary.verified} checked by MD5)" if summary.verified else ""
            parts.append(f"{summary.present + summary.verified} already present{checked}")
        if summary.replaced:
            parts.append(f"{summary.replaced} replaced after failing --verify")
        if summary.failed:
            parts.append(f"{summary.failed} failed")
        if summary.unfinished:
            parts.append(f"{summary.unfinished} not finished")
        if summary.gone:
            parts.append(f"{len(summary.gone)} gone from the server (kept; --delete removes)")
        if summary.deleted:
            parts.append(f"{len(summary.deleted)} deleted")
        size, rate = human_size(summary.selected_bytes), human_size(summary.rate)
        print(f"{summary.selected} files ({size}) in {summary.output}: "
              f"{', '.join(parts)}; {summary.seconds:.1f} s, {rate}/s", file=out)
        if not summary.selected:
            print("note: nothing matched the selection", file=out)
        if summary.size_only:
            print(f"note: {summary.size_only} files have no MD5 on the server; "
                  "their size was checked", file=out)
        if json_out is not None:
            doc = asdict(summary)
            doc["rate"] = round(summary.rate, 1)
            json.dump(doc, json_out, indent=2, ensure_ascii=False)
            print(file=json_out)

    def print_plan(self, rows: list[PlanRow], failures: list[dict[str, str]], *,
                   json_out: IO[str] | None) -> None:
        """A dry run's plan: a line per file (or JSON), then the counts and bytes per kind."""
        self.close()
        rows = sorted(rows, key=lambda r: r.path)
        counts = {c: [0, 0] for c in Change}
        for r in rows:
            counts[r.change][0] += 1
            counts[r.change][1] += r.size or 0
        fetch = [r for r in rows if r.change in (Change.NEW, Change.CHANGED, Change.OVERWRITE)]
        fetch_bytes = sum(r.size or 0 for r in fetch)
        listed = [r for r in rows if r.change is not Change.GONE]
        total = sum(r.size or 0 for r in listed)
        if json_out is not None:
            doc = {"output": self.output, "selected": len(listed), "selected_bytes": total,
                   "to_download": len(fetch), "to_download_bytes": fetch_bytes,
                   **{c.value: counts[c][0] for c in Change},
                   **{f"{c.value}_bytes": counts[c][1] for c in Change},
                   "files": [{"path": r.path, "size": r.size, "change": r.change.value,
                              "present": r.change is Change.UNCHANGED} for r in rows],
                   "failures": failures}
            json.dump(doc, json_out, indent=2, ensure_ascii=False)
            print(file=json_out)
        else:
            for r in rows:
                size = "?" if r.size is None else r.size
                print(f"{r.change.value:9} {size:>12}  {r.path}")
        for failure in failures:
            print(f"failed: {failure['path']}: {failure['reason']}", file=self.stream)
        kinds = ", ".join(f"{counts[c][0]} {c.value} ({human_size(counts[c][1])})"
                          for c in Change if counts[c][0] or c is not Change.OVERWRITE)
        print(f"dry run: {len(listed)} files ({human_size(total)}) selected in {self.output}: "
              f"{kinds}; {len(fetch)} to download ({human_size(fetch_bytes)})",
              file=self.stream)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
