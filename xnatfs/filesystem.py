"""``xnat://``: the archive as an fsspec filesystem, for Python, pandas, nibabel and Dask.

Where FUSE is missing (HPC nodes, managed containers, laptops), this gives the mount's view
without a mount: the same tree paths, the same listings (a whole session from two requests),
the same reader (chunks, read-ahead, MD5 checks) and the same on-disk chunk cache, so bytes
read here are not fetched again by a mount or by ``materialize``, nor the other way round.
``get`` is ``materialize``'s engine: parallel, resumable, verified.

A filesystem object holds only its options. The connection, the tree and the cache are built
on first use, once per process and set of options (fsspec makes an instance per thread, and
one each time a worker unpickles), so pickling sends options, never sockets or threads, and
each Dask or Ray worker process logs in once. A process forked after first use builds its own.
Errors become the built-in exceptions fsspec callers expect (FileNotFoundError,
PermissionError, OSError with the errno), with the xnatfs error as their cause; the archive
is read-only, and every write says so.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from glob import has_magic
from typing import Any

from fsspec.callbacks import DEFAULT_CALLBACK, Callback
from fsspec.implementations.local import make_path_posix, trailing_sep
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem
from fsspec.utils import other_paths, stringify_path

from xnatfs.archive import Archive, Layout
from xnatfs.cli.units import parse_size
from xnatfs.errors import AuthError, Forbidden, NotFound, UsageError, XnatfsError
from xnatfs.tree.model import Node, RemoteFile, split_path
from xnatfs.xnat.client import GRACE, XnatClient, normalise_base_url
from xnatfs.xnat.credentials import Credentials, resolve_credentials

log = logging.getLogger(__name__)

# The node's XNAT identity in ``info``: IDs and labels, as the listings give them.
_CONTEXT_KEYS = ("project", "subject", "session", "session_id", "xsi_type", "scan_id",
                 "scan_type", "series_description", "resource")


@dataclass(frozen=True)
class _Options:
    url: str
    user: str | None
    password: str | None = field(repr=False)
    jsession: str | None = field(repr=False)
    cache_dir: str | None
    cache_size: int
    ttl: float
    timeout: float
    insecure: bool
    layout: Layout = "xnat"


class _Stack:
    """The client and the archive of one process, logged in once."""

    def __init__(self, options: _Options) -> None:
        credentials = _credentials(options)
        if options.insecure:
            log.warning("TLS certificate of %s is not verified", options.url)
        from xnatfs.account.tokens import log_in

        self.client = XnatClient(options.url, credentials, insecure=options.insecure,
                                 read_timeout=options.timeout)
        log_in(self.client)
        log.info("logged in to %s (%s)", options.url, credentials.source)
        self.archive = Archive.open_for(
            self.client, cache_dir=options.cache_dir, cache_size=options.cache_size,
            ttl=options.ttl, deadline=options.timeout + GRACE, layout=options.layout)
        self.tree = self.archive.view
        self.pid = os.getpid()



_STACKS: dict[_Options, _Stack] = {}
_STACKS_LOCK = threading.Lock()


def _stack(options: _Options) -> _Stack:
    """One stack per process and set of options, built on first use: fsspec caches an
    instance per thread, and unpickling in a worker makes new ones, but the process logs in
    once. A process forked from one that had a stack builds its own."""
    stack = _STACKS.get(options)
    if stack is None or stack.pid != os.getpid():
        with _STACKS_LOCK, _errors(""):
            stack = _STACKS.get(options)
            if stack is None or stack.pid != os.getpid():
                stack = _STACKS[options] = _Stack(options)
    return stack


def _credentials(options: _Options) -> Credentials:
    """As the command line resolves them; an explicit password goes with ``user``."""
    if options.password is not None and not options.jsession:
        if not options.user:
            raise UsageError("a password needs a user (user=...)")
        return Credentials(options.user, options.password, source="option")
    return resolve_credentials(options.url, options.user, options.jsession)


@contextmanager
def _errors(path: str) -> Iterator[None]:
    """xnatfs errors as the built-in exceptions that fsspec's callers catch."""
    try:
        yield
    except Forbidden as exc:
        raise PermissionError(errno.EACCES, str(exc), path) from exc
    except NotFound as exc:
        raise FileNotFoundError(errno.ENOENT, str(exc), path) from exc
    except AuthError as exc:
        raise PermissionError(errno.EACCES, str(exc)) from exc
    except UsageError as exc:
        raise ValueError(str(exc)) from exc
    except XnatfsError as exc:
        raise OSError(exc.errno, str(exc)) from exc


