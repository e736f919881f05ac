"""One file on the local side: where it goes, its partial download, verification, the rename.

A file is written to a hidden ``.NAME.xnatfs-part`` beside its final name, in order, hashing
as it goes; only when its size and (where the listing has one) its MD5 are right is it renamed
into place. So a final name always holds a verified file, whose MD5 the manifest records; a
part file is a valid prefix, so a rerun continues it with Range. Nothing is ever
written outside the output folder: every path component comes from the tree (safe names), is
checked again here, and no symbolic link on the way is followed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
from dataclasses import dataclass

from xnatfs.errors import (
    IntegrityError,
    LocalError,
    UsageError,
)
from xnatfs.errors import write_error as local_error
from xnatfs.materialize.manifest import MD5SUMS, META_DIR
from xnatfs.reader.verify import Verifier

PART_SUFFIX = ".xnatfs-part"
MAX_NAME_BYTES = 255
READ_BLOCK = 1 << 20
RESERVED = frozenset({META_DIR, MD5SUMS})  # the manifest's folder and the checksum list


@dataclass(frozen=True, slots=True)
class Target:
    """Where one tree path lands: its final name and its part file."""

    final: str
    part: str
    absent: bool = False
    """A folder on the way did not exist when the target was made: nothing is there yet."""


class Output:
    """The output folder. Thread-safe. ``create=False`` (a dry run) only looks."""

    def __init__(self, path: str) -> None:
        self.given = os.path.abspath(path)
        self.root = os.path.realpath(self.given)
        self._dirs: set[str] = {self.root}  # real folders, checked
        self._absent: set[str] = set()  # folders found missing, not made since
        self._folders: dict[str, str] = {}  # tree folder and "/" -> its checked local path
        self._lock = threading.Lock()

    def exists(self) -> bool:
        return os.path.isdir(self.root)

    def create(self) -> bool:
        """Make the folder (late: only once login, server and selection are known to be
        good, so a refused run leaves nothing behind); True when it did not exist."""
        created = not os.path.lexists(self.given)
        try:
            os.makedirs(self.given, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create output folder {self.given}: "
                             f"{os.strerror(exc.errno or 0)}") from None
        if not os.path.isdir(self.given):
            raise UsageError(f"output {self.given} is not a folder")
        if not os.access(self.given, os.W_OK | os.X_OK):
            raise UsageError(f"output folder {self.given} is not writable")
        self.root = os.path.realpath(self.given)
        self._dirs = {self.root}
        return created

    def target(self, tree_path: str) -> Target:
        """The final and part names for a tree path; a component that could leave its folder
        (which the tree never produces) is refused, and so is a symbolic link on the way,
        before anything is looked at there: what it leads to is not in the output folder, so
        nothing there may count as present either."""
        folder, slash, name = tree_path.rpartition("/")
        _check_name(name, tree_path)
        parent = self._folders.get(folder + slash)  # "" (no folder) is not "/" (an empty one)
        if parent is None:  # checked once per folder: a resource's files share theirs
            parts = folder.split("/") if slash else []
            for part in parts:
                _check_name(part, tree_path)
            parent = os.path.join(self.root, *parts)
            with self._lock:
                self._folders[folder + slash] = parent
        if (folder.split("/", 1)[0] if folder else name) in RESERVED:
            raise LocalError(f"{tree_path.split('/', 1)[0]} is where xnatfs keeps its "
                             f"records; not writing {tree_path} over it")
        final = os.path.join(parent, name)
        absent = self._check_parents(final)
        return Target(final, os.path.join(parent, part_name(name)), absent)

    def _check_parents(self, final: str) -> bool:
        """Every folder on the way to ``final`` that exists is a real folder; True when one
        is missing. A missing folder is remembered until this run makes it: planning a
        fresh resource of 6,000 files looked for its folder 6,000 times, and for each file
        in it."""
        where = os.path.dirname(final)
        chain = []
        while True:
            with self._lock:
                if where in self._dirs:
                    break
                if where in self._absent:
                    return True
            chain.append(where)
            where = os.path.dirname(where)
        for at, folder in enumerate(reversed(chain)):
            try:
                mode = os.lstat(folder).st_mode
            except FileNotFoundError:  # nothing exists below a missing folder
                with self._lock:
                    self._absent.update(chain[:len(chain) - at])
                return True
            except OSError as exc:
                raise local_error(exc, folder) from None
            if stat.S_ISLNK(mode):
                raise LocalError(f"refusing to follow the symbolic link {folder}")
            if not stat.S_ISDIR(mode):
                raise LocalError(f"{folder} exists and is not a folder")
            with self._lock:
                self._dirs.add(folder)

    def make_parents(self, target: Target) -> None:
        """Create the folders down to ``target`` one by one, refusing to pass a symbolic link
        (it could lead outside the output folder)."""
        parent = os.path.dirname(target.final)
        with self._lock:
            if parent in self._dirs:
                return
        rel = os.path.relpath(parent, self.root)
        where = self.root
        for part in rel.split(os.sep):
            where = os.path.join(where, part)
            with self._lock:
                if where in self._dirs:
                    continue
                self._absent.discard(where)
            try:
                os.mkdir(where)
            except FileExistsError:
                mode = os.lstat(where).st_mode
                if stat.S_ISLNK(mode):
                    raise LocalError(f"refusing to follow the symbolic link {where}") from None
                if not stat.S_ISDIR(mode):
                    raise LocalError(f"{where} exists and is not a folder") from None
            except OSError as exc:
                raise local_error(exc, where) from None
            with self._lock:
                self._dirs.add(where)


def _check_name(part: str, tree_path: str) -> None:
    if part in ("", ".", "..") or "\0" in part or \
            len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise LocalError(f"refusing unsafe name {part!r} in {tree_path!r}")


def part_name(name: str) -> str:
    """``.NAME.xnatfs-part``, or a hash of the name when that would be too long."""
    part = f".{name}{PART_SUFFIX}"
    if len(part.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES:
        return part
    digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()
    return f".{digest}{PART_SUFFIX}"


def existing_size(path: str) -> int | None:
    """The size of a regular file at ``path``, None if there is nothing; anything else there
    (a folder, a symbolic link) is a LocalError: it is not ours to replace."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise local_error(exc, path) from None
    if not stat.S_ISREG(st.st_mode):
        raise LocalError(f"{path} exists and is not a regular file; not replacing it")
    return st.st_size


