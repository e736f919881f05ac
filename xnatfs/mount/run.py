"""Running one mount: the archive (``xnatfs.archive``) behind XnatFS, the process tuning they
need (malloc, the kernel's readahead), and the FUSE loop itself.

Everything here runs in the process that serves the mount (the daemon's child, or the
command itself with -f); the command line has already checked what it could.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from xnatfs.archive import Archive
from xnatfs.errors import XnatfsError
from xnatfs.mount import serving
from xnatfs.mount.daemon import daemonize
from xnatfs.mount.logfile import log_to
from xnatfs.xnat.client import GRACE, XnatClient

log = logging.getLogger(__name__)

# Kernel readahead of the mount, where root may set it (default 128 KiB, which caps FUSE reads
# at 128 KiB): one chunk. Our own read-ahead keeps the link busy; each kernel read in flight
# holds a 1 MiB libfuse buffer and a FUSE thread wanting the GIL. Against 8 MiB: the same
# speed over the WAN profile (1.00x), on loopback 660-700 MB/s either way, peak RSS 120-125
# MiB instead of 136-151 MiB.
READ_AHEAD_KB = 4 << 10
# Idle threads are never retired: see fs._keep_thread_state. (libfuse 3.14 also warns about
# its own default for max_idle_threads unless it is given.)
_THREADS = {"max_threads": 32, "max_idle_threads": 32}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # mallopt (malloc.h)


def serve(
    args: argparse.Namespace, mountpoint: str, options: dict[str, Any],
    connect: Callable[[], XnatClient], banner: Callable[[XnatClient], str],
) -> int:
    """Mount and serve until unmounted: here with -f (logging to stderr, and to --log-file
    if given), else in a daemon logging to ``args.log_file``."""
    if args.foreground:
        if args.log_file_given:
            log_to(args.log_file, replace=False)
        client = connect()

        def ready() -> None:
            print(banner(client) + " (Ctrl-C to unmount)", file=sys.stderr, flush=True)

        return mount(args, mountpoint, options, client, ready)

    def main(report: Callable[[str], None]) -> int:
        client = connect()
        text = banner(client)
        return mount(args, mountpoint, options, client, lambda: report(text))

    return daemonize(main, args.log_file)


def mount(
    args: argparse.Namespace, mountpoint: str, options: dict[str, Any], client: XnatClient,
    ready: Callable[[], None],
) -> int:
    """Run the FUSE loop until unmounted (or SIGINT/SIGTERM)."""
    from xnatfs.mount.fs import XnatFS
    from xnatfs.mount.libfuse import FUSE

    _keep_buffers()
    archive = Archive.open_for(
        client, cache_dir=args.cache_dir, cache_size=args.cache_size, ttl=args.ttl,
        projects=getattr(args, "project", None), wait=args.timeout,
        deadline=args.timeout + GRACE, stash=True,
        layout="bids" if getattr(args, "bids", False) else "xnat")
    before = os.stat(mountpoint).st_dev
    live = threading.Event()

    def watch() -> None:
        if _wait_live(mountpoint, before):
            live.set()
            ready()

    fs = XnatFS(archive,
                on_init=lambda: threading.Thread(target=watch, daemon=True).start())
    settings: dict[str, Any] = {
        "foreground": True, "ro": True, "default_permissions": True, "subtype": "xnatfs",
        "fsname": "xnatfs:" + client.base_url.replace(",", "%2C"),
        "entry_timeout": args.ttl, "attr_timeout": args.ttl, "negative_timeout": 5,
        **_THREADS, **options,
    }
    log.info("mounting %s at %s", client.base_url, mountpoint)
    serving.hold(mountpoint)  # until this process ends: xnatfs umount waits for that
    try:
        FUSE(fs, mountpoint, raw_fi=True, **settings)
    except RuntimeError:
        # libfuse returns non-zero after a signal ended the loop; before that, it is a failure
        # it has already described on stderr.
        if not live.is_set():
            raise XnatfsError(f"could not mount at {mountpoint} (see above)") from None
    finally:
        archive.close()
        client.close()
    log.info("unmounted %s", mountpoint)
    return 0


def _keep_buffers() -> None:
    """Keep freed MiB-sized buffers in the heap, in few arenas. glibc maps every block over
    128 KiB afresh and unmaps it when freed, so each read's buffers cost page faults and page
    zeroing (measured here as a quarter of the mount's CPU during a cold read); and it gives
    each thread its own arena, each keeping freed memory: two arenas and a 64 MiB trim
    threshold hold the peak resident memory of a 1 GiB cold read near 330 MiB (580 with one
    arena per thread, 420 with glibc's defaults)."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's maximum
        libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20)
        libc.mallopt(_M_ARENA_MAX, 2)
    except (OSError, AttributeError):
        log.debug("not glibc: malloc left as is")


def _wait_live(mountpoint: str, before: int, timeout: float = 30.0) -> bool:
    """Wait until the mount point shows the new file system, then widen the kernel's
    readahead for it (root only; the default 128 KiB caps FUSE reads at 128 KiB)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            dev = os.stat(mountpoint).st_dev
        except OSError:
            dev = before
        if dev != before:
            try:
                with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb",
                          "w") as knob:
                    knob.write(str(READ_AHEAD_KB))
            except OSError as exc:
                log.debug("kernel readahead left as is: %s", exc)
            return True
        time.sleep(0.01)
    return False
