"""mfusepy, bound to libfuse 3 whenever it is installed.

mfusepy takes libfuse 2 when both are present, but only libfuse 3 sends 1 MiB read requests
(libfuse 2 stops at 128 KiB): half the callbacks or fewer for the same bytes. Import mfusepy
from here, never directly, so the choice is made before the library loads. Importing this
raises OSError when no libfuse is installed.
"""

import ctypes
import os
from ctypes.util import find_library
from typing import Any

if not (os.environ.get("FUSE_LIBRARY_PATH") or os.environ.get("FUSE_LIBRARY_NAME")) \
        and find_library("fuse3"):
    os.environ["FUSE_LIBRARY_NAME"] = "fuse3"

import mfusepy

__all__ = ["FUSE", "Slice", "mfusepy"]


class Slice:
    """``data[start:end]`` without the copy: what ``XnatFS.read`` hands to ``FUSE.read``."""

    __slots__ = ("data", "end", "start")

    def __init__(self, data: bytes, start: int, end: int) -> None:
        self.data, self.start, self.end = data, start, end


FUSE_READDIR_PLUS = 1  # readdir's flags: the kernel asked for entries with attributes
FUSE_FILL_DIR_PLUS = 2  # the filler's flags: this entry comes with all of its attributes


class FUSE(mfusepy.FUSE):
    """mfusepy's FUSE with two shortcuts of libfuse 3 that mfusepy leaves out.

    * ``read`` copies a ``Slice`` of a chunk straight into libfuse's buffer. mfusepy copies
      whatever ``read`` returns; slicing a 1 MiB read out of a 4 MiB chunk first cost one more
      copy of every byte read (issue 8's CPU per GiB).
    * READDIRPLUS: when the kernel asks for it and the operations have ``readdir_plus``,
      entries go out with their attributes, so the kernel needs no LOOKUP for each of them.
      mfusepy only ever fills names and modes.
    """

    def readdir_fuse_3(self, path: bytes | None, buf: object, filler: Any, offset: int,
                       fip: Any, flags: int) -> int:
        """Entries from ``offset`` on, each with its position as the next offset: libfuse
        sends READDIRPLUS entries with their node only when offsets are given (with offset
        0 everywhere, as mfusepy fills, it keeps the attributes and drops the node)."""
        plus = getattr(self.operations, "readdir_plus", None)
        if plus is None:
            return int(super().readdir_fuse_3(path, buf, filler, offset, fip, flags))
        fh = fip.contents.fh  # as mfusepy's readdir: the handle's number, raw_fi or not
        entries = plus(None if path is None else path.decode(self.encoding), fh)
        for position in range(offset, len(entries)):
            name, attrs, full = entries[position]
            st = mfusepy.c_stat()
            mfusepy.set_st_attrs(st, attrs, use_ns=self.use_ns)
            fill = FUSE_FILL_DIR_PLUS if full and flags & FUSE_READDIR_PLUS else 0
            if filler(buf, name.encode(self.encoding), st, position + 1, fill) != 0:
                break
        return 0

    def read(self, path: bytes | None, buf: object, size: int, offset: int,
             fip: object) -> int:
        fh = fip.contents  # type: ignore[attr-defined]
        ret = self.operations.read(None if path is None else path.decode(self.encoding), size,
                                   offset, fh if self.raw_fi else fh.fh)
        if isinstance(ret, Slice):
            length = ret.end - ret.start
            assert length <= size, f"read {length} bytes, more than the {size} asked for"
            if length:  # a bytes object's own buffer, read in place (c_char_p does not copy)
                base = ctypes.cast(ctypes.c_char_p(ret.data), ctypes.c_void_p).value or 0
                ctypes.memmove(buf, base + ret.start, length)
            return length
        if not ret:
            return 0
        assert len(ret) <= size, f"read {len(ret)} bytes, more than the {size} asked for"
        ctypes.memmove(buf, ret, len(ret))
        return len(ret)
