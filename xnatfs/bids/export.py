"""``xnatfs bids``: a BIDS dataset written from a plan, series in parallel, resumable.

* Series the state says are already written from the same sources are left alone: a rerun
  with nothing changed downloads nothing.
* Reused files (``plan.Series.reused``) are copied through the reader, which checks them
  against the listing's size and MD5, and a func sidecar gets its ``TaskName``.
* DICOM to convert is fetched by materialize's engine, all series in one run (one connection
  budget, a zip per resource where that is cheaper, resumable through its own manifest) into
  ``DIR/.xnatfs/bids-work/dicom``; each series is handed to dcm2niix as soon as its last file
  is verified, so downloads overlap conversion.
* A series is committed whole or not at all: its files are renamed into place under the
  state's ``pending`` mark (``state.py``), image last; a file that is not this series' own
  (another series', or one the user put there) is never overwritten.
* Then the dataset's own files: ``participants.tsv`` and each session's ``*_scans.tsv`` from
  everything the state holds (earlier runs included); ``dataset_description.json``,
  ``README`` and the column sidecars only where missing, since users edit them.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import threading
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from xnatfs.archive import Archive
from xnatfs.bids import dataset
from xnatfs.bids.convert import complete_sidecar, convert
from xnatfs.bids.plan import IMAGE_EXTENSIONS, Plan, Series, split_extension
from xnatfs.bids.state import State, origin
from xnatfs.errors import LocalError, OutputFailed, XnatfsError
from xnatfs.materialize.engine import Engine, Options, Source
from xnatfs.materialize.output import Output, file_md5
from xnatfs.materialize.report import Outcome, Report, Result
from xnatfs.materialize.selection import Selection

log = logging.getLogger(__name__)

WORK = os.path.join(".xnatfs", "bids-work")


@dataclass
class Summary:
    output: str
    converted: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    downloaded_files: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed


class Export:
    """One export of a plan into ``root``."""

    def __init__(self, archive: Archive, root: str, plan: Plan, *, jobs: int,
                 converter: str | None, threads: int | None = None) -> None:
        """``converter``: the dcm2niix binary; None until set (``no_converter`` says why,
        and series held only as DICOM then fail without a download)."""
        self.archive = archive
        self.root = root
        self.plan = plan
        self.jobs = jobs
        self.converter = converter
        self.state = State(root)
        self.summary = Summary(root)
        self.work = os.path.join(root, WORK)
        self._lock = threading.Lock()
        self._convert = ThreadPoolExecutor(threads or os.cpu_count() or 2,
                                           thread_name_prefix="xnatfs-dcm2niix")
        self._pending: list[Future[None]] = []
        self._fatal: XnatfsError | None = None
        self.no_converter = "dcm2niix is not available"

    def todo(self) -> tuple[list[Series], list[Series]]:
        """(series to write, series unchanged since the last run)."""
        write, same = [], []
        for series in self.plan.series:
            (same if self.state.unchanged(origin(series), series) else write).append(series)
        return write, same

    def run(self) -> Summary:
        write, same = self.todo()
        self.summary.unchanged = [s.key for s in same]
        try:
            with ThreadPoolExecutor(max(1, min(self.jobs, 8)),
                                    thread_name_prefix="xnatfs-bids-copy") as copies:
                for series in write:
                    if series.reused:
                        copies.submit(self._guard, series, self._reuse)
                dicom = [s for s in write if not s.reused]
                if self.converter is None:
                    for series in dicom:
                        self._failed(series, self.no_converter)
                else:
                    self._download(dicom)
            for future in self._pending:
                future.result()
        finally:
            self._convert.shutdown(wait=True, cancel_futures=True)
        if self._fatal is not None:
            raise self._fatal
        self._dataset_files()
        if self.summary.ok:
            shutil.rmtree(self.work, ignore_errors=True)
        return self.summary

    # -- reused files ---------------------------------------------------------------------

    def _reuse(self, series: Series) -> None:
        folder = self._scratch(series)
        produced: dict[str, str] = {}
        for ext, remote in series.reused:
            path = os.path.join(folder, f"file{ext}")
            with open(path, "wb") as out:  # the reader checks the listing's MD5 on the way
                self.archive.copy(remote, out)
            if ext == ".json":
                complete_sidecar(path, series.name)
            produced[series.stem + ext] = path
        self._commit(series, produced)
        with self._lock:
            self.summary.reused.append(series.key)

    # -- DICOM, then dcm2niix -------------------------------------------------------------

    def _download(self, series: list[Series]) -> None:
        if not series:
            return
        waiting: dict[str, set[str]] = {}
        owner: dict[str, Series] = {}
        for s in series:
            waiting[s.key] = {path for path, _ in s.dicom}
            owner.update((path, s) for path, _ in s.dicom)
        export = self

        class Downloads(Report):
            def finished(self, result: Result) -> None:
                super().finished(result)
                export._downloaded(result, owner, waiting)

        staging = Output(os.path.join(self.work, "dicom"))
        report = Downloads(staging.root, progress=False, interval=0)
        Engine(self.archive.tree, Source(self.archive), staging, report,
               Options(jobs=self.jobs)).run(Selection(tuple(sorted({s.dicom_path
                                                                    for s in series}))))
        done = report.summary()
        self.summary.downloaded_files += done.downloaded
        reasons = {f["path"]: f["reason"] for f in done.failures}
        for s in series:
            if waiting[s.key]:
                path = sorted(waiting[s.key])[0]
                self._failed(s, f"{len(waiting[s.key])} of its DICOM files failed "
                                f"({path}: {reasons.get(path, 'not listed')})")

    def _downloaded(self, result: Result, owner: dict[str, Series],
                    waiting: dict[str, set[str]]) -> None:
        series = owner.get(result.path)
        if series is None or result.outcome is Outcome.FAILED:
            return
        with self._lock:
            left = waiting[series.key]
            if result.path not in left:
                return
            left.discard(result.path)
            ready = not left
        if ready:
            self._pending.append(self._convert.submit(self._guard, series, self._dcm2niix))

    def _dcm2niix(self, series: Series) -> None:
        assert self.converter is not None
        dicom = os.path.join(self.work, "dicom", series.dicom_path)
        produced = convert(self.converter, dicom, self._scratch(series), series.name,
                           series.subject, series.session)
        self._commit(series, produced)
        shutil.rmtree(dicom, ignore_errors=True)
        with self._lock:
            self.summary.converted.append(series.key)

    # -- commits --------------------------------------------------------------------------

    def _scratch(self, series: Series) -> str:
        folder = os.path.join(self.work, "out", hashlib.sha1(series.key.encode()).hexdigest())
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        return folder

    def _commit(self, series: Series, produced: dict[str, str]) -> None:
        """Rename a series' files into place: all of them, or (killed midway) a pending entry
        the next run redoes. ``produced``: BIDS file name → its finished file in the work
        folder."""
        key = origin(series)
        files = {f"{series.folder}/{name}": file_md5(path) for name, path in produced.items()}
        with self._lock:
            for path in files:
                holder = self.state.owner(path)
                if holder not in (None, key):
                    raise LocalError(f"{path} is already written for another series "
                                     f"({holder}); give one of them another name")
                if holder is None and os.path.lexists(os.path.join(self.root, path)):
                    raise LocalError(f"{path} exists and was not written by xnatfs bids; "
                                     "move it away to export this series")
            old = self.state.begin(key, series, files)
        try:
            os.makedirs(os.path.join(self.root, series.folder), exist_ok=True)
            for path in old.files if old else ():
                if path not in files:
                    _remove(os.path.join(self.root, path))
            images_last = sorted(produced.items(),
                                 key=lambda item: split_extension(item[0])[1]
                                 in IMAGE_EXTENSIONS)
            for name, temporary in images_last:
                os.replace(temporary, os.path.join(self.root, series.folder, name))
        except OSError as exc:
            raise OutputFailed(f"cannot write {series.folder}: {exc.strerror or exc}") from None
        self.state.finish(key, series, files)

    def _guard(self, series: Series, step: object) -> None:
        """Run one series' step; its failure is the series', unless no series can succeed."""
        try:
            step(series)  # type: ignore[operator]
        except OutputFailed as exc:
            with self._lock:
                self._fatal = self._fatal or exc
            self._failed(series, str(exc))
        except XnatfsError as exc:  # ConversionError and ConverterMissing among them
            self._failed(series, str(exc))
        except OSError as exc:
            self._failed(series, f"cannot write it: {exc.strerror or exc}")

    def _failed(self, series: Series, reason: str) -> None:
        log.warning("%s (%s): %s", series.key, series.description, reason)
        with self._lock:
            self.summary.failed.append({"series": series.key, "path": series.session_path
                                        + (f"/scans/{series.scan}" if series.scan else ""),
                                        "reason": reason})

    # -- the dataset's own files ---------------------------------------------------------

    def _dataset_files(self) -> None:
        entries = self.state.entries
        subjects = {path.split("/", 1)[0].removeprefix("sub-"): entry.subject
                    for entry in entries.values() if not entry.pending for path in entry.files}
        ctx = self.archive.tree.lookup(self.plan.project).context
        _write_if_missing(self.root, "dataset_description.json",
                          dataset.description(ctx.project_name or self.plan.project))
        _write_if_missing(self.root, "README", dataset.readme(self.plan.project, self.plan,
                                                              view=False))
        _write_if_missing(self.root, "participants.json", dataset.PARTICIPANTS_JSON)
        _write_if_missing(self.root, "scans.json", dataset.SCANS_JSON)
        _write(self.root, "participants.tsv", dataset.participants(subjects))
        sessions: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for entry in entries.values():
            for path in entry.files:
                if not entry.pending and split_extension(path)[1] in IMAGE_EXTENSIONS:
                    subject, session, rest = path.split("/", 2)
                    sessions[f"{subject}/{session}"].append((rest, entry.scan))
        for where, rows in sessions.items():
            name = where.replace("/", "_") + "_scans.tsv"
            _write(self.root, f"{where}/{name}", dataset.scan_rows(rows))


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _write(root: str, path: str, data: bytes) -> None:
    target = os.path.join(root, path)
    try:
        with open(target, "rb") as f:
            if f.read() == data:
                return
    except OSError:
        pass
    temporary = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.tmp")
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(temporary, "wb") as f:
            f.write(data)
        os.replace(temporary, target)
    except OSError as exc:
        raise OutputFailed(f"cannot write {target}: {exc.strerror or exc}") from None


def _write_if_missing(root: str, path: str, data: bytes) -> None:
    if not os.path.lexists(os.path.join(root, path)):
        _write(root, path, data)