def file_md5(path: str) -> str:
    """MD5 of a local file (hashlib releases the GIL, so threads hash in parallel)."""
    md5 = hashlib.md5()
    try:
        with open(path, "rb", buffering=0) as f:
            while block := f.read(READ_BLOCK):
                md5.update(block)
    except OSError as exc:
        raise LocalError(f"cannot read {path}: {os.strerror(exc.errno or 0)}") from None
    return md5.hexdigest()


class PartFile:
    """A file being downloaded: appended in order, hashed as it goes, renamed when verified.

    Opening continues an existing part file from its last whole ``align``-sized block (the
    fetcher's chunks), so the bytes before ``offset`` are already there and hashed.
    """

    def __init__(self, target: Target, size: int, digest: str | None, *, align: int,
                 resume: bool = True, hashed: Verifier | None = None) -> None:
        self.target = target
        self.size = size
        self.digest = digest
        # Always a verifier: the manifest records every file's MD5. ``hashed`` has taken the
        # bytes to be written already (a zip entry, hashed as it came in): ``write`` then
        # only writes.
        self.verifier = hashed or Verifier(size, digest)
        self._hashing = hashed is None
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
        self.offset = self.resumed_from = 0
        try:  # a new part file is created exclusively; an existing one is a prefix to continue
            try:
                self.fd = os.open(target.part, flags | os.O_CREAT | os.O_EXCL, 0o666)
                return  # empty and at 0: nothing to check (a zip makes thousands of these)
            except FileExistsError:
                self.fd = os.open(target.part, flags)
        except OSError as exc:
            raise local_error(exc, target.part) from None
        try:
            have = os.fstat(self.fd).st_size if resume else 0
            self.offset = have // align * align if have <= size else 0
            os.ftruncate(self.fd, self.offset)
            if self.offset:
                self._hash_prefix()
            os.lseek(self.fd, self.offset, os.SEEK_SET)
        except OSError as exc:
            os.close(self.fd)
            raise local_error(exc, target.part) from None
        self.resumed_from = self.offset

    def _hash_prefix(self) -> None:
        os.lseek(self.fd, 0, os.SEEK_SET)
        left = self.offset
        while left:
            block = os.read(self.fd, min(READ_BLOCK, left))
            if not block:
                raise OSError(errno.EIO, "part file shrank while reading it")
            self.verifier.update(block)
            left -= len(block)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as exc:
            raise local_error(exc, self.target.part) from None
        if self._hashing:
            self.verifier.update(data)
        self.offset += len(data)

    def commit(self, mtime: float) -> None:
        """Check size and MD5, then rename into place. On a mismatch the part file is removed
        (its bytes are wrong) and IntegrityError (DigestMismatch for the MD5) raised."""
        try:
            self.verifier.check()
        except IntegrityError:
            self.discard()
            raise
        try:
            os.utime(self.fd, (mtime, mtime))
            os.close(self.fd)
            self.fd = -1
            os.replace(self.target.part, self.target.final)
        except OSError as exc:
            raise local_error(exc, self.target.final) from None

    def close(self) -> None:
        """Stop writing, keeping the part file for the next run."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        self.close()
        try:
            os.unlink(self.target.part)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise local_error(exc, self.target.part) from None
