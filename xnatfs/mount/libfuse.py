"""mfusepy, bound to libfuse 3 whenever it is installed.

mfusepy takes libfuse 2 when both are present, but only libfuse 3 sends 1 MiB read requests
(libfuse 2 stops at 128 KiB): half the callbacks or fewer for the same bytes. Import mfusepy
from here, never directly, so the choice is made before the library loads. Importing this
raises OSError when no libfuse is installed.
"""

import os
from ctypes.util import find_library

if not (os.environ.get("FUSE_LIBRARY_PATH") or os.environ.get("FUSE_LIBRARY_NAME")) \
        and find_library("fuse3"):
    os.environ["FUSE_LIBRARY_NAME"] = "fuse3"

import mfusepy

__all__ = ["mfusepy"]
