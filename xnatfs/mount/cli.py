"""``xnatfs mount``, ``xnatfs umount`` and ``xnatfs demo``.

``mount`` behaves like sshfs: everything the user can get wrong (mount point, /dev/fuse,
libfuse, credentials) is checked first and told in one line; then the process forks, and the
command returns once the mount answers (``-f`` stays in the foreground, logging to stderr).
SIGINT and SIGTERM unmount cleanly (libfuse's own handlers end the loop, then it unmounts).
FUSE, threads and the emulator are imported inside the commands, so ``xnatfs --help`` works
where libfuse is missing.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from xnatfs.cli.options import add_connection_options, open_client, server_url
from xnatfs.cli.units import parse_size, positive_float
from xnatfs.errors import UsageError, XnatfsError
from xnatfs.xnat.client import XnatClient

log = logging.getLogger(__name__)

READ_AHEAD_KB = 8 << 10  # kernel readahead of the mount, where root may set it (default 128)
# Idle threads are never retired: see fs._keep_thread_state. (libfuse 3.14 also warns about
# its own default for max_idle_threads unless it is given.)
_THREADS = {"max_threads": 32, "max_idle_threads": 32}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # mallopt (malloc.h)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mount", help="mount an XNAT server as a read-only file system",
        description="Mount XNAT read-only: /PROJECT/SUBJECT/SESSION/scans/ID-TYPE/resources/"
                    "LABEL/files/... Files are fetched in chunks when read and kept in a disk "
                    "cache. Returns once the mount is live; unmount with 'xnatfs umount'.")
    add_connection_options(p)
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing directory")
    _add_mount_options(p)
    p.add_argument("--project", action="append", metavar="P",
                   help="show only this project (repeatable)")
    p.set_defaults(run=run)

    u = sub.add_parser("umount", help="unmount an xnatfs mount",
                       description="Unmount (fusermount3 -u); the mount's process then exits.")
    u.add_argument("mountpoint", metavar="MOUNTPOINT")
    u.add_argument("-z", "--lazy", action="store_true",
                   help="detach now even if busy (a dead or stuck mount)")
    u.set_defaults(run=run_umount)

    d = sub.add_parser("demo", help="mount a synthetic XNAT archive: try xnatfs without a server",
                       description="Start the bundled XNAT emulator on a synthetic project and "
                                   "mount it, all in one background process.")
    d.add_argument("mountpoint", nargs="?", default="xnat-demo", metavar="MOUNTPOINT",
                   help="where to mount (default ./xnat-demo, created if missing)")
    _add_mount_options(d)
    d.set_defaults(run=run_demo)


def _add_mount_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", metavar="DIR",
                   help="chunk cache folder (default: the user cache folder, xnatfs/chunks)")
    p.add_argument("--cache-size", type=parse_size, default=parse_size("10G"), metavar="SIZE",
                   help="cache size limit, e.g. 500M, 20G (default 10G); 5%% of the disk is "
                        "always left free")
    p.add_argument("--ttl", type=positive_float, default=60.0, metavar="SECONDS",
                   help="how long listings are trusted before XNAT is asked again (default 60)")
    p.add_argument("--timeout", type=positive_float, default=20.0, metavar="SECONDS",
                   help="a read waiting this long for data is retried, then fails with EIO "
                        "(default 20)")
    p.add_argument("-f", "--foreground", action="store_true",
                   help="stay in the foreground, logging to stderr; Ctrl-C unmounts")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTION",
                   help="FUSE mount option, e.g. -o allow_other (repeatable, comma lists too)")


# -- commands ------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    url = server_url(args)
    mountpoint = check_mountpoint(args.mountpoint)
    options = fuse_options(args.options)
    check_fuse()
    client = open_client(args, url, read_timeout=args.timeout)  # bad credentials end here
    return serve(args, mountpoint, options, lambda: client,
                 lambda _: f"xnatfs: mounted {url} at {mountpoint}")


def run_demo(args: argparse.Namespace) -> int:
    os.makedirs(args.mountpoint, exist_ok=True)
    mountpoint = check_mountpoint(args.mountpoint)
    options = fuse_options(args.options)
    check_fuse()
    return serve(args, mountpoint, options, lambda: _demo_client(args.timeout),
                 lambda client: _demo_banner(client, args.mountpoint))


def run_umount(args: argparse.Namespace) -> int:
    mountpoint = os.path.realpath(args.mountpoint)
    if not is_mounted(mountpoint):
        raise UsageError(f"nothing is mounted at {mountpoint}")
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool:
        cmd = [tool, "-u", *(["-z"] if args.lazy else []), mountpoint]
    else:
        cmd = ["umount", *(["-l"] if args.lazy else []), mountpoint]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        why = (done.stderr.strip().splitlines() or ["failed"])[-1]
        hint = "" if args.lazy else " (still in use? close it, or use -z)"
        raise XnatfsError(f"cannot unmount {mountpoint}: {why}{hint}")
    return 0


# -- checks --------------------------------------------------------------------------------


def check_mountpoint(path: str) -> str:
    """The mount point's real path, or a one-line reason why it cannot be used."""
    mountpoint = os.path.realpath(path)
    if is_mounted(mountpoint):
        try:
            os.stat(mountpoint)
        except OSError:
            raise XnatfsError(f"{mountpoint} holds a dead mount: xnatfs umount -z {path}") \
                from None
        raise XnatfsError(f"{mountpoint} is busy: something is mounted there already")
    if not os.path.exists(mountpoint):
        raise UsageError(f"mount point {mountpoint} does not exist (create it first)")
    if not os.path.isdir(mountpoint):
        raise UsageError(f"mount point {mountpoint} is not a directory")
    return mountpoint


