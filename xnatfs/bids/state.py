"""What an export wrote, so that a rerun converts only what changed: ``DIR/.xnatfs/bids.json``.

One entry per origin (an XNAT scan, or a stem of a session's BIDS resource): the fingerprint
of its source files (names, sizes, MD5s, the BIDS name and this format), and the files it
wrote with their MD5s. An entry is marked ``pending`` before any of its files is renamed into
place and unmarked after the last, so a run killed in between leaves an entry that the next
run redoes, never a series it takes for whole. Saved atomically (temporary file, rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass, field

from xnatfs.bids.plan import Series
from xnatfs.errors import write_error

STATE_FILE = os.path.join(".xnatfs", "bids.json")
FORMAT = 1


@dataclass
class Entry:
    fingerprint: str
    files: dict[str, str] = field(default_factory=dict)
    """Path below DIR → MD5 of what was written there."""
    subject: str = ""
    """The XNAT subject label (participants.tsv)."""
    scan: str = ""
    pending: bool = False


def origin(series: Series) -> str:
    """Which source a series comes from, stable across names (a rename moves its files):
    the scan for a conversion, the server's file itself for what is reused."""
    if series.reused:
        return series.reused[0][1].uri
    return f"{series.session_path}#scan-{series.scan}"


def fingerprint(series: Series) -> str:
    files = series.reused or series.dicom
    sources = sorted(f"{f.uri}\t{f.size}\t{f.digest or ''}" for _, f in files)
    parts = [f"{FORMAT}", series.key, *sources]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class State:
    """The export's record in DIR. Thread-safe."""

    def __init__(self, root: str) -> None:
        self.path = os.path.join(root, STATE_FILE)
        self.root = root
        self._lock = threading.Lock()
        self.entries: dict[str, Entry] = {}
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            if data.get("format") == FORMAT:
                self.entries = {k: Entry(**v) for k, v in data.get("entries", {}).items()}
        except (OSError, ValueError, TypeError):
            pass  # none yet, or unreadable: everything is redone, nothing is trusted
        # path -> the entry that wrote it: a commit asks for each of its files
        self._owners = {path: key for key, entry in self.entries.items()
                        for path in entry.files}

    def unchanged(self, key: str, series: Series) -> bool:
        """Whether the series was written whole from these very sources, and is still there."""
        entry = self.entries.get(key)
        if entry is None or entry.pending or entry.fingerprint != fingerprint(series):
            return False
        return bool(entry.files) and all(
            os.path.isfile(os.path.join(self.root, path)) for path in entry.files)

    def owner(self, path: str) -> str | None:
        return self._owners.get(path)

    def begin(self, key: str, series: Series, files: dict[str, str]) -> Entry | None:
        """Mark the series pending, with the old files and the new; return the old entry."""
        with self._lock:
            old = self.entries.get(key)
            keep = dict(old.files) if old else {}
            self._set(key, Entry(fingerprint(series), {**keep, **files}, series.xnat_subject,
                                 series.scan, pending=True))
            return old

    def finish(self, key: str, series: Series, files: dict[str, str]) -> None:
        with self._lock:
            self._set(key, Entry(fingerprint(series), files, series.xnat_subject,
                                 series.scan))

    def _set(self, key: str, entry: Entry) -> None:
        old = self.entries.get(key)
        for path in old.files if old else ():
            if path not in entry.files:
                self._owners.pop(path, None)
        self._owners.update(dict.fromkeys(entry.files, key))
        self.entries[key] = entry
        self._save()

    def _save(self) -> None:
        data = {"format": FORMAT, "entries": {k: asdict(v) for k, v in
                                              sorted(self.entries.items())}}
        temporary = f"{self.path}.tmp"
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(temporary, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, self.path)
        except OSError as exc:
            raise write_error(exc, self.path) from None
