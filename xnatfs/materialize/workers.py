"""Worker threads for a run: daemon threads taking tasks from one priority queue.

Downloads and listings each get their own ``Workers``. Lower priorities run first (chunks of a
file already started before new files), so a run finishes what it began before it opens more.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections import Counter
from collections.abc import Callable

Task = Callable[[], None]
LAST = 1 << 30  # the priority of the end-of-work markers: after every real task


class Workers:
    """Daemon threads running tasks from a priority queue; the first fatal error stops them
    (remaining tasks are dropped) and is raised by ``wait``. Daemon threads let Ctrl-C end the
    process at once: every file on disk is either complete or a valid prefix."""

    def __init__(self, count: int, name: str,
                 on_fatal: Callable[[BaseException], None] | None = None) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, Task]] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._waiting: Counter[int] = Counter()  # queued tasks by priority
        self._busy = 0
        self._idle = threading.Condition()
        self._on_fatal = on_fatal
        self.fatal: BaseException | None = None
        self._count = count
        for i in range(count):
            threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True).start()

    def submit(self, priority: int, task: Task) -> None:
        with self._idle:
            self._busy += 1
            self._waiting[priority] += 1
        self._queue.put((priority, next(self._seq), task))

    def waiting(self, priority: int) -> int:
        """How many tasks of this priority are queued, not yet started."""
        with self._idle:
            return self._waiting[priority]

    def stop(self, exc: BaseException) -> None:
        with self._idle:
            first = self.fatal is None
            if first:
                self.fatal = exc
            self._idle.notify_all()
        if first and self._on_fatal is not None:
            self._on_fatal(exc)

    def wait(self) -> None:
        """Until every submitted task is done (or dropped after a fatal error)."""
        with self._idle:
            while self._busy:
                self._idle.wait()
        if self.fatal is not None:
            raise self.fatal

    def close(self) -> None:
        """Let the threads end once the queue is empty."""
        for _ in range(self._count):
            self._queue.put((LAST, next(self._seq), _END))

    def _loop(self) -> None:
        while True:
            priority, _, task = self._queue.get()
            if task is _END:
                return
            with self._idle:
                self._waiting[priority] -= 1
            try:
                if self.fatal is None:
                    task()
            except BaseException as exc:  # a fatal error or a bug: stop the run
                self.stop(exc)
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()


def _END() -> None:
    """The task that ends a worker thread."""
