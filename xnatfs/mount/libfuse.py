"""mfusepy, bound to libfuse 3 whenever it is installed.

mfusepy takes libfuse 2 when both are present, but only libfuse 3 sends 1 MiB read requests
(libfuse 2 stops at 128 KiB): half the callbacks or fewer for the same bytes. Import mfusepy
from here, never directly, so the choice is made before the library loads. Importing this
raises OSError when no libfuse is installed.
"""

import ctypes
import os
from ctypes.util import find_library

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


class FUSE(mfusepy.FUSE):
    """mfusepy's FUSE, whose read copies a ``Slice`` of a chunk straight into libfuse's buffer.

    mfusepy copies whatever ``read`` returns into the buffer; slicing a 1 MiB read out of a
    4 MiB chunk first cost one more copy of every byte read (issue 8's CPU per GiB).
    """

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
