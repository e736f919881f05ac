"""What a run did: a progress bar while it runs, a summary and every failure at the end.

The bar (bytes, files, rate, ETA) appears only when stderr is a terminal; its total grows while
the selection is still being listed and shrinks when a file turns out to be there already.
The summary goes to stderr, one line per failure and one line of totals; ``--json`` prints the
same as a JSON object on stdout for scripts and job arrays.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import IO, Any

from tqdm import tqdm

from xnatfs.cli.units import human_size


class Outcome(StrEnum):
    DOWNLOADED = "downloaded"
    """Fetched in this run (or continued from a part file) and verified."""
    PRESENT = "present"
    """Already in the output folder from an earlier run, with the right size."""
    VERIFIED = "verified"
    """Already there, and ``--verify`` found its MD5 equal to the server's."""
    FAILED = "failed"


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


@dataclass(frozen=True, slots=True)
class Summary:
    ok: bool
    output: str
    selected: int
    downloaded: int
    present: int
    verified: int
    replaced: int
    failed: int
    size_only: int
    selected_bytes: int
    downloaded_bytes: int
    seconds: float
    failures: list[dict[str, str]]

    @property
    def rate(self) -> float:
        return self.downloaded_bytes / self.seconds if self.seconds > 0 else 0.0


class Report:
    """Collects results from every worker thread. Thread-safe."""

    def __init__(self, output: str, *, progress: bool | None = None,
                 stream: IO[str] | None = None) -> None:
        self.output = output
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._results: dict[str, Result] = {}
        self._problems: list[tuple[str, str]] = []  # listing failures: (path, reason)
        self._selected = 0
        self._selected_bytes = 0
        self._written = 0
        show = self.stream.isatty() if progress is None else progress
        self._bar: tqdm[Any] | None = tqdm(
            total=0, unit="B", unit_scale=True, unit_divisor=1024, file=self.stream,
            dynamic_ncols=True, mininterval=0.25, desc="materialize") if show else None

    # -- events from the engine ------------------------------------------------------------

    def planned(self, size: int | None) -> None:
        """One more file selected (size None: not known until the file is looked at)."""
        with self._lock:
            self._selected += 1
            self._selected_bytes += size or 0
            if self._bar is not None and size:
                self._bar.total += size
                self._postfix()

    def resolved_size(self, size: int) -> None:
        """A file planned without a size turned out to have this one."""
        with self._lock:
            self._selected_bytes += size
        self.expect(size)

    def expect(self, n: int) -> None:
        """``n`` more (or, negative, fewer) bytes to write than the bar thought."""
        with self._lock:
            if self._bar is not None and n:
                self._bar.total += n

    def wrote(self, n: int) -> None:
        with self._lock:
            self._written += n
            if self._bar is not None:
                self._bar.update(n)

    def finished(self, result: Result) -> None:
        """A file's final outcome (a later attempt's outcome replaces an earlier one)."""
        with self._lock:
            self._results[result.path] = result
            if self._bar is not None:
                self._postfix()

    def listing_failed(self, path: str, reason: str) -> None:
        with self._lock:
            self._problems.append((path, reason))

    def _postfix(self) -> None:
        assert self._bar is not None
        done = len(self._results)
        failed = sum(r.outcome is Outcome.FAILED for r in self._results.values())
        text = f"{done}/{self._selected} files" + (f", {failed} failed" if failed else "")
        self._bar.set_postfix_str(text, refresh=False)

    # -- the end ---------------------------------------------------------------------------

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def summary(self) -> Summary:
        with self._lock:
            results = list(self._results.values())
            problems = list(self._problems)
            selected, selected_bytes = self._selected, self._selected_bytes
            written = self._written
        count = {o: sum(r.outcome is o for r in results) for o in Outcome}
        failures = [{"path": p, "reason": f"listing failed: {why}"} for p, why in problems]
        failures += [{"path": r.path, "reason": r.reason}
                     for r in sorted(results, key=lambda r: r.path)
                     if r.outcome is Outcome.FAILED]
        missing = selected - len(results)  # planned but never finished (interrupted)
        return Summary(
            ok=not failures and not missing,
            output=self.output,
            selected=selected,
            downloaded=count[Outcome.DOWNLOADED],
            present=count[Outcome.PRESENT],
            verified=count[Outcome.VERIFIED],
            replaced=sum(r.replaced for r in results),
            failed=count[Outcome.FAILED],
            size_only=sum(r.checked == "size" for r in results
                          if r.outcome is not Outcome.FAILED),
            selected_bytes=selected_bytes,
            downloaded_bytes=written,
            seconds=round(time.monotonic() - self.started, 3),
            failures=failures,
        )

    def print_summary(self, summary: Summary, *, json_out: IO[str] | None = None) -> None:
        """Failures and totals on the report stream; with ``json_out``, also the JSON."""
        self.close()
        out = self.stream
        for failure in summary.failures:
            print(f"failed: {failure['path']}: {failure['reason']}", file=out)
        parts = [f"{summary.downloaded} downloaded ({human_size(summary.downloaded_bytes)})"]
        if summary.present or summary.verified:
            checked = f" ({summary.verified} checked by MD5)" if summary.verified else ""
            parts.append(f"{summary.present + summary.verified} already present{checked}")
        if summary.replaced:
            parts.append(f"{summary.replaced} replaced after failing --verify")
        if summary.failed or summary.failures:
            parts.append(f"{len(summary.failures)} failed")
        unfinished = summary.selected - summary.downloaded - summary.present - \
            summary.verified - summary.failed
        if unfinished:
            parts.append(f"{unfinished} not finished")
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
