"""Whole resources as one zip stream: the cheap route on XNAT for many files of one resource.

XNAT parses a resource's whole catalog on every single-file GET (docs/xnat-api.md), so N
files fetched one by one cost the server O(N^2); ``?format=zip`` parses it once and streams
every entry. So a resource goes as one zip when most of it is wanted and it is more than a
handful of files (``zip_worth``); otherwise, and for anything a zip cannot give, files come by
per-file GETs as before.

Each entry is streamed straight into its part file as it arrives (``ZipStream``), matched to
the listing by the path below ``/files/`` (entry names are untrusted: they only ever select a
listed file, whose output path comes from the tree), checked against the listing's size and
MD5 and the zip's CRC-32, and committed by the engine's one commit path, so the manifest
records it at once and a killed run never fetches it again. What a zip does not deliver (an
entry that fails its checks, the rest of a zip cut short) comes again: by a new zip while
enough remains, else by per-file GETs. A server whose zips cannot be followed at all (not a
zip, names that match nothing) is told once in the log, and the run goes on file by file.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from xnatfs.errors import AuthError, IntegrityError, OutputFailed, XnatfsError
from xnatfs.materialize.output import Output, PartFile
from xnatfs.materialize.plan import PlannedFile, PlannedResource
from xnatfs.materialize.report import Change, Report
from xnatfs.materialize.zipsplit import Part, split
from xnatfs.reader.verify import Verifier
from xnatfs.reader.zipstream import (
    ZIP_TRIES,
    Buffered,
    EntryCorrupt,
    EntryNames,
    ZipFormatError,
    ZipStream,
    zip_worth,
)
from xnatfs.tree.model import RemoteFile
from xnatfs.xnat.client import XnatClient

log = logging.getLogger(__name__)



class ZipTrust:
    """Whether this server's zips (or zips of file patterns) can be followed. The first zip
    of a run finds out: the others wait until its first entry has come (or it failed), so a
    server whose zips are unusable costs one zip and one line in the log, however many
    resources run at once. ``instead`` says in that line what the run does then."""

    def __init__(self, what: str = "zips",
                 instead: str = "fetching files one by one") -> None:
        self.what, self.instead = what, instead
        self._lock = threading.Lock()
        self._known = threading.Event()
        self._probing = False
        self.broken = False

    def admit(self) -> bool:
        """True: go ahead with a zip (the first caller is the probe); False: zips are out."""
        with self._lock:
            if not self._probing:
                self._probing = True
                return True
        self._known.wait()
        return not self.broken

    def proven(self) -> None:
        self._known.set()

    def condemn(self, reason: str) -> None:
        with self._lock:
            first, self.broken = not self.broken, True
        self._known.set()
        if first:
            log.warning("the server's %s cannot be used (%s); %s", self.what, reason,
                        self.instead)


def pattern_trust() -> ZipTrust:
    return ZipTrust("zips of file patterns", "one zip per resource")


class Split:
    """The part zips of one resource (``zipsplit``). A part that finds the server will not
    zip patterns takes back the files of every part not yet begun, so a resource costs at
    most one failed part before it comes as one zip."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: list[ZipJob] = []

    def add(self, job: ZipJob) -> None:
        self._waiting.append(job)

    def begin(self, job: ZipJob) -> bool:
        """False: another part took this one's files back."""
        with self._lock:
            if job not in self._waiting:
                return False
            self._waiting.remove(job)
            return True

    def take_back(self) -> dict[str, tuple[PlannedFile, Change]]:
        """The files of every part not yet begun, which will not begin now."""
        with self._lock:
            waiting, self._waiting = self._waiting, []
        return {rel: job for part in waiting for rel, job in part.todo.items()}


@dataclass(slots=True)
class Fetched:
    """A file whose part file is complete, in the shape ``Engine.commit`` takes."""

    planned: PlannedFile
    remote: RemoteFile
    part: PartFile
    replaced: bool
    change: Change


@dataclass(frozen=True, slots=True)
class Received:
    """A zip entry that is a wanted file: its path in the resource, and the file."""

    rel: str
    remote: RemoteFile
    planned: PlannedFile
    change: Change