def _read_only(path: object = "") -> OSError:
    where = f": {path}" if isinstance(path, str) and path else ""
    return OSError(errno.EROFS, f"xnat:// is read-only{where}")


class XnatFileSystem(AbstractFileSystem):
    """An XNAT server's tree: ``PROJECT/SUBJECT/SESSION/scans/ID-TYPE/resources/LABEL/files``.

    Options: ``url`` (default ``$XNAT_URL``), ``user``, ``password``, ``jsession``,
    ``cache_dir``, ``cache_size`` (bytes or ``"10G"``), ``ttl``, ``timeout``, ``insecure``;
    the same meanings and defaults as ``xnatfs mount``. ``layout="bids"`` shows each project
    as a BIDS dataset, as ``xnatfs mount --bids`` does."""

    protocol = "xnat"
    root_marker = ""

    def __init__(
        self, url: str | None = None, *, user: str | None = None, password: str | None = None,
        jsession: str | None = None, cache_dir: str | None = None,
        cache_size: int | str = "10G", ttl: float = 60.0, timeout: float = 20.0,
        insecure: bool = False, layout: Layout = "xnat", **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        url = url or os.environ.get("XNAT_URL")
        if not url:
            raise ValueError("no XNAT server: pass url=... or set XNAT_URL")
        try:
            base = normalise_base_url(url)
            size = parse_size(cache_size) if isinstance(cache_size, str) else int(cache_size)
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        if ttl <= 0 or timeout <= 0 or size <= 0:
            raise ValueError("ttl, timeout and cache_size must be positive")
        if layout not in ("xnat", "bids"):
            raise ValueError(f"layout must be 'xnat' or 'bids', not {layout!r}")
        self.url = base
        self._options = _Options(base, user, password, jsession, cache_dir, size,
                                 float(ttl), float(timeout), bool(insecure), layout)

    def __repr__(self) -> str:
        return f"XnatFileSystem({self.url!r})"

    @property
    def fsid(self) -> str:
        return f"xnat_{self.url}"

    # -- the per-process stack ---------------------------------------------------------------

    @property
    def stack(self) -> _Stack:
        """This process's stack for these options (fsspec makes an instance per thread)."""
        return _stack(self._options)

    # -- paths ---------------------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = stringify_path(path)
        for prefix in ("xnat://", "xnat::"):
            if path.startswith(prefix):
                path = path[len(prefix):]
        return "/".join(split_path(path))

    def _lookup(self, path: str) -> Node:
        with _errors(path):
            return self.stack.tree.lookup(path)

    def _file(self, path: str) -> RemoteFile:
        node = self._lookup(path)
        if node.is_dir:
            raise IsADirectoryError(errno.EISDIR, "is a folder", path)
        with _errors(path):
            return self.stack.tree.resolve(node)

    def _children(self, path: str, node: Node) -> dict[str, Node]:
        with _errors(path):
            return self.stack.tree.children(node)

    # -- metadata --------------------------------------------------------------------------

    def _info(self, path: str, node: Node, *, resolve: bool = False) -> dict[str, Any]:
        """``name``, ``size``, ``type``, ``mtime`` and the node's XNAT identity. A file whose
        listing has no size shows ``None`` unless ``resolve`` (which costs a request)."""
        ctx = node.context
        out: dict[str, Any] = {"name": path, "size": 0, "type": "directory",
                               "mtime": node.mtime}
        out.update((key, value) for key in _CONTEXT_KEYS if (value := getattr(ctx, key)))
        if node.file is not None:
            size = node.file.size
            if size is None and resolve:
                size = self._file(path).size
            out.update(size=size, type="file", uri=node.file.uri)
            if node.file.digest:
                out["md5"] = node.file.digest
        return out

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        node = self._lookup(path)
        if node.is_dir:
            kids = sorted(self._children(path, node).items())
            entries = [(f"{path}/{name}" if path else name, kid) for name, kid in kids]
        else:
            entries = [(path, node)]
        if not detail:
            return [name for name, _ in entries]
        return [self._info(name, kid) for name, kid in entries]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        return self._info(path, self._lookup(path), resolve=True)

    def exists(self, path: str, **kwargs: Any) -> bool:
        """False only for a path that is not there: an unreachable server is an error."""
        try:
            self._lookup(self._strip_protocol(path))
        except FileNotFoundError:
            return False
        return True

    def isdir(self, path: str) -> bool:
        try:
            return self._lookup(self._strip_protocol(path)).is_dir
        except FileNotFoundError:
            return False

    def isfile(self, path: str) -> bool:
        try:
            return not self._lookup(self._strip_protocol(path)).is_dir
        except FileNotFoundError:
            return False

    def modified(self, path: str) -> datetime:
        return datetime.fromtimestamp(self._lookup(self._strip_protocol(path)).mtime, UTC)

    def ukey(self, path: str) -> str:
        """The content's identity, XNAT's MD5 (so a copy elsewhere with the same bytes has the
        same key, and a replaced file a new one, whatever its name); for a file the server
        lists without an MD5, a hash of its URI, size and version as the listing states them."""
        file = self._file(self._strip_protocol(path))
        if file.digest:
            return file.digest.lower()
        return hashlib.sha256(f"{file.uri}\0{file.version}".encode()).hexdigest()

    def checksum(self, path: str) -> int:
        """``ukey`` as the integer fsspec's caches compare: from the MD5 where XNAT has one."""
        return int(self.ukey(path)[:16], 16)

    def invalidate_cache(self, path: str | None = None) -> None:
        """Listings expire after ``ttl`` seconds, as in the mount."""

    # -- bytes ---------------------------------------------------------------------------------

    def cat_file(self, path: str, start: int | None = None, end: int | None = None,
                 **kwargs: Any) -> bytes:
        path = self._strip_protocol(path)
        file = self._file(path)
        size = file.size or 0
        lo = 0 if start is None else (max(size + start, 0) if start < 0 else min(start, size))
        hi = size if end is None else (max(size + end, 0) if end < 0 else min(end, size))
        if lo >= hi:
            return b""
        archive = self.stack.archive
        handle = archive.open(file)
        try:
            with _errors(path):
                return archive.read(handle, lo, hi)
        finally:
            handle.close()

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None,
              autocommit: bool = True, cache_options: dict[str, Any] | None = None,
              **kwargs: Any) -> XnatFile:
        if mode != "rb":
            raise _read_only(path)
        path = self._strip_protocol(path)
        return XnatFile(self, path, self._file(path), block_size=block_size,
                        autocommit=autocommit, cache_options=cache_options, **kwargs)

    # -- downloads -------------------------------------------------------------------------

    def get(self, rpath: str | list[str], lpath: str | list[str], recursive: bool = False,
            callback: Callback = DEFAULT_CALLBACK, maxdepth: int | None = None,
            **kwargs: Any) -> None:
        """fsspec's ``get`` (same destination rules), done by materialize's engine: files in
        parallel, each verified (size, and MD5 where the server has one) before it appears
        under its name, and a rerun continues where an interrupted one stopped. The BIDS
        layout, whose paths the engine does not know, is copied file by file through the
        reader (fsspec's own ``get``)."""
        if self._options.layout != "xnat":
            super().get(rpath, lpath, recursive=recursive, callback=callback,
                        maxdepth=maxdepth, **kwargs)
            return
        single = isinstance(rpath, str) and isinstance(lpath, str) and not has_magic(rpath) \
            and maxdepth is None
        if single:
            assert isinstance(rpath, str) and isinstance(lpath, str)
            root = self._strip_protocol(rpath)
            node = self._lookup(root)
            if node.is_dir and not recursive:
                return
            local = make_path_posix(lpath)
            into = trailing_sep(lpath) or os.path.isdir(local)
            if node.is_dir:
                dest = f"{local.rstrip('/')}/{root.rsplit('/', 1)[-1]}" \
                    if into and root and not trailing_sep(rpath) else local
                os.makedirs(dest, exist_ok=True)
                cut = len(root) + 1 if root else 0
                _materialize(self.stack, (root,), dest, lambda p: p[cut:], callback)
            else:
                dest = f"{local.rstrip('/')}/{root.rsplit('/', 1)[-1]}" if into else local
                name = os.path.basename(dest)
                _materialize(self.stack, (root,), os.path.dirname(dest) or ".",
                             lambda p: name, callback)
            return
        pairs = self._pairs(rpath, lpath, recursive, maxdepth, **kwargs)
        files: dict[str, str] = {}
        for remote, local in pairs:
            if self.isdir(remote):
                os.makedirs(local, exist_ok=True)
            else:
                files[remote] = os.path.abspath(local)
        if len(set(files.values())) < len(files):
            raise ValueError("several remote files would be written to one local path; "
                             "give the destinations as a list, or copy folders whole")
        if files:
            top = os.path.commonpath([os.path.dirname(p) for p in files.values()])
            _materialize(self.stack, tuple(sorted(files)), top,
                         lambda p: os.path.relpath(files[p], top), callback)

    def _pairs(self, rpath: str | list[str], lpath: str | list[str], recursive: bool,
               maxdepth: int | None, **kwargs: Any) -> list[tuple[str, str]]:
        """(remote, local) pairs exactly as fsspec's own ``get`` names them."""
        if isinstance(lpath, list) and isinstance(rpath, list):
            return list(zip(self._strip_protocol(rpath), lpath, strict=True))
        source_is_str = isinstance(rpath, str)
        rpaths = self.expand_path(rpath, recursive=recursive, maxdepth=maxdepth, **kwargs)
        if source_is_str and (not recursive or maxdepth is not None):
            rpaths = [p for p in rpaths if not (trailing_sep(p) or self.isdir(p))]
        if not rpaths:
            return []
        if isinstance(lpath, str):
            lpath = make_path_posix(lpath)
        dest_is_dir = isinstance(lpath, str) and (trailing_sep(lpath) or os.path.isdir(lpath))
        exists = source_is_str and (
            (has_magic(rpath) and len(rpaths) == 1)
            or (not has_magic(rpath) and dest_is_dir and not trailing_sep(rpath)))
        lpaths = other_paths(rpaths, lpath, exists=exists, flatten=not source_is_str)
        return list(zip(rpaths, lpaths, strict=True))

    def get_file(self, rpath: str, lpath: str, callback: Callback = DEFAULT_CALLBACK,
                 outfile: Any = None, **kwargs: Any) -> None:
        if outfile is not None or self._options.layout != "xnat":  # a copy through the reader
            super().get_file(rpath, lpath, callback=callback, outfile=outfile, **kwargs)
            return
        self.get([self._strip_protocol(rpath)], [lpath], callback=callback)

    # -- read-only -------------------------------------------------------------------------

    def _refuse(self, path: object = "", *args: Any, **kwargs: Any) -> None:
        raise _read_only(path)

    mkdir = makedirs = rmdir = rm = rm_file = _rm = cp_file = copy = mv = put = put_file = \
        pipe = pipe_file = touch = _refuse


