"""What materialize wrote into DIR, kept in DIR: the manifest and ``MD5SUMS``.

``DIR/.xnatfs/manifest.jsonl`` holds one JSON object per line; a later line about a path
replaces every earlier one, and a torn last line (a SIGKILL mid-write) is ignored:

    {"path": "P1/S1/S1_MR1/scans/1-T1w/resources/DICOM/files/1.dcm", "size": 2048,
     "md5": "...", "md5_from": "server", "uri": "/data/experiments/XNAT_E00001/scans/1/...",
     "fetched": "2026-11-30T06:30:00Z", "context": {"project": "P1", "subject": "S1",
     "session": "S1_MR1", "session_id": "XNAT_E00001", "scan_id": "1", "resource": "DICOM", ...}}
    {"path": "...", "forget": true}

``md5_from`` is ``server`` when the listing gave the digest the bytes were checked against,
``local`` when the server listed none (XNAT leaves it empty until a catalog refresh) and the
MD5 was computed while writing. ``forget`` says the file is no longer one xnatfs vouches for:
it is written before a file is replaced or deleted, and the new entry only after the rename.
So at every moment each entry describes bytes that are in DIR under its path, and a file in
DIR without an entry (a kill between its rename and the write of its batch) is hashed and
adopted by the next run.

Lines are appended a batch at a time (``BATCH``), with one ``write`` under a shared lock
(several shards of one job array append at once), and a forget line at once. ``finish``
rewrites the file compactly and ``DIR/MD5SUMS`` beside it under the exclusive lock, each
through a rename, so ``md5sum -c MD5SUMS`` passes after every run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from xnatfs.errors import write_error
from xnatfs.tree.model import Context

META_DIR = ".xnatfs"
MANIFEST = "manifest.jsonl"
MD5SUMS = "MD5SUMS"
_LOCK = "manifest.lock"
BATCH = 64
"""Entries written with one append, at most: a file's own append (a lock, an open, a write,
a close, an unlock) was a sixth of a small file's time in a zip of 6,000."""
BATCH_AGE = 0.25
"""Seconds an entry may wait for the rest of its batch, on a run where files come slowly."""
# One encoder, built once: ``json.dumps`` with options builds a new one on every call.
_LINE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_FORGET = json.JSONEncoder(ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Entry:
    """One file xnatfs wrote: enough to tell later whether the server's copy changed, whether
    the local one is intact, and whether the current selection covers it."""

    path: str
    size: int
    md5: str
    md5_from: str
    uri: str
    fetched: str
    context: dict[str, str]

    def selection_context(self) -> Context:
        fields = {f.name for f in dataclasses.fields(Context)}
        return Context(**{k: v for k, v in self.context.items() if k in fields})

    def to_json(self) -> str:
        # A shallow dict: ``dataclasses.asdict`` deep-copies, a cost paid once per file.
        return _LINE.encode({name: getattr(self, name) for name in _ENTRY_FIELDS})


def entry_for(path: str, size: int, md5: str, *, from_server: bool, uri: str,
              context: Context) -> Entry:
    ctx = {k: v for k in _CONTEXT_FIELDS if (v := getattr(context, k))}
    fetched = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return Entry(path, size, md5, "server" if from_server else "local", uri, fetched, ctx)


_ENTRY_FIELDS = tuple(f.name for f in dataclasses.fields(Entry))
_CONTEXT_FIELDS = tuple(f.name for f in dataclasses.fields(Context))


def meta_dir(root: str) -> str:
    return os.path.join(root, META_DIR)


def exists(root: str) -> bool:
    return os.path.isfile(os.path.join(meta_dir(root), MANIFEST))


def read_entries(root: str) -> dict[str, Entry]:
    """The manifest as path -> entry (empty when there is none)."""
    return _read(os.path.join(meta_dir(root), MANIFEST)).entries


@dataclass(slots=True)
class _Contents:
    """A manifest as read: its entries, each one's line, and what the file was then."""

    entries: dict[str, Entry]
    lines: dict[str, str]
    seen: tuple[int, int] | None  # (inode, size); None: there was no file
    torn: bool  # the last line has no newline (a kill mid-write)


def _read(path: str) -> _Contents:
    entries: dict[str, Entry] = {}
    lines: dict[str, str] = {}
    seen, torn = None, False
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except FileNotFoundError:
        return _Contents(entries, lines, seen, torn)
    seen = (st.st_ino, len(data))
    text = data.decode("utf-8", "surrogateescape").split("\n")
    torn = text.pop() != ""  # what follows the last newline: a line torn by a kill
    for line in text:
        try:
            doc = json.loads(line)
            if doc.get("forget"):
                entries.pop(doc["path"], None)
                lines.pop(doc["path"], None)
            else:
                entries[doc["path"]] = Entry(**doc)
                lines[doc["path"]] = line
        except (ValueError, TypeError, KeyError):
            continue
    return _Contents(entries, lines, seen, torn)


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size


def md5sum_line(md5: str, path: str) -> str:
    """A line of md5sum's format; names with a backslash or newline are escaped as md5sum
    escapes them (a leading backslash marks the line)."""
    if "\\" in path or "\n" in path or "\r" in path:
        escaped = path.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        return f"\\{md5}  {escaped}\n"
    return f"{md5}  {path}\n"


class Manifest:
    """The manifest of one output folder, open for a run. Thread-safe."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.dir = meta_dir(root)
        self.path = os.path.join(self.dir, MANIFEST)
        self._lock = threading.Lock()
        self._pending: list[str] = []  # lines of entries not yet written (``record``)
        self._since = 0.0  # when the oldest of them was recorded
        try:
            os.makedirs(self.dir, exist_ok=True)
            self._lock_fd = os.open(os.path.join(self.dir, _LOCK),
                                    os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise write_error(exc, self.dir) from None
        contents = _read(self.path)
        self.entries = contents.entries
        self._lines = contents.lines  # each entry's line, for ``finish``
        # The file as this run last knew it: if it still is at ``finish``, nobody else
        # wrote to it, and it need not be read back (6,000 entries: 40 ms).
        self._seen, self._torn = contents.seen, contents.torn
        self._foreign = False

    def get(self, path: str) -> Entry | None:
        with self._lock:
            return self.entries.get(path)

    def items(self) -> Iterator[tuple[str, Entry]]:
        with self._lock:
            return iter(sorted(self.entries.items()))

    def __len__(self) -> int:
        with self._lock:
            return len(self.entries)

    def record(self, entry: Entry) -> None:
        """Call right after the file's rename into place. The line is written with the next
        ones (``BATCH``): a kill before then leaves the file in DIR without an entry, which
        the next run hashes and adopts, so no byte is fetched again."""
        line = entry.to_json()
        with self._lock:
            self.entries[entry.path] = entry
            self._lines[entry.path] = line
            if not self._pending:
                self._since = time.monotonic()
            self._pending.append(line)
            if len(self._pending) >= BATCH or time.monotonic() - self._since >= BATCH_AGE:
                self._flush()

    def forget(self, path: str) -> None:
        """Call before the file at ``path`` is replaced or removed: written at once, since
        an entry must never vouch for bytes that are no longer there."""
        with self._lock:
            if path not in self.entries:
                return
            self._pending.append(_FORGET.encode({"path": path, "forget": True}))
            self._flush()
            self.entries.pop(path, None)
            self._lines.pop(path, None)

    def _flush(self) -> None:
        """Append the pending lines with one ``write`` (under ``_lock``): concurrent
        appenders never interleave."""
        lines, self._pending = self._pending, []
        if not lines or self._lock_fd < 0:  # a straggler after the run closed it: the next
            return                          # run adopts its file
        data = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
        fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                         0o644)
            try:
                st = os.fstat(fd)
                if (st.st_ino, st.st_size) != (self._seen or (st.st_ino, 0)):
                    self._foreign = True  # another run wrote or replaced it meanwhile
                if self._torn and st.st_size:  # end the torn line, or it eats this one
                    data = b"\n" + data
                self._torn = False
                os.write(fd, data)
                self._seen = (st.st_ino, st.st_size + len(data))
            finally:
                os.close(fd)
        except OSError as exc:
            raise write_error(exc, self.path) from None
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def finish(self) -> None:
        """Rewrite the manifest without replaced lines, and MD5SUMS from it. Entries other
        runs (shards) appended meanwhile are read back first, so none is lost."""
        with self._lock:
            self._flush()
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                if self._foreign or self._seen != _identity(self.path):
                    contents = _read(self.path)
                    self.entries, self._lines = contents.entries, contents.lines
                paths = sorted(self.entries)
                self._replace(self.path, "".join(self._lines[p] + "\n" for p in paths))
                self._seen = _identity(self.path)
                self._replace(os.path.join(self.root, MD5SUMS),
                              "".join(md5sum_line(self.entries[p].md5, p) for p in paths))
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._lock:
            self._flush()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1

    def _replace(self, path: str, text: str) -> None:
        # The temporary copy goes in the records' folder (same file system, so the rename is
        # atomic): a kill mid-write leaves no stray file among the user's data in DIR.
        tmp = os.path.join(self.dir, f"{os.path.basename(path)}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise write_error(exc, path) from None
