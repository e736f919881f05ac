"""The download engine: listing and transfers overlapped on thread pools, one shared session.

* Listing runs on its own few threads (``Planner``) and feeds files to the transfer workers as
  soon as their session is listed, so a high-latency server is never idle while we list.
* ``-j N`` transfer workers take tasks from one priority queue: chunks of files already started
  first, then new files. A large file keeps a few chunks in flight while other files wait to
  start (so small files, which are bound by latency, fill the pipe around it), and up to
  ``MAX_WINDOW`` when nothing else waits. Memory stays bounded by about ``jobs * window * chunk
  size``, whatever the file sizes.
* Every byte comes through the shared ``Fetcher`` (chunk cache first, ranged GETs, bounded
  retries): a small file is one request; a large file's chunks are fetched by several workers
  at once and written in order, so the part file is always a valid prefix that the next run
  continues. The part file hashes every byte in order (a resumed prefix and chunks copied
  from the mount's cache too), so the fetcher is asked for the bytes without the digest: one
  MD5 per file, not two, and a wrong digest costs one download, not several.
* After the pass, files that failed on the network (unreachable, 5xx, bodies cut short, after
  the fetcher's own retries) are tried again (``retry_rounds``), continuing from what they
  had. A digest mismatch is not a network failure: it is reported, not retried (a part file
  continued from an earlier run is first downloaded once more from scratch).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from functools import partial

from xnatfs.errors import AuthError, DigestMismatch, IntegrityError, OutputFailed, XnatfsError
from xnatfs.materialize.output import Output, PartFile, Target, existing_size, file_md5
from xnatfs.materialize.plan import PlannedFile, Planner
from xnatfs.materialize.report import Outcome, Report, Result
from xnatfs.materialize.selection import Selection
from xnatfs.materialize.workers import Workers
from xnatfs.reader.fetcher import Fetcher
from xnatfs.tree.model import RemoteFile, Tree

log = logging.getLogger(__name__)

CHUNK_FIRST, NEW_FILE = 0, 1  # task priorities
MAX_WINDOW = 8  # chunks of one file in flight or waiting to be written, at most


@dataclass(frozen=True)
class Options:
    jobs: int = 16
    verify: bool = False
    """Check files already present against the server's MD5 (re-download on a mismatch)."""
    overwrite: bool = False
    """Download files again even when present."""
    retry_rounds: int = 2
    retry_pause: float = 5.0


