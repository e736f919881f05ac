"""The FUSE file system: the tree and the reader behind mfusepy's high-level API.

Metadata comes from the Tree (listings cached in memory with a TTL), so ``ls -l``, ``stat``,
``find`` and ``du`` never read file contents; the kernel keeps entries and attributes for the
same TTL (negative entries 5 s), because a TTL of 0 multiplies callbacks by ~8 per file.
``readdir`` gives each entry's type, so ``find`` needs no lookup to tell files from folders.
Reads go through one FileHandle per open; the kernel page cache is kept across opens of a file
whose version has not changed, so re-reads never reach us. Everything that would modify the
tree answers EROFS. Errors become their errno (errors.py); anything unexpected is logged and
becomes EIO, never a crash of the mount.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import itertools
import logging
import os
import stat
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from cachetools import LRUCache

from xnatfs.archive import Archive
from xnatfs.errors import XnatfsError
from xnatfs.mount.libfuse import Slice, mfusepy
from xnatfs.reader.handle import FileHandle, MemoryHandle
from xnatfs.reader.readahead import FolderAhead
from xnatfs.tree.model import Folders, Node, split_path

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
BLOCK = 1 << 20  # st_blksize: FUSE's largest request, so cp and friends read in 1 MiB
MAX_BACKGROUND = 64  # kernel readahead requests in flight (libfuse default 12; mountpoint 64)
_DIR = {"st_mode": stat.S_IFDIR | 0o555}
_FILE = {"st_mode": stat.S_IFREG | 0o444}


_adopted: set[int] = set()


def _keep_thread_state() -> None:
    """Make this libfuse thread's Python thread state last as long as the thread.

    ctypes gives every callback from a thread Python did not start a fresh thread state, so
    thread-locals (diskcache's SQLite connection among them) would be rebuilt on every single
    FUSE call. One more reference to the state keeps it. libfuse is told never to retire idle
    threads, so no state is left behind by a thread that ends.
    """
    tid = threading.get_native_id()
    if tid not in _adopted:
        _adopted.add(tid)
        ctypes.pythonapi.PyGILState_Ensure()


def _errno(op: Callable[P, R]) -> Callable[P, R]:
    """Turn our errors into FuseOSError with their errno; log what the user should see."""

    @functools.wraps(op)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        _keep_thread_state()
        try:
            return op(*args, **kwargs)
        except mfusepy.FuseOSError:
            raise
        except XnatfsError as exc:
            if exc.errno == errno.EIO:
                log.warning("%s: %s", op.__name__, exc)
            raise mfusepy.FuseOSError(exc.errno) from None
        except NotADirectoryError:
            raise mfusepy.FuseOSError(errno.ENOTDIR) from None
        except Exception:
            log.exception("unexpected failure in %s", op.__name__)
            raise mfusepy.FuseOSError(errno.EIO) from None

    return wrapper


class XnatFS(mfusepy.Operations):
    """Read-only operations over one Tree; thread-safe (libfuse's multithreaded loop)."""

    use_ns = True
    # Handles carry the file or folder, so reads need no path: libfuse skips building it.
    flag_nopath = True
    flag_nullpath_ok = True

    def __init__(
        self, archive: Archive, *, on_init: Callable[[], None] | None = None
    ) -> None:
        self.archive = archive
        self.tree: Folders = archive.view
        self.fetcher = archive.fetcher
        self.folder_ahead = FolderAhead(archive.fetcher)
        self.on_init = on_init
        self.uid, self.gid = os.getuid(), os.getgid()
        self._handles: dict[int, tuple[FileHandle | MemoryHandle, dict[str, int], str]] = {}
        # path -> attributes, for files open now: fstat() of an open file (the kernel asks by
        # path) never waits on the server, even while a listing hangs
        self._open_attrs: dict[str, tuple[int, dict[str, int]]] = {}  # (open count, attrs)
        self._dirs: dict[int, Node] = {}
        self._dir_paths: dict[int, str] = {}  # by dir handle, as "/a/b" ("/" for the root)
        self._entries: dict[int, list[tuple[str, dict[str, int], bool]]] = {}  # by dir handle
        self._ids = itertools.count(1)
        # path -> file version at its last open (bounded: a path forgotten just loses its
        # page cache once, at its next open)
        self._opened: LRUCache[str, tuple[str, int]] = LRUCache(1 << 16)
        self._lock = threading.Lock()

    # -- set-up ----------------------------------------------------------------------------

    def init_with_config(self, conn: Any, config: Any) -> None:
        if conn is not None:
            conn.max_background = MAX_BACKGROUND
            conn.congestion_threshold = MAX_BACKGROUND * 3 // 4
        if self.on_init is not None:
            self.on_init()

    # -- metadata --------------------------------------------------------------------------

    @_errno
    def getattr(self, path: str | None, fh: Any = None) -> dict[str, int]:
        if path is None:  # fstat() of an open file or folder: the handle knows
            folder = self._dirs.get(fh.fh)
            return self._attrs(folder) if folder is not None else self._handles[fh.fh][1]
        held = self._open_attrs.get(path)
        return held[1] if held is not None else self._attrs(self.tree.lookup(path))

    def _attrs(self, node: Node) -> dict[str, int]:
        ns = int(node.mtime * 1e9)
        attrs = {"st_uid": self.uid, "st_gid": self.gid, "st_atime": ns, "st_mtime": ns,
                 "st_ctime": ns, "st_blksize": BLOCK}
        if node.is_dir:
            attrs.update(st_mode=_DIR["st_mode"], st_nlink=2)
        else:
            size = self.tree.resolve(node).size or 0
            attrs.update(st_mode=_FILE["st_mode"], st_nlink=1, st_size=size,
                         st_blocks=-(-size // 512))
        return attrs

    @_errno
    def opendir(self, path: str) -> int:
        node = self.tree.lookup(path)
        if not node.is_dir:
            raise NotADirectoryError(path)
        with self._lock:
            fh = next(self._ids)
            self._dirs[fh] = node
            self._dir_paths[fh] = "/" + "/".join(split_path(path))
        return fh

    def readdir(self, path: str | None, fh: int) -> list[tuple[str, dict[str, int], int]]:
        """mfusepy's form of ``readdir_plus`` (the FUSE adapter calls that one)."""
        return [(name, attrs, 0) for name, attrs, _ in self.readdir_plus(path, fh)]

    @_errno
    def readdir_plus(self, path: str | None, fh: int) -> list[tuple[str, dict[str, int], bool]]:
        """The folder's entries with their attributes where the listing has them all, and
        whether it has (a file whose listing has no size has its mode only: the kernel asks
        for the rest by LOOKUP when it needs it). The kernel keeps each full entry with its
        attributes, so ``cp -r``, ``ls -l`` and ``find`` need no LOOKUP per file. Listed once
        per handle: the kernel comes back for the rest by position."""
        with self._lock:
            entries = self._entries.get(fh)
        if entries is None:
            kids = self.tree.children(self._dirs[fh])
            base = self._dir_paths.get(fh, "/").rstrip("/")
            entries = [(".", _DIR, False), ("..", _DIR, False)]
            for name, kid in kids.items():
                # A file open now keeps the attributes it was opened with: given the size of
                # a newer version, the kernel cut or stretched reads of the open one to it.
                held = self._open_attrs.get(f"{base}/{name}")
                if held is not None:
                    entries.append((name, held[1], True))
                elif kid.file is None or kid.file.size is not None:
                    entries.append((name, self._attrs(kid), True))
                else:
                    entries.append((name, _FILE, False))
            with self._lock:
                self._entries[fh] = entries
        return entries

    def releasedir(self, path: str | None, fh: int) -> int:
        with self._lock:
            self._dirs.pop(fh, None)
            self._dir_paths.pop(fh, None)
            self._entries.pop(fh, None)
        return 0

    def destroy(self, path: str | None) -> None:
        """The mount is going: stop the zip read-aheads under way."""
        self.folder_ahead.close()

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": BLOCK, "f_frsize": BLOCK, "f_namemax": 255}

    # -- data ------------------------------------------------------------------------------

    @_errno
    def open(self, path: str, fi: Any) -> int:
        if fi.flags & os.O_ACCMODE != os.O_RDONLY:
            raise mfusepy.FuseOSError(errno.EROFS)
        parts = split_path(path)
        if not parts:
            raise mfusepy.FuseOSError(errno.EISDIR)
        folder, name = "/".join(parts[:-1]), parts[-1]
        siblings = self.tree.listdir(folder)  # one walk: the file and what cp -r reads next
        node = siblings.get(name)
        if node is None:
            raise mfusepy.FuseOSError(errno.ENOENT)
        if node.file is None:
            raise mfusepy.FuseOSError(errno.EISDIR)
        file = self.tree.resolve(node)
        handle = self.archive.open(file)
        self.folder_ahead.opened(folder, siblings, node.file)
        with self._lock:
            fi.fh = next(self._ids)
            attrs = self._attrs(node)
            count = self._open_attrs.get(path, (0, attrs))[0]
            self._open_attrs[path] = (count + 1, attrs)
            self._handles[fi.fh] = (handle, attrs, path)
            # The page cache may keep what it has unless the file changed since it was read,
            # or bytes of it failed their MD5 since (they may be in the page cache).
            state = (file.version, self.fetcher.taint(file))
            fi.keep_cache = self._opened.get(path) == state
            self._opened[path] = state
        return 0

    @_errno
    def read(self, path: str | None, size: int, offset: int, fh: Any) -> Slice:
        return Slice(*self._handles[fh.fh][0].read_span(offset, size))

    def release(self, path: str | None, fh: Any) -> int:
        with self._lock:
            handle, _, path = self._handles.pop(fh.fh)
            count, attrs = self._open_attrs.pop(path)
            if count > 1:
                self._open_attrs[path] = (count - 1, attrs)
        handle.close()
        return 0

    # -- read-only -------------------------------------------------------------------------

    def _read_only(self, *args: Any, **kwargs: Any) -> int:
        raise mfusepy.FuseOSError(errno.EROFS)

    chmod = chown = create = fallocate = link = mkdir = mknod = removexattr = rename = \
        rmdir = setxattr = symlink = truncate = unlink = utimens = write = _read_only
