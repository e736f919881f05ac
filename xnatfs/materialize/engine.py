"""The download engine: listing and transfers overlapped on thread pools, one shared session.

* Listing runs on its own few threads (``Planner``) and feeds files to the transfer workers as
  soon as their session is listed, so a high-latency server is never idle while we list.
* Each listed file is compared with the manifest and DIR (``Engine.change``): new and changed
  files are fetched; unchanged ones cost no content request. After a complete walk, manifest
  entries in the selection that the server no longer lists are ``gone`` (kept, or removed
  with ``--delete``). The output folder is locked for the run (``DirLock``).
* ``-j N`` transfer workers take tasks from one priority queue: chunks of files already started
  first, then new files. A large file keeps a few chunks in flight while other files wait to
  start (so small files, which are bound by latency, fill the pipe around it), and up to
  ``FILE_WINDOW`` when nothing else waits. Memory stays bounded by about ``jobs * window * chunk
  size``, whatever the file sizes.
* Every byte comes through ``Source``, the one seam onto the shared reader (chunk cache first,
  ranged GETs, bounded retries): a small file is one request; a large file's chunks are
  fetched by several workers at once and written in order, so the part file is always a valid
  prefix that the next run continues. The part file hashes every byte in order, so the reader
  is asked not to (``check=False``): one MD5 per file, not two.
* A resource most of whose files are wanted comes as one ``?format=zip`` stream instead of a
  GET per file (``zipfetch``: XNAT's per-file GET parses the resource's whole catalog each
  time); its entries are verified and committed one by one, as they arrive.
* After the pass, files that failed transiently (unreachable, 5xx, bodies cut short, after the
  reader's own retries) are tried again (``retry_rounds``), continuing from what they had.
* ``halt`` (Ctrl-C, SIGTERM) stops renames under the same lock that renames take, so the
  summary, the manifest and DIR agree on what is done.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from xnatfs.archive import Archive
from xnatfs.errors import (
    AuthError,
    DigestMismatch,
    IntegrityError,
    NotFound,
    OutputFailed,
    XnatfsError,
)
from xnatfs.materialize import manifest as manifest_file
from xnatfs.materialize.dirlock import DirLock
from xnatfs.materialize.manifest import Manifest, entry_for
from xnatfs.materialize.output import Output, PartFile, Target, existing_size, file_md5
from xnatfs.materialize.plan import ListingFailure, PlannedFile, PlannedResource, Planner
from xnatfs.materialize.report import Change, Outcome, PlanRow, Report, Result
from xnatfs.materialize.selection import Selection
from xnatfs.materialize.workers import Task, Workers
from xnatfs.materialize.zipfetch import (
    Fetched,
    ZipJob,
    ZipTrust,
    pattern_trust,
    zip_candidates,
    zip_jobs,
)
from xnatfs.materialize.zipsplit import parts_for
from xnatfs.reader.zipstream import zip_worth
from xnatfs.tree.model import RemoteFile, Tree

log = logging.getLogger(__name__)

CHUNK_FIRST, NEW_FILE = 0, 1  # task priorities
FILE_WINDOW = 8  # chunks of one file in flight or waiting to be written, at most
MAX_JOBS = 256  # beyond this, threads cost more than they overlap (and may not start)


@dataclass(frozen=True)
class Options:
    jobs: int = 16
    verify: bool = False
    """Re-hash files already present and fetch those that differ from the manifest."""
    overwrite: bool = False
    """Download files again even when present."""
    delete: bool = False
    """Remove files gone from the server (only those the manifest says xnatfs wrote)."""
    retry_rounds: int = 2
    retry_pause: float = 5.0
    zips: bool = True
    """Fetch a resource most of whose files are wanted as one zip (``zipfetch.zip_worth``)."""
    records: bool = True
    """Keep the manifest, MD5SUMS and the lock in DIR (False: a plain copy, for callers such
    as the fsspec filesystem's ``get`` that own the destination's layout)."""


@dataclass(frozen=True, slots=True)
class Decision:
    change: Change
    md5: str | None = None
    """The MD5 the local copy must have to stay (None: its size is all there is to check)."""
    adopt: bool = False
    """The file is not in the manifest: hash it, and record it if it is right."""


class Source:
    """Every byte materialize reads, through the archive's reader: the mount's cache first (it
    knows a file by its listed identity, digest included), then ranged GETs whose digest
    check is left to the part file."""

    def __init__(self, archive: Archive) -> None:
        self._fetcher = archive.fetcher
        self.chunk_size = archive.chunk_size
        self.client = archive.client  # zips bypass the reader: they are neither ranged nor cached

    def chunk_count(self, remote: RemoteFile) -> int:
        return self._fetcher.chunk_count(remote)

    def chunk(self, remote: RemoteFile, index: int) -> bytes:
        return self._fetcher.cached(remote, index) or \
            self._fetcher.chunk(remote, index, store=False, check=False)

    def pin(self, remote: RemoteFile) -> object:
        """What keeps the reader's knowledge of this file version (the Last-Modified its
        requests must match) while the file is in transfer: held by its ``FileJob``."""
        return self._fetcher.item(remote, check=False)

    @property
    def whole_files(self) -> bool:
        """Files come in one stream each (the server ignores Range, or its ranges lied)."""
        return self._fetcher.whole_files is not None

    def fetched_whole(self, remote: RemoteFile) -> bool:
        """Whether this file's chunks come from one whole-file stream."""
        return self._fetcher.fetched_whole(remote, check=False)

    def distrust(self, remote: RemoteFile) -> None:
        """The file's ranged answers made a copy that failed its MD5: fetch it whole from
        now on, as the mount does after the same failure (``Fetcher.distrust``)."""
        self._fetcher.distrust(remote, check=False)


