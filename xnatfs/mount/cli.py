"""``xnatfs mount``, ``xnatfs umount`` and ``xnatfs demo``: their arguments, and the commands
that check them and hand over to the mount.

``mount`` behaves like sshfs: everything the user can get wrong (mount point, /dev/fuse,
libfuse, credentials, a project name) is checked first and told in one line; then the process
forks (``daemon``) and the command returns once the mount answers (``-f`` stays in the
foreground, logging to stderr). ``host`` holds the checks of the machine, ``run`` builds and
serves the mount, ``demo`` the demo's server. FUSE, threads and the emulator are imported
inside the commands, so ``xnatfs --help`` works where libfuse is missing.
"""

from __future__ import annotations

import argparse
import difflib
import os
import subprocess
import sys

from xnatfs.cli.options import add_connection_options, make_client, open_client, server_url
from xnatfs.cli.units import parse_size, positive_float
from xnatfs.errors import ConnectError, NotFound, TLSError, UsageError, XnatfsError
from xnatfs.mount import host, serving
from xnatfs.xnat.client import XnatClient


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mount", help="mount an XNAT server as a read-only file system",
        description="Mount XNAT read-only: /PROJECT/SUBJECT/SESSION/scans/ID-TYPE/resources/"
                    "LABEL/files/... Files are fetched in chunks when read and kept in a disk "
                    "cache. Returns once the mount is live; unmount with 'xnatfs umount'.")
    add_connection_options(p)
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing, empty directory")
    _add_mount_options(p)
    p.add_argument("--project", action="append", metavar="P",
                   help="show only this project (repeatable)")
    p.set_defaults(run=run)

    u = sub.add_parser("umount", help="unmount an xnatfs mount",
                       description="Unmount (fusermount3 -u); the mount's process then exits. "
                                   "A dead mount (its process killed) is detached lazily.")
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
                   help="chunk cache folder, which also keeps the last listings for use while "
                        "the server is away (default: the user cache folder, xnatfs/chunks)")
    p.add_argument("--cache-size", type=parse_size, default=parse_size("10G"), metavar="SIZE",
                   help="cache size limit, e.g. 500M, 20G (default 10G); 5%% of the disk is "
                        "always left free")
    p.add_argument("--ttl", type=positive_float, default=60.0, metavar="SECONDS",
                   help="how long listings are trusted before XNAT is asked again (default 60)")
    p.add_argument("--timeout", type=positive_float, default=20.0, metavar="SECONDS",
                   help="the longest any request or file operation waits on the server "
                        "(plus at most a second of retries) before EIO (default 20)")
    p.add_argument("-f", "--foreground", action="store_true",
                   help="stay in the foreground, logging to stderr; Ctrl-C unmounts")
    p.add_argument("--log-file", metavar="FILE",
                   help="where a background mount logs its warnings and errors (default: one "
                        "file per mount point in the user log folder, rotated; the mount "
                        "says which)")
    p.add_argument("--bids", action="store_true",
                   help="show each project as a BIDS dataset, of what the server already holds "
                        "as NIfTI with JSON sidecars (nothing converted; see xnatfs bids)")
    p.add_argument("--allow-non-empty", action="store_true",
                   help="mount over a folder that has files (they stay hidden until unmounted)")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTION",
                   help="FUSE mount option, e.g. -o allow_other (repeatable, comma lists too)")


# -- commands ------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from xnatfs.mount.run import serve

    url = server_url(args)
    mountpoint = _prepare(args)
    options = host.fuse_options(args.options)
    host.check_fuse()
    # --timeout bounds every request of the mount, listings included: no FUSE call waits longer
    timeouts = {"read_timeout": args.timeout, "listing_timeout": args.timeout}
    try:
        client = open_client(args, url, **timeouts)  # bad credentials end here
    except ConnectError as exc:
        client = _offline(args, url, exc, timeouts)
    else:
        if args.project:
            check_projects(client, args.project)
    _prepare_log(args, mountpoint)
    where = "" if args.foreground else f" (log: {args.log_file})"
    return serve(args, mountpoint, options, lambda: client,
                 lambda _: f"xnatfs: mounted {url} at {mountpoint}{where}")