class XnatFile(AbstractBufferedFile):
    """A seekable read-only file whose reads go through the reader (chunk cache, read-ahead).
    By default no second buffer sits in front of it (``cache_type="none"``): the reader's
    own memory of recent chunks already serves small reads."""

    def __init__(self, fs: XnatFileSystem, path: str, file: RemoteFile, **kwargs: Any) -> None:
        kwargs.setdefault("cache_type", "none")
        kwargs.pop("size", None)  # reopened after pickling: the listing knows it
        self._archive = fs.stack.archive
        self._handle = self._archive.open(file)
        super().__init__(fs, path, "rb", size=file.size, **kwargs)

    def _fetch_range(self, start: int, end: int) -> bytes:
        with _errors(self.path):
            return self._archive.read(self._handle, start, min(end, self.size))

    def close(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None and not self.closed:
            handle.close()
        super().close()


def _materialize(stack: _Stack, paths: tuple[str, ...], root: str,
                 place: Callable[[str], str], callback: Callback) -> None:
    """Run materialize's engine on tree ``paths``, writing each file at ``root/place(tree
    path)``; the one call into ``xnatfs.materialize``. Raises OSError naming the failures."""
    from xnatfs.materialize.engine import Engine, Options, Source
    from xnatfs.materialize.output import Output, Target
    from xnatfs.materialize.report import Report, Result
    from xnatfs.materialize.selection import Selection

    class Placed(Output):
        def target(self, tree_path: str) -> Target:
            return super().target(place(tree_path))

    class Counted(Report):
        def finished(self, result: Result) -> None:
            super().finished(result)
            callback.relative_update(1)

    with _errors(paths[0] if len(paths) == 1 else ""):
        output = Placed(root)
        report = Counted(output.root, progress=False, interval=0)
        Engine(stack.tree, Source(stack.archive), output, report,
               Options(records=False)).run(Selection(paths))
        summary = report.summary()
    if not summary.ok:
        failures = summary.failures
        first = "; ".join(f"{f['path']}: {f['reason']}" for f in failures[:3])
        more = f" (and {len(failures) - 3} more)" if len(failures) > 3 else ""
        raise OSError(errno.EIO, f"{len(failures) or 'some'} of {summary.selected} files "
                                 f"failed: {first}{more}")
