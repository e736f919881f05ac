"""Running the mount as a daemon, the way sshfs does: the command forks, the child mounts and
serves, and the parent returns only once the child reports, through a pipe, that the mount
answers, or why it could not start. The user's shell thus gets the real outcome and exit code,
never a "mounted" that is not true.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from xnatfs.errors import XnatfsError
from xnatfs.mount.logfile import log_to

Ready = Callable[[str], None]


def daemonize(main: Callable[[Ready], int], log_file: str) -> int:
    """Run ``main(ready)`` in a detached child; ``ready(text)`` prints ``text`` here, in the
    parent, which then exits 0. Failures before that come back as the parent's one line."""
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
        print(f"xnatfs: the mount failed (see {log_file}, or run with -f)", file=sys.stderr)
        return 1
    os.close(rfd)
    os._exit(_child(main, log_file, wfd))


def _child(main: Callable[[Ready], int], log_file: str, wfd: int) -> int:
    """The mount's own process: its stderr stays the user's while the mount starts, so that
    libfuse's own complaints still reach them; then it goes to the log file."""
    reported = False

    def report(text: str) -> None:
        nonlocal reported
        if reported:  # a failure after the mount went live: only the log can tell it
            logging.getLogger(__name__).error("%s", text.partition("\t")[2])
            return
        reported = True
        try:
            os.write(wfd, text.encode())
            os.close(wfd)
        except OSError:  # the command was interrupted while it waited: nobody to tell
            pass

    def ready(text: str) -> None:
        null = os.open(os.devnull, os.O_RDWR)
        log = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        for fd, target in ((0, null), (1, null), (2, log)):
            os.dup2(target, fd)
        os.close(null)
        os.close(log)
        report("ok\t" + text)

    try:
        os.setsid()
        os.chdir("/")  # not to keep the caller's folder busy; every path is absolute by now
        os.umask(0o077)  # what it creates (rotated logs, the cache) is the user's alone
        log_to(log_file, replace=True)
        root = logging.getLogger()  # a file has room for notices a terminal would not want
        root.setLevel(min(root.getEffectiveLevel(), logging.INFO))
        return main(ready)
    except XnatfsError as exc:
        report(f"{exc.exit_code}\t{exc}")
        return exc.exit_code
    except BaseException as exc:
        report(f"1\tunexpected failure: {exc!r}")
        return 1