def run_demo(args: argparse.Namespace) -> int:
    from xnatfs.mount.demo import demo_banner, demo_client
    from xnatfs.mount.run import serve

    os.makedirs(args.mountpoint, exist_ok=True)
    mountpoint = _prepare(args)
    options = host.fuse_options(args.options)
    host.check_fuse()
    _prepare_log(args, mountpoint)
    where = "" if args.foreground else f"\nLog: {args.log_file}"
    return serve(args, mountpoint, options, lambda: demo_client(args.timeout),
                 lambda client: demo_banner(client, args.mountpoint) + where)


def run_umount(args: argparse.Namespace) -> int:
    mountpoint = os.path.realpath(args.mountpoint)
    if not host.is_mounted(mountpoint):
        raise UsageError(f"nothing is mounted at {mountpoint}")
    lazy = args.lazy or host.is_dead(mountpoint)  # nothing left to flush: just detach it
    tool = host.fusermount()
    if tool:
        cmd = [tool, "-u", *(["-z"] if lazy else []), mountpoint]
    else:
        cmd = ["umount", *(["-l"] if lazy else []), mountpoint]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        why = (done.stderr.strip().splitlines() or ["failed"])[-1]
        hint = "" if lazy else " (still in use? close it, or use -z)"
        raise XnatfsError(f"cannot unmount {mountpoint}: {why}{hint}")
    if not lazy and not serving.wait_gone(mountpoint):
        print(f"xnatfs: {mountpoint} is unmounted; its process is still storing its cache "
              "and will end on its own", file=sys.stderr)
    return 0


def _prepare(args: argparse.Namespace) -> str:
    """Check the mount point, and make every path absolute now: the daemon leaves the
    caller's working folder before it opens them."""
    mountpoint = host.check_mountpoint(args.mountpoint, allow_non_empty=args.allow_non_empty)
    if args.cache_dir:
        args.cache_dir = os.path.abspath(os.path.expanduser(args.cache_dir))
    if args.log_file:
        args.log_file = os.path.abspath(os.path.expanduser(args.log_file))
    return mountpoint


def _prepare_log(args: argparse.Namespace, mountpoint: str) -> None:
    """The log file a background mount (or --log-file) will write, checked writable now, once
    everything else has passed, so that a refused mount leaves no empty log behind."""
    from xnatfs.mount import logfile

    args.log_file_given = args.log_file is not None
    if args.log_file_given or not args.foreground:
        args.log_file = logfile.prepare(args.log_file or logfile.default_path(mountpoint))


def _offline(args: argparse.Namespace, url: str, exc: ConnectError,
             timeouts: dict[str, float]) -> XnatClient:
    """A server that cannot be reached, and a cache that has its listings: mount anyway, on
    the cache (the tree serves the last listings it kept, the reader the chunks it holds), and
    let the client log in when the server answers again. Otherwise the error stands."""
    from xnatfs.reader.chunkcache import ChunkCache, default_cache_dir
    from xnatfs.tree.stash import Stash

    if isinstance(exc, TLSError):
        raise exc
    client = make_client(args, url, **timeouts)
    directory = args.cache_dir or default_cache_dir()
    try:
        cache = ChunkCache(directory, args.cache_size)
    except OSError:
        raise exc from None
    try:
        known = Stash(cache, client.base_url, client.credentials.user).knows_server()
    finally:
        cache.close()
    if not known:
        client.close()
        raise exc
    print(f"xnatfs: offline: {exc}; serving the cache in {directory}", file=sys.stderr)
    return client


def check_projects(client: XnatClient, wanted: list[str]) -> None:
    """Refuse a --project the server does not show this user: a typo would otherwise mount an
    empty folder and look like missing data."""
    ids = sorted(row["ID"] for row in client.listing("/data/projects"))
    for project in wanted:
        if project in ids:
            continue
        if not ids:
            raise NotFound(f"no project {project} on {client.base_url}: this user sees none")
        lower = {i.lower(): i for i in ids}
        close = difflib.get_close_matches(project.lower(), list(lower), n=1, cutoff=0.6)
        guess = "did you mean " + lower[close[0]] + "? " if close else ""
        more = f" and {len(ids) - 10} more" if len(ids) > 10 else ""
        hint = f"{guess}projects: {', '.join(ids[:10])}{more}"
        raise NotFound(f"no project {project} on {client.base_url} ({hint})")