class Engine:
    """One materialize run: ``run(selection)`` lists, downloads and reports."""

    def __init__(self, tree: Tree, fetcher: Fetcher, output: Output, report: Report,
                 options: Options) -> None:
        self.tree = tree
        self.fetcher = fetcher
        self.output = output
        self.report = report
        self.options = options
        self.full_window = max(1, min(options.jobs, MAX_WINDOW))
        self.shared_window = min(self.full_window, max(2, options.jobs // 4))
        self.workers = Workers(options.jobs, "xnatfs-get", on_fatal=self._abort_listing)
        self.listers = Workers(listing_threads(options.jobs), "xnatfs-list")
        self._planner: Planner | None = None
        self._transient: dict[str, PlannedFile] = {}
        self._sizes: dict[str, int] = {}  # sizes the listing did not have
        self._lock = threading.Lock()

    def run(self, selection: Selection) -> None:
        """List and download everything selected; failures of single files go to the report,
        errors that stop everything (refused credentials, a full disk) are raised."""
        planner = self._planner = Planner(
            self.tree, selection, lambda task: self.listers.submit(0, task), self._planned)
        try:
            roots = planner.roots()
            try:
                planner.run(roots)
            finally:
                for failure in planner.failures:
                    self.report.listing_failed(failure.path, failure.reason)
            self.workers.wait()
            self._retry()
        finally:
            self.workers.close()
            self.listers.close()

    def _retry(self) -> None:
        """Give files that failed on an unreachable or failing server more chances."""
        for pause in (self.options.retry_pause * 3 ** n for n in range(self.options.retry_rounds)):
            with self._lock:
                again, self._transient = list(self._transient.values()), {}
            if not again:
                break
            log.info("trying %d files again in %.0f s", len(again), pause)
            time.sleep(pause)
            for planned in again:
                self.report.expect(self._sizes.get(planned.path, planned.file.size or 0))
                self.workers.submit(NEW_FILE, partial(self._start, planned))
            self.workers.wait()

    def window(self) -> int:
        """Chunks one file may have in flight: a few while other files wait to start (small
        files cover each other's latency while a large one streams), all workers when none do
        (one large file alone, or the tail of the run)."""
        return self.shared_window if self.workers.waiting(NEW_FILE) else self.full_window

    def _abort_listing(self, exc: BaseException) -> None:
        if self._planner is not None:
            self._planner.cancel(exc)

    # -- one file --------------------------------------------------------------------------

    def _planned(self, planned: PlannedFile) -> None:
        self.report.planned(planned.file.size)
        self.workers.submit(NEW_FILE, lambda: self._start(planned))

    def _start(self, planned: PlannedFile) -> None:
        try:
            job = self._prepare(planned)
        except XnatfsError as exc:
            self._failed(planned, exc, unwritten=planned.file.size or 0)
            return
        if job is not None:
            job.start()

    def _prepare(self, planned: PlannedFile) -> _FileJob | None:
        """Skip a file that is there already, or open its part file for a download."""
        target = self.output.target(planned.path)
        remote = planned.file
        if remote.size is None:
            size = self.tree.file_size(planned.node)
            if size is None:
                raise XnatfsError("not found on the server")
            with self._lock:
                known = planned.path in self._sizes
                self._sizes[planned.path] = size
            if not known:  # a retry round: already counted
                self.report.resolved_size(size)
            remote = RemoteFile(remote.uri, size, remote.digest)
        assert remote.size is not None
        replaced = False
        if existing_size(target.final) == remote.size and not self.options.overwrite:
            if not (self.options.verify and remote.digest):
                self.report.expect(-remote.size)
                self._done(Result(planned.path, Outcome.PRESENT, remote.size,
                                  checked=_checked(remote)))
                return None
            local = file_md5(target.final)
            if local == remote.digest:
                self.report.expect(-remote.size)
                self._done(Result(planned.path, Outcome.VERIFIED, remote.size, checked="md5"))
                return None
            log.warning("%s differs from the server's copy (MD5 %s, expected %s); "
                        "downloading it again", planned.path, local, remote.digest)
            replaced = True
        self.output.make_parents(target)
        part = PartFile(target, remote.size, remote.digest, align=self.fetcher.chunk_size,
                        resume=not replaced)
        self.report.expect(-part.offset)
        return _FileJob(self, planned, remote, part, replaced=replaced)

    def _done(self, result: Result) -> None:
        self.report.finished(result)

    def _failed(self, planned: PlannedFile, exc: XnatfsError, *, unwritten: int) -> None:
        """Record a file's failure; errors that stop every file are raised instead."""
        if isinstance(exc, OutputFailed | AuthError):
            raise exc
        if exc.transient:
            with self._lock:
                self._transient[planned.path] = planned
        log.debug("%s failed: %s", planned.path, exc)
        self.report.expect(-unwritten)
        self._done(Result(planned.path, Outcome.FAILED, planned.file.size or 0, reason=str(exc)))


def listing_threads(jobs: int) -> int:
    """Listings wait on the server's database, not on bandwidth: a few threads suffice."""
    return max(2, min(8, jobs // 2))


def _checked(remote: RemoteFile) -> str:
    return "md5" if remote.digest else "size"


class _FileJob:
    """One file in transfer: chunks fetched by any worker, written in order by whichever
    worker completes the next one, a bounded window of chunks ahead."""

    def __init__(self, engine: Engine, planned: PlannedFile, remote: RemoteFile, part: PartFile,
                 *, replaced: bool) -> None:
        self.engine = engine
        self.planned = planned
        self.remote = remote
        self.unchecked = RemoteFile(remote.uri, remote.size, None)  # we check the MD5
        self.part = part
        self.replaced = replaced
        fetcher = engine.fetcher
        self.count = fetcher.chunk_count(remote)
        self.next_write = part.offset // fetcher.chunk_size
        self.next_fetch = self.next_write
        self.pending: dict[int, bytes] = {}
        self.failed = False
        self.lock = threading.Lock()

    @property
    def target(self) -> Target:
        return self.part.target

    def start(self) -> None:
        """Queue the first window of chunks but the first, and fetch that one right here (a
        small file is then done in this task, without a trip through the queue)."""
        if self.next_write >= self.count:
            with self.lock:
                try:
                    self._finish()
                except XnatfsError as exc:
                    self._fail(exc)
            return
        first = self.next_fetch
        self.next_fetch += 1
        with self.lock:
            self._fill_window()
        self.fetch(first)

    def _fill_window(self) -> None:
        """Queue chunks up to the window ahead of the next one to write (lock held)."""
        window = self.engine.window()
        while self.next_fetch < self.count and self.next_fetch - self.next_write < window:
            self.engine.workers.submit(CHUNK_FIRST, partial(self.fetch, self.next_fetch))
            self.next_fetch += 1

    def fetch(self, index: int) -> None:
        if self.failed:
            return
        fetcher = self.engine.fetcher
        try:  # the mount's cache knows the file by its listed identity, digest included
            data = fetcher.cached(self.remote, index) or \
                fetcher.chunk(self.unchecked, index, store=False)
        except XnatfsError as exc:
            with self.lock:
                self._fail(exc)
            return
        with self.lock:
            if self.failed:
                return
            self.pending[index] = data
            try:
                self._write_ready()
            except XnatfsError as exc:
                self._fail(exc)

    def _write_ready(self) -> None:
        """Write the chunks that are next in order; queue as many new ones; finish at the end."""
        while (data := self.pending.pop(self.next_write, None)) is not None:
            self.part.write(data)
            self.engine.report.wrote(len(data))
            self.next_write += 1
        self._fill_window()
        if self.next_write == self.count:
            self._finish()

    def _finish(self) -> None:
        try:
            self.part.commit(self.planned.node.mtime)
        except IntegrityError as exc:
            if not self.part.resumed_from:
                raise
            # The part file may hold bytes of an earlier version of the file: start over.
            log.info("%s: %s after resuming; downloading it whole", self.planned.path, exc)
            self.engine.report.expect(self.part.size)
            self.engine.workers.submit(NEW_FILE, self._restart)
            return
        self.engine._done(Result(self.planned.path, Outcome.DOWNLOADED, self.part.size,
                                 checked=_checked(self.remote), replaced=self.replaced))

    def _restart(self) -> None:
        try:
            part = PartFile(self.target, self.part.size, self.remote.digest,
                            align=self.engine.fetcher.chunk_size, resume=False)
        except XnatfsError as exc:
            self.engine._failed(self.planned, exc, unwritten=self.part.size)
            return
        _FileJob(self.engine, self.planned, self.remote, part, replaced=self.replaced).start()

    def _fail(self, exc: XnatfsError) -> None:
        """Called with the lock held: stop this file, keep its part file for the next run."""
        if self.failed:
            return
        self.failed = True
        self.pending.clear()
        if self.part.offset and not isinstance(exc, DigestMismatch):
            self.part.close()  # kept: the next run continues it
        else:
            self.part.discard()
        left = self.part.size - self.part.offset
        self.engine._failed(self.planned, exc, unwritten=left)
