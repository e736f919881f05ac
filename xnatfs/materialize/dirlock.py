"""One run at a time in an output folder, except the shards of one job array.

Two runs writing the same files would rename each other's part files away. A run takes
``DIR/.xnatfs/lock`` with ``flock``: exclusively, or shared when it is a shard ``K/N`` (shards
of one split write disjoint files, so a job array still runs in parallel), plus an exclusive
lock of its own shard so the same shard never runs twice at once. A run that has to wait
says so once and waits; the kernel drops the locks when a run ends, however it ends.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable

from xnatfs.errors import write_error
from xnatfs.materialize.manifest import meta_dir
from xnatfs.materialize.selection import Shard


class DirLock:
    def __init__(self, root: str, shard: Shard, say: Callable[[str], None]) -> None:
        self.root = root
        self._shard = shard
        self._say = say
        self._fds: list[int] = []
        self._said = False

    def acquire(self) -> None:
        shared = self._shard.count > 1
        self._take("lock", fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        if shared:
            self._take(f"lock-{self._shard.index}-of-{self._shard.count}", fcntl.LOCK_EX)

    def _take(self, name: str, mode: int) -> None:
        path = os.path.join(meta_dir(self.root), name)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise write_error(exc, path) from None
        self._fds.append(fd)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if not self._said:
                self._said = True
                self._say(f"another xnatfs run is writing into {self.root}; "
                          "waiting for it to finish")
            fcntl.flock(fd, mode)

    def release(self) -> None:
        while self._fds:
            os.close(self._fds.pop())