def check_fuse() -> None:
    """/dev/fuse, libfuse and (unless root) fusermount3 are there."""
    if not os.path.exists("/dev/fuse"):
        raise XnatfsError("no /dev/fuse: load the fuse module (modprobe fuse); in a container, "
                          "run it with --device /dev/fuse --cap-add SYS_ADMIN")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise XnatfsError("no permission to open /dev/fuse")
    if os.geteuid() != 0 and not (shutil.which("fusermount3") or shutil.which("fusermount")):
        raise XnatfsError("fusermount3 not found: install fuse3 (e.g. apt install fuse3)")
    try:
        import xnatfs.mount.fs  # noqa: F401 - loads libfuse
    except (OSError, AttributeError) as exc:
        raise XnatfsError(f"libfuse not usable ({exc}): install fuse3 "
                          "(e.g. apt install fuse3)") from None


def fuse_options(values: list[str]) -> dict[str, Any]:
    """``-o a=b,c`` → {"a": "b", "c": True}; allow_other only where fuse.conf permits it."""
    options: dict[str, Any] = {}
    for value in values:
        for item in filter(None, value.split(",")):
            key, eq, val = item.partition("=")
            options[key] = val if eq else True
    if "allow_other" in options and os.geteuid() != 0 and not _user_allow_other():
        raise UsageError("-o allow_other needs 'user_allow_other' in /etc/fuse.conf")
    return options


def _user_allow_other() -> bool:
    try:
        with open("/etc/fuse.conf") as conf:
            return any(line.split("#")[0].strip() == "user_allow_other" for line in conf)
    except OSError:
        return False


def is_mounted(path: str) -> bool:
    """Whether ``path`` (a real path) is a mount point, dead FUSE mounts included."""
    try:
        with open("/proc/self/mountinfo") as info:
            points = [line.split()[4] for line in info]
    except OSError:
        return os.path.ismount(path)
    unescape = re.compile(r"\\([0-7]{3})")
    return any(unescape.sub(lambda m: chr(int(m[1], 8)), p) == path for p in points)


# -- serving -------------------------------------------------------------------------------


def serve(
    args: argparse.Namespace, mountpoint: str, options: dict[str, Any],
    connect: Callable[[], XnatClient], banner: Callable[[XnatClient], str],
) -> int:
    """Mount and serve until unmounted: here with -f, else in a forked child that reports
    back through a pipe once the mount answers (or why it failed)."""
    if args.foreground:
        client = connect()

        def ready() -> None:
            print(banner(client) + " (Ctrl-C to unmount)", file=sys.stderr, flush=True)

        return _mount(args, mountpoint, options, client, ready)
    sys.stdout.flush()
    sys.stderr.flush()
    rfd, wfd = os.pipe()
    if os.fork():
        os.close(wfd)
        with os.fdopen(rfd, "rb") as pipe:
            status, _, text = pipe.read().decode(errors="replace").partition("\t")
        if status == "ok":
            print(text, flush=True)
            return 0
        if status:
            print(f"xnatfs: {text}", file=sys.stderr)
            return int(status)
        print("xnatfs: the mount failed (run with -f to see why)", file=sys.stderr)
        return 1
    os.close(rfd)
    os._exit(_child(args, mountpoint, options, connect, banner, wfd))