class Host(Protocol):
    """What a file in transfer needs from its run."""

    source: Source

    def window(self) -> int: ...
    def submit(self, priority: int, task: Task) -> None: ...
    def wrote(self, n: int) -> None: ...
    def expect(self, n: int) -> None: ...
    # -- zipfetch.Host: what a ZipJob calls -----------------------------------------------

    @property
    def chunk_size(self) -> int:
        assert self.source is not None
        return self.source.chunk_size

    def halted(self) -> bool:
        return self._halted

    def per_file(self, planned: PlannedFile) -> None:
        self.workers.submit(NEW_FILE, partial(self._start, planned))

    def submit_zip(self, job: ZipJob) -> None:
        self.workers.submit(NEW_FILE, job.run)

    def commit(self, job: FileJob | Fetched) -> None: ...
    def failed(self, planned: PlannedFile, exc: XnatfsError, *, unwritten: int) -> None: ...


class Engine:
    """One materialize run: ``run(selection)`` lists, syncs and reports; ``dry_run`` plans."""

    def __init__(self, tree: Tree, source: Source | None, output: Output, report: Report,
                 options: Options) -> None:
        self.tree = tree
        self.source = source  # None: a dry run
        self.output = output
        self.report = report
        self.options = options
        jobs = options.jobs
        self.full_window = max(1, min(jobs, FILE_WINDOW))
        self.shared_window = min(self.full_window, max(2, jobs // 4))
        self.workers = Workers(jobs if source else 1, "xnatfs-get", on_fatal=self._abort_listing)
        self.listers = Workers(listing_threads(jobs), "xnatfs-list")
        self.manifest: Manifest | None = None
        self._planner: Planner | None = None
        self._transient: dict[str, PlannedFile] = {}
        self._sizes: dict[str, int] = {}  # sizes the listing did not have
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._halted = False
        self.zip_trust = ZipTrust()
        self.pattern_trust = pattern_trust()
        self._created = False
        self._dirlock: DirLock | None = None

    # -- a run -----------------------------------------------------------------------------

    def run(self, selection: Selection) -> None:
        """List, download and report everything selected; failures of single files go to
        the report, errors that stop everything (refused credentials, a full disk) and
        interruptions are raised, after the manifest is brought up to date."""
        planner = self._planner = Planner(
            self.tree, selection, lambda task: self.listers.submit(0, task), self._planned,
            self._planned_resource if self.options.zips else None)
        try:  # bad paths are refused before DIR is touched
            roots = planner.roots()
            self._open_output(selection)
            try:
                planner.run(roots)
            finally:
                for failure in planner.failures:
                    self.report.listing_failed(failure.path, failure.reason)
            self.workers.wait()
            self._retry()
            self._gone(selection, [p for p, _ in roots], planner.failures)
        except BaseException:
            self.halt()
            self.workers.close()
            self.listers.close()
            try:
                self._close_output()
            except XnatfsError as exc:  # the error under way says more (a full disk, ...)
                log.info("manifest not compacted: %s", exc)
            raise
        self.workers.close()
        self.listers.close()
        self._close_output()

    def dry_run(self, selection: Selection) -> tuple[list[PlanRow], list[dict[str, str]]]:
        """The plan, without writing anything: each file new, changed, unchanged (or to
        overwrite), and what is gone; and the listing failures."""
        rows: list[PlanRow] = []
        lock = threading.Lock()
        if self.output.exists() and manifest_file.exists(self.output.root):
            self.manifest = _ReadOnlyManifest(self.output.root)  # type: ignore[assignment]

        def emit(planned: PlannedFile) -> None:
            remote = self._resolved(planned)
            size = remote.size if remote else None
            try:
                change = self.change(planned, remote).change if remote else Change.NEW
            except XnatfsError:  # something not ours in the way: the run will say what
                change = Change.CHANGED
            with lock:
                self._seen.add(planned.path)
                rows.append(PlanRow(planned.path, size, change))

        planner = Planner(self.tree, selection, lambda task: self.listers.submit(0, task), emit)
        try:
            roots = planner.roots()
            planner.run(roots)
        finally:
            self.listers.close()
            self.workers.close()
        for path, entry in self._gone_entries(selection, [p for p, _ in roots],
                                              planner.failures):
            rows.append(PlanRow(path, entry.size, Change.GONE))
        return rows, [{"path": f.path, "reason": f"listing failed: {f.reason}"}
                      for f in planner.failures]

    def halt(self) -> None:
        """Finish nothing more: no rename, no counted outcome after this returns."""
        with self._commit_lock:
            self._halted = True
            self.report.freeze()
        self.workers.stop(KeyboardInterrupt())

    def _open_output(self, selection: Selection) -> None:
        self._created = self.output.create()
        if not self.options.records:
            self.manifest = _NoRecords()  # type: ignore[assignment]
            return
        self._dirlock = DirLock(self.output.root, selection.shard,
                                lambda text: print(f"xnatfs: {text}", file=self.report.stream,
                                                   flush=True))
        self._dirlock.acquire()
        self.manifest = Manifest(self.output.root)

    def _close_output(self) -> None:
        """Compact the manifest and write MD5SUMS. A run that has recorded nothing leaves
        no records (nor an MD5SUMS over a user's own), and no folder if it made it."""
        if self.manifest is None or isinstance(self.manifest, _NoRecords):
            return
        try:
            if not len(self.manifest) and not manifest_file.exists(self.output.root):
                _remove_records(self.output.root, folder_too=self._created)
            else:
                self.manifest.finish()
        finally:
            self.manifest.close()
            if self._dirlock is not None:
                self._dirlock.release()

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

    def _abort_listing(self, exc: BaseException) -> None:
        if self._planner is not None:
            self._planner.cancel(exc)

    # -- gone files ------------------------------------------------------------------------

    def _gone_entries(self, selection: Selection, roots: list[str],
                      failures: list[ListingFailure]) -> list[tuple[str, manifest_file.Entry]]:
        """Manifest entries the selection covers that the complete walk did not meet. Below
        a folder whose listing failed nothing is known, so nothing there is gone."""
        if self.manifest is None:
            return []
        unknown = ["" if f.path == "/" else f.path for f in failures]
        gone = []
        for path, entry in self.manifest.items():
            if path in self._seen or not any(_below(path, r) for r in roots) or \
                    any(_below(path, u) for u in unknown):
                continue
            if selection.shard.takes(path) and \
                    selection.filters.admits_file(path, entry.selection_context()):
                gone.append((path, entry))
        return gone

    def _gone(self, selection: Selection, roots: list[str],
              failures: list[ListingFailure]) -> None:
        assert self.manifest is not None
        for path, entry in self._gone_entries(selection, roots, failures):
            final = self.output.target(path).final
            if self.options.delete and existing_size(final) == entry.size:
                self.manifest.forget(path)
                try:
                    os.unlink(final)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise OutputFailed(f"cannot delete {final}: {os.strerror(exc.errno or 0)}")\
                        from None
                _prune(os.path.dirname(final), self.output.root)
                self.report.gone(path, deleted=True)
            else:
                self.report.gone(path, deleted=False)

    # -- one file --------------------------------------------------------------------------

    def _planned(self, planned: PlannedFile) -> None:
        with self._lock:
            self._seen.add(planned.path)
        self.report.planned(planned.file.size)
        self.workers.submit(NEW_FILE, lambda: self._start(planned))

    def _planned_resource(self, resource: PlannedResource) -> None:
        """A resource's wanted files: as one zip when that is the cheaper route
        (``zip_worth`` over the files to fetch), else each file on its own."""
        with self._lock:
            self._seen.update(p.path for p in resource.wanted)
        for planned in resource.wanted:
            self.report.planned(planned.file.size)
        rest = resource.wanted
        if not self.zip_trust.broken and zip_worth(len(rest), len(resource.listed)):
            todo, rest = zip_candidates(resource, self._decision)
            if zip_worth(len(todo), len(resource.listed)):
                assert self.source is not None
                client = self.source.client
                jobs, loose = zip_jobs(self, client, resource, todo,
                                       parts_for(client.round_trip, self.options.jobs))
                for job in jobs:
                    self.submit_zip(job)
                rest = [*rest, *loose]
            else:
                rest = resource.wanted
        for planned in rest:
            self.per_file(planned)

    def _decision(self, planned: PlannedFile) -> Change | None:
        try:
            return self.change(planned, planned.file).change
        except XnatfsError:  # something not ours in the way: the per-file path says what
            return None

    def _start(self, planned: PlannedFile) -> None:
        try:
            job = self._prepare(planned)
        except XnatfsError as exc:
            self.failed(planned, exc, unwritten=planned.file.size or 0)
            return
        if job is not None:
            job.start()

    def _resolved(self, planned: PlannedFile) -> RemoteFile | None:
        """The listed file with its size (asked of the server when the listing had none)."""
        if planned.file.size is not None:
            return planned.file
        try:
            return self.tree.resolve(planned.node)
        except NotFound:
            return None

    def change(self, planned: PlannedFile, remote: RemoteFile) -> Decision:
        """What to do with a file, from the manifest and DIR alone (no hashing)."""
        target = self.output.target(planned.path)
        local = None if target.absent else existing_size(target.final)
        if local is None:
            return Decision(Change.NEW)
        same = Change.OVERWRITE if self.options.overwrite else Change.UNCHANGED
        entry = self.manifest.get(planned.path) if self.manifest is not None else None
        if entry is not None and local == entry.size:
            if remote.size != entry.size or (remote.digest and remote.digest != entry.md5):
                return Decision(Change.CHANGED)
            return Decision(same, entry.md5)
        if local != remote.size:
            return Decision(Change.CHANGED)
        # The right size but no entry: written before there was a manifest, or renamed just
        # before a kill. Hashed, it joins the manifest (unless the server's MD5 says no).
        return Decision(same, remote.digest, adopt=True)

    def _prepare(self, planned: PlannedFile) -> FileJob | None:
        """Skip a file that is there already, or open its part file for a download."""
        assert self.manifest is not None and self.source is not None
        remote = self._resolved(planned)
        if remote is None:
            raise XnatfsError("not found on the server")
        assert remote.size is not None
        if planned.file.size is None:
            with self._lock:
                known = planned.path in self._sizes
                self._sizes[planned.path] = remote.size
            if not known:  # a retry round: already counted
                self.report.resolved_size(remote.size)
        target = self.output.target(planned.path)
        decision = self.change(planned, remote)
        change, replaced = decision.change, False
        if change is Change.UNCHANGED:
            if not decision.adopt and not self.options.verify:
                self.report.expect(-remote.size)
                self.report.finished(Result(planned.path, Outcome.PRESENT, remote.size,
                                            checked=_checked(remote)))
                return None
            local = file_md5(target.final)
            if decision.md5 is None or local == decision.md5:
                if decision.adopt:
                    self.manifest.record(entry_for(
                        planned.path, remote.size, local, from_server=bool(remote.digest),
                        uri=remote.uri, context=planned.node.context))
                self.report.expect(-remote.size)
                self.report.finished(Result(planned.path, Outcome.VERIFIED, remote.size,
                                            checked="md5"))
                return None
            log.warning("%s differs from the copy the server lists (MD5 %s, expected %s); "
                        "downloading it again", planned.path, local, decision.md5)
            change, replaced = Change.CHANGED, True
        self.output.make_parents(target)
        part = PartFile(target, remote.size, remote.digest, align=self.source.chunk_size,
                        resume=not replaced)
        self.report.expect(-part.offset)
        return FileJob(self, planned, remote, part, replaced=replaced,
                       change=Change.NEW if change is Change.NEW else Change.CHANGED)

    # -- Host: what a FileJob calls --------------------------------------------------------

    def window(self) -> int:
        """Chunks one file may have in flight: a few while other files wait to start (small
        files cover each other's latency while a large one streams), all workers when none do
        (one large file alone, or the tail of the run)."""
        return self.shared_window if self.workers.waiting(NEW_FILE) else self.full_window

    def submit(self, priority: int, task: Task) -> None:
        self.workers.submit(priority, task)

    def wrote(self, n: int) -> None:
        self.report.wrote(n)

    def expect(self, n: int) -> None:
        self.report.expect(n)

    # -- zipfetch.Host: what a ZipJob calls -----------------------------------------------

    @property
    def chunk_size(self) -> int:
        assert self.source is not None
        return self.source.chunk_size

    def halted(self) -> bool:
        return self._halted

    def per_file(self, planned: PlannedFile) -> None:
        self.workers.submit(NEW_FILE, partial(self._start, planned))

    def submit_zip(self, job: ZipJob) -> None:
        self.workers.submit(NEW_FILE, job.run)

    def commit(self, job: FileJob | Fetched) -> None:
        """Rename a complete part file into place and record it, unless the run was halted
        (then the part file stays for the next run). Forget first, record after: at every
        moment the manifest vouches only for bytes that are in DIR."""
        assert self.manifest is not None
        planned, part = job.planned, job.part
        with self._commit_lock:
            if self._halted:
                part.close()
                return
            self.manifest.forget(planned.path)
            part.commit(planned.node.mtime)
            self.manifest.record(entry_for(
                planned.path, part.size, part.verifier.hexdigest(),
                from_server=bool(job.remote.digest), uri=job.remote.uri,
                context=planned.node.context))
            self.report.finished(Result(planned.path, Outcome.DOWNLOADED, part.size,
                                        checked=_checked(job.remote), replaced=job.replaced,
                                        change=job.change))

    def failed(self, planned: PlannedFile, exc: XnatfsError, *, unwritten: int) -> None:
        """Record a file's failure; errors that stop every file are raised instead."""
        if isinstance(exc, OutputFailed | AuthError):
            raise exc
        if exc.transient:
            with self._lock:
                self._transient[planned.path] = planned
        log.debug("%s failed: %s", planned.path, exc)
        self.report.expect(-unwritten)
        self.report.finished(Result(planned.path, Outcome.FAILED, planned.file.size or 0,
                                    reason=str(exc)))


class _NoRecords:
    """A manifest that keeps nothing (``Options.records`` False)."""

    def __len__(self) -> int:
        return 0

    def get(self, path: str) -> None:
        return None

    def items(self) -> list[tuple[str, manifest_file.Entry]]:
        return []

    def record(self, entry: manifest_file.Entry) -> None:
        pass

    def forget(self, path: str) -> None:
        pass


class _ReadOnlyManifest:
    """A dry run's view of the manifest: read, never locked or written."""

    def __init__(self, root: str) -> None:
        self.entries = manifest_file.read_entries(root)

    def get(self, path: str) -> manifest_file.Entry | None:
        return self.entries.get(path)

    def items(self) -> list[tuple[str, manifest_file.Entry]]:
        return sorted(self.entries.items())


def listing_threads(jobs: int) -> int:
    """Listings wait on the server's database, not on bandwidth: a few threads suffice."""
    return max(2, min(8, jobs // 2))


def _checked(remote: RemoteFile) -> str:
    return "md5" if remote.digest else "size"


def _below(path: str, root: str) -> bool:
    return not root or path == root or path.startswith(root + "/")


def _prune(folder: str, root: str) -> None:
    """Remove folders left empty by --delete, up to (not including) the output folder."""
    while folder != root and folder.startswith(root + os.sep):
        try:
            os.rmdir(folder)
        except OSError:
            return
        folder = os.path.dirname(folder)


def _remove_records(root: str, *, folder_too: bool) -> None:
    """Undo opening an output folder: the lock files, then the folder if this run made it
    and nothing else is in it."""
    meta = manifest_file.meta_dir(root)
    for name in os.listdir(meta) if os.path.isdir(meta) else ():
        path = os.path.join(meta, name)
        if stat.S_ISREG(os.lstat(path).st_mode):
            os.unlink(path)
    for folder in (meta, root) if folder_too else (meta,):
        try:
            os.rmdir(folder)
        except OSError:
            return


class FileJob:
    """One file in transfer: chunks fetched by any worker, written in order by whichever
    worker completes the next one, a bounded window of chunks ahead."""

    def __init__(self, host: Host, planned: PlannedFile, remote: RemoteFile, part: PartFile,
                 *, replaced: bool, change: Change) -> None:
        self.host = host
        self.planned = planned
        self.remote = remote
        self.part = part
        self.replaced = replaced
        self.change = change
        self.source = host.source
        self.pin = self.source.pin(remote)
        self.count = self.source.chunk_count(remote)
        self.next_write = part.offset // self.source.chunk_size
        self.next_fetch = self.next_write
        self.pending: dict[int, bytes] = {}
        self.failed = False
        self.lock = threading.Lock()

    @property
    def target(self) -> Target:
        return self.part.target

    def start(self) -> None:
        """Queue the first window of chunks but the first, and fetch that one right here (a
        small file is then done in this task, without a trip through the queue). Where files
        come whole, the window waits for the first chunk: its stream has claimed the others by
        then, and a request for chunk k sent before would stream the file's first k again."""
        if self.next_write >= self.count:
            with self.lock:
                try:
                    self._finish()
                except XnatfsError as exc:
                    self._fail(exc)
            return
        first = self.next_fetch
        self.next_fetch += 1
        if not self.source.whole_files:
            with self.lock:
                self._fill_window()
        self.fetch(first)

    def _fill_window(self) -> None:
        """Queue chunks up to the window ahead of the next one to write (lock held)."""
        window = self.host.window()
        while self.next_fetch < self.count and self.next_fetch - self.next_write < window:
            self.host.submit(CHUNK_FIRST, partial(self.fetch, self.next_fetch))
            self.next_fetch += 1

    def fetch(self, index: int) -> None:
        if self.failed:
            return
        try:
            data = self.source.chunk(self.remote, index)
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
            self.host.wrote(len(data))
            self.next_write += 1
        self._fill_window()
        if self.next_write == self.count:
            self._finish()

    def _finish(self) -> None:
        """Commit the part file. A failed check starts the file over once, from scratch:
        after resuming (the part file may hold bytes of an earlier version of the file), or
        when ranged answers made a copy that fails its MD5 (some proxy or server shifts or
        garbles ranges; the file then comes in one stream, as the mount falls back to)."""
        try:
            self.host.commit(self)
        except IntegrityError as exc:
            if self.part.resumed_from:
                log.info("%s: %s after resuming; downloading it whole", self.planned.path, exc)
            elif isinstance(exc, DigestMismatch) and not self.source.fetched_whole(self.remote):
                log.warning("%s: %s; fetching it whole", self.planned.path, exc)
                self.source.distrust(self.remote)
            else:
                raise
            self.host.expect(self.part.size)
            self.host.submit(NEW_FILE, self._restart)

    def _restart(self) -> None:
        try:
            part = PartFile(self.target, self.part.size, self.remote.digest,
                            align=self.source.chunk_size, resume=False)
        except XnatfsError as exc:
            self.host.failed(self.planned, exc, unwritten=self.part.size)
            return
        FileJob(self.host, self.planned, self.remote, part, replaced=self.replaced,
                change=self.change).start()

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
        self.host.failed(self.planned, exc, unwritten=left)