INLINE = 4 << 20
"""Entries up to this size are read whole and written on the writer's thread; bigger ones
are streamed into their part file on the zip's own, never held in memory."""
QUEUED = 8
"""Entries read and hashed ahead of the writer, at most."""


class Writer:
    """The disk half of a zip, on a thread of its own. Reading an entry (the receive, its
    CRC-32 and MD5) and writing one (the part file's create, its writes and rename, the
    manifest) each spend most of their time outside the interpreter lock, so the two
    overlap: materialize of a 6,000-file scan on loopback took 2.8-3.0 s with one thread
    doing both, 1.8-1.9 s with two (a second writer, or the MD5 on the writer's side, was
    slower). A failure that stops the run (a full disk) stops the writer: the zip sees
    ``error``, reads no further, and ``close`` raises it."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(QUEUED)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="xnatfs-zip-writer",
                                        daemon=True)
        self._thread.start()

    def put(self, write: Callable[[], None]) -> None:
        self._queue.put(write)

    def close(self) -> None:
        """Once all it was handed is written: the failure that stopped it, if any."""
        self._queue.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error

    def _loop(self) -> None:
        while (write := self._queue.get()) is not None:
            if self.error is None:  # after a failure: drained, so the zip never blocks
                try:
                    write()
                except BaseException as exc:
                    self.error = exc


class Host(Protocol):
    """What a zip in transfer needs from its run (the engine)."""

    output: Output
    report: Report
    chunk_size: int

    zip_trust: ZipTrust
    pattern_trust: ZipTrust

    def halted(self) -> bool: ...
    def commit(self, job: Fetched) -> None: ...
    def per_file(self, planned: PlannedFile) -> None: ...
    def submit_zip(self, job: ZipJob) -> None: ...
    def failed(self, planned: PlannedFile, exc: XnatfsError, *, unwritten: int) -> None: ...


class ZipJob:
    """One zip of one resource, or of the ``part`` of it a pattern selects, for the files in
    ``todo`` (path below ``/files/`` -> planned file and what it is to the run)."""

    def __init__(self, host: Host, client: XnatClient, resource: PlannedResource,
                 todo: dict[str, tuple[PlannedFile, Change]], tries: int = 1,
                 part: Part | None = None, split: Split | None = None) -> None:
        self.host = host
        self.client = client
        self.resource = resource
        self.todo = todo
        self.tries = tries
        self.part = part
        self.split = split
        self._names = EntryNames(resource.listed)
        self._sends: Collection[str] = part.sends if part else resource.listed
        self._lock = threading.Lock()  # ``todo``: the zip's thread and its writer's change it

    def run(self) -> None:
        """Stream the zip; whatever it did not deliver is handed on (``_rest``)."""
        trust = self.host.zip_trust
        if not trust.admit():
            self._rest(again=False)
            return
        try:
            if self.part is None:
                self._run()
            elif self.host.pattern_trust.admit():
                try:
                    if self.split is None or self.split.begin(self):
                        self._run()
                finally:
                    self.host.pattern_trust.proven()
            elif self.split is None or self.split.begin(self):
                self._whole()
        finally:
            trust.proven()  # whatever happened, nobody waits on this zip any longer

    def _whole(self) -> None:
        """The server zips no patterns: this part, and every part of the resource not yet
        begun, go as one zip of the resource."""
        self._take_back()
        self.part, self.split, self._sends = None, None, self.resource.listed
        self.tries = 1
        self._rest(again=True)

    def _refused(self, reason: str) -> None:
        self._take_back()
        self.host.pattern_trust.condemn(f"{self.resource.uri}: {reason}")
        self._whole()

    def _take_back(self) -> None:
        """The files of the parts not yet begun, before ``condemn`` wakes them: woken first,
        one of them took them back itself and asked for a whole zip of its own, and the
        resource came twice (one run in three of the "whole" test, alone)."""
        if self.split is not None:
            taken = self.split.take_back()
            with self._lock:
                self.todo.update(taken)

    def _run(self) -> None:
        pattern = self.part.pattern if self.part else None
        try:
            body = self.client.open_zip(self.resource.uri, pattern)
        except (AuthError, OutputFailed):
            raise
        except XnatfsError as exc:
            if pattern is not None and not exc.transient:
                self._refused(f"{pattern}: {exc}")
                return
            log.info("zip of %s failed (%s); fetching its files one by one",
                     self.resource.uri, exc)
            self._rest(again=False)
            return
        with body:
            def receive(most: int) -> bytes:
                body.attempts = self.client.attempts(self.client.timeout[1])  # per receive
                return body.read1(most)

            stream = ZipStream(Buffered(receive).read)
            try:
                writer = Writer()
                try:
                    self._entries(stream, writer)
                finally:
                    writer.close()  # what it was handed is written before the rest is known
            except ZipFormatError as exc:
                if pattern is not None and not stream.entries:
                    self._refused(f"{pattern}: {exc}")
                    return
                self.host.zip_trust.condemn(f"{self.resource.uri}: {exc}")
                self._rest(again=False)
                return
            except (AuthError, OutputFailed):
                raise
            except XnatfsError as exc:  # cut short, reset, stalled: kept what was verified
                log.info("zip of %s broke off (%s); %d files still to come",
                         self.resource.uri, exc, len(self.todo))
                self._rest(again=exc.transient)
                return
        self._rest(again=False)

    def _entries(self, stream: ZipStream, writer: Writer) -> None:
        while not self.host.halted() and writer.error is None and \
                (entry := stream.next_entry()) is not None:
            rel = self._relpath(entry.name)
            self.host.zip_trust.proven()
            if self.part is not None:
                if rel in self.part.sends:
                    self.host.pattern_trust.proven()
                else:  # the pattern was ignored: this zip brings every part not yet begun
                    self._take_back()
                    self.host.pattern_trust.condemn(
                        f"{self.resource.uri}: {self.part.pattern} brought {rel}")
                    self.part, self.split, self._sends = None, None, self.resource.listed
            remote = self.resource.listed[rel]
            size = entry.size if entry.size is not None else remote.size
            if size is None:
                raise ZipFormatError(f"no size for zip entry {entry.name!r}")
            with self._lock:
                wanted = self.todo.get(rel)
            if wanted is None:  # not selected, or already here: read past it
                for _ in stream.data(size):
                    pass
                stream.finish()
            elif size > INLINE:  # streamed into its part file here, never held whole
                self._write(Received(rel, remote, *wanted), stream.data(size), stream.finish)
            else:
                self._entry(stream, writer, Received(rel, remote, *wanted), size)

    def _relpath(self, name: str) -> str:
        rel = self._names.rel(name)
        if rel is None:
            raise ZipFormatError(f"zip entry {name!r} is no file the listing has")
        return rel

    def _entry(self, stream: ZipStream, writer: Writer, got: Received, size: int) -> None:
        """A small entry read whole, its CRC-32 and MD5 taken as it comes, and handed to the
        writer; one that fails its CRC is never written."""
        verifier = Verifier(got.remote.size or 0, got.remote.digest)
        pieces = []
        try:
            for piece in stream.data(size):
                verifier.update(piece)
                pieces.append(piece)
            stream.finish()
        except EntryCorrupt as exc:
            self._again(got, 0, exc)
            return
        writer.put(partial(self._write, got, pieces, None, verifier))

    def _write(self, got: Received, pieces: Iterable[bytes], finish: Callable[[], None] | None,
               hashed: Verifier | None = None) -> None:
        """An entry's bytes into its part file, checked and committed: bytes read already
        (``hashed`` has their MD5), or still coming from the stream (``finish`` checks them
        at the end)."""
        host = self.host
        output = host.output
        planned, remote = got.planned, got.remote
        try:
            target = output.target(planned.path)
            output.make_parents(target)
            part = PartFile(target, remote.size or 0, remote.digest, align=host.chunk_size,
                            resume=False, hashed=hashed)
        except XnatfsError as exc:  # something not ours in the way: this file fails
            self._done(got.rel)
            for _ in pieces:
                pass
            if finish is not None:
                finish()
            host.failed(planned, exc, unwritten=remote.size or 0)
            return
        written = 0
        try:
            for piece in pieces:
                part.write(piece)
                written += len(piece)
                host.report.wrote(len(piece))
            if finish is not None:
                finish()
        except EntryCorrupt as exc:
            part.discard()
            self._again(got, written, exc)
            return
        except BaseException:
            part.discard()  # its bytes are not verified; the file comes again
            host.report.expect(written)
            raise
        try:
            host.commit(Fetched(planned, remote, part, replaced=False,
                                change=Change.NEW if got.change is Change.NEW
                                else Change.CHANGED))
        except IntegrityError as exc:  # size or MD5 not the listing's: the part file is gone
            self._again(got, written, exc)
            return
        except XnatfsError as exc:  # the rename failed: this file fails, as any FileJob's
            self._done(got.rel)
            host.failed(planned, exc, unwritten=0)
            return
        self._done(got.rel)

    def _done(self, rel: str) -> None:
        with self._lock:
            self.todo.pop(rel, None)

    def _again(self, got: Received, written: int, exc: Exception) -> None:
        """An entry the zip got wrong: that file alone comes by a per-file GET."""
        log.warning("%s: %s in the zip; fetching it on its own", got.planned.path, exc)
        self._done(got.rel)
        self.host.report.expect(written)
        self.host.per_file(got.planned)

    def _rest(self, *, again: bool) -> None:
        """Hand on what this zip did not deliver: one more zip when it broke off and enough
        remains, else one GET per file."""
        if not self.todo or self.host.halted():
            return
        if again and self.tries < ZIP_TRIES and zip_worth(len(self.todo), len(self._sends)):
            self.host.submit_zip(ZipJob(self.host, self.client, self.resource, self.todo,
                                        self.tries + 1, self.part))
            return
        for planned, _ in self.todo.values():
            self.host.per_file(planned)


def zip_candidates(resource: PlannedResource,
                   decide: Callable[[PlannedFile], Change | None]
                   ) -> tuple[dict[str, tuple[PlannedFile, Change]], list[PlannedFile]]:
    """Split a resource's wanted files into those a zip may bring (size and MD5 listed, to
    be fetched: new, changed or to overwrite) and the rest (present, or unknowable)."""
    by_uri = {remote.uri: rel for rel, remote in resource.listed.items()}
    todo: dict[str, tuple[PlannedFile, Change]] = {}
    rest: list[PlannedFile] = []
    for planned in resource.wanted:
        remote = planned.file
        change = decide(planned) if remote.size is not None and remote.digest else None
        if change in (Change.NEW, Change.CHANGED, Change.OVERWRITE):
            todo[by_uri[remote.uri]] = (planned, change)
        else:
            rest.append(planned)
    return todo, rest


def zip_jobs(host: Host, client: XnatClient, resource: PlannedResource,
             todo: dict[str, tuple[PlannedFile, Change]], parts: int
             ) -> tuple[list[ZipJob], list[PlannedFile]]:
    """The zips for a resource's ``todo`` (one, or a part each where the resource is big and
    the server zips patterns; ``zipsplit``), and the files that go by GETs instead: those no
    part selects, and those of a part with too few of them wanted for its zip."""
    sizes = {rel: planned.file.size or 0 for rel, (planned, _) in todo.items()}
    cut = None if host.pattern_trust.broken else split(resource.listed, sizes, parts)
    if cut is None:
        return [ZipJob(host, client, resource, todo)], []
    together = Split()
    jobs: list[ZipJob] = []
    left = dict(todo)
    for part in cut:
        mine = {rel: left.pop(rel) for rel in part.sends if rel in left}
        if zip_worth(len(mine), len(part.sends)):
            job = ZipJob(host, client, resource, mine, part=part, split=together)
            together.add(job)
            jobs.append(job)
        else:
            left.update(mine)
    return jobs, [planned for planned, _ in left.values()]