def _child(
    args: argparse.Namespace, mountpoint: str, options: dict[str, Any],
    connect: Callable[[], XnatClient], banner: Callable[[XnatClient], str], wfd: int,
) -> int:
    """The mount's own process: detached from the terminal once the mount is live, so that
    libfuse's own complaints still reach the user while it starts."""
    os.setsid()
    os.chdir("/")
    logging.getLogger().handlers.clear()
    logging.getLogger().addHandler(logging.NullHandler())

    def report(text: str) -> None:
        os.write(wfd, text.encode())
        os.close(wfd)

    try:
        client = connect()

        def ready() -> None:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            report("ok\t" + banner(client))

        return _mount(args, mountpoint, options, client, ready)
    except XnatfsError as exc:
        report(f"{exc.exit_code}\t{exc}")
        return exc.exit_code
    except BaseException as exc:
        report(f"1\tunexpected failure: {exc!r}")
        return 1


def _mount(
    args: argparse.Namespace, mountpoint: str, options: dict[str, Any], client: XnatClient,
    ready: Callable[[], None],
) -> int:
    """Run the FUSE loop until unmounted (or SIGINT/SIGTERM)."""
    from xnatfs.mount.fs import XnatFS
    from xnatfs.mount.libfuse import mfusepy
    from xnatfs.reader.chunkcache import ChunkCache
    from xnatfs.reader.fetcher import Fetcher
    from xnatfs.tree.model import Tree

    _keep_buffers()
    try:
        cache = ChunkCache(args.cache_dir, args.cache_size)
    except OSError as exc:
        raise XnatfsError(f"cannot use the cache folder {exc.filename or args.cache_dir}: "
                          f"{exc.strerror or exc}") from None
    fetcher = Fetcher(client, cache, cache.chunk_size)
    tree = Tree(client, ttl=args.ttl, projects=getattr(args, "project", None))
    before = os.stat(mountpoint).st_dev
    live = threading.Event()

    def watch() -> None:
        if _wait_live(mountpoint, before):
            live.set()
            ready()

    fs = XnatFS(tree, fetcher,
                on_init=lambda: threading.Thread(target=watch, daemon=True).start())
    settings: dict[str, Any] = {
        "foreground": True, "ro": True, "default_permissions": True, "subtype": "xnatfs",
        "fsname": "xnatfs:" + client.base_url.replace(",", "%2C"),
        "entry_timeout": args.ttl, "attr_timeout": args.ttl, "negative_timeout": 5,
        **_THREADS, **options,
    }
    try:
        mfusepy.FUSE(fs, mountpoint, raw_fi=True, **settings)
    except RuntimeError:
        # libfuse returns non-zero after a signal ended the loop; before that, it is a failure
        # it has already described on stderr.
        if not live.is_set():
            raise XnatfsError(f"could not mount at {mountpoint} (see above)") from None
    finally:
        fetcher.close()
        cache.close()
        client.close()
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


# -- demo ----------------------------------------------------------------------------------


def _demo_client(timeout: float) -> XnatClient:
    """Start the emulator on a synthetic archive, in this process, and log in to it."""
    from xnat_emulator import Emulator, EmulatorConfig, synthetic_archive
    from xnat_emulator.demo import DEMO_PASSWORD, DEMO_SPEC, DEMO_USER
    from xnatfs.xnat.credentials import Credentials

    emulator = Emulator(synthetic_archive(DEMO_SPEC), EmulatorConfig(),
                        users={DEMO_USER: DEMO_PASSWORD})
    emulator.start()
    client = XnatClient(emulator.url, Credentials(DEMO_USER, DEMO_PASSWORD, source="demo"),
                        read_timeout=timeout)
    client.login()
    return client


def _demo_banner(client: XnatClient, where: str) -> str:
    from xnat_emulator.demo import DEMO_PASSWORD, DEMO_USER

    project = sorted(p["ID"] for p in client.listing("/data/projects"))[0]
    m = where if where.startswith("/") else "./" + where
    return "\n".join([
        f"xnatfs demo: a synthetic XNAT archive is mounted at {m}",
        f"(served by the bundled emulator at {client.base_url}, user {DEMO_USER}/{DEMO_PASSWORD})",
        "",
        "Try:",
        f"  ls {m}/{project}",
        f"  ls -lR {m}/{project} | head -40",
        f"  find {m} -name '*.nii*' -exec md5sum {{}} +",
        f"  cp -r {m}/{project}/<subject>/<session> /tmp/session",
        f"  du -sh {m}/{project}",
        "",
        f"When done:  xnatfs umount {m}",
    ])
