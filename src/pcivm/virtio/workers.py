"""A fixed set of worker threads that take jobs from one queue.

Devices hand blocking work (a virtio-blk request's preadv/pwritev) to these threads so
that the thread that took the guest's kick is free for the next one. It does what
`concurrent.futures.ThreadPoolExecutor` would, minus the Future, its condition variable
and the bookkeeping per job: a job is one `SimpleQueue.put` (C code) and a wake-up. In
the box, where every line of Python runs under TCG, that difference is a noticeable part
of a 4 KiB request's cost.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

from pcivm.thread_names import name_os_thread

log = logging.getLogger(__name__)

_STOP = object()


class WorkerThreads:
    """`count` daemon threads calling `handler(job)` for every submitted job, in
    submission order per thread and concurrently across threads. Threads start on first
    use, one more each time a job arrives while every started one is busy."""

    def __init__(self, count: int, name: str, handler: Callable[[Any], None], role: str = "io"):
        if count < 1:
            raise ValueError("at least one worker thread")
        self._count = count
        self._name = name
        self._handler = handler
        self._role = role  # the first word of the threads' kernel names
        self._jobs: SimpleQueue = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, job: Any) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self._name}: submit after shutdown")
            if self._idle == 0 and len(self._threads) < self._count:
                thread = threading.Thread(
                    target=self._serve,
                    name=f"{self._name}-{self._role}-{len(self._threads)}",
                    daemon=True,
                )
                self._threads.append(thread)
                self._idle += 1
                thread.start()
            self._idle -= 1
        self._jobs.put(job)

    def _serve(self) -> None:
        name_os_thread(f"{self._role} {self._name}")
        while (job := self._jobs.get()) is not _STOP:
            try:
                self._handler(job)
            except Exception:  # a bug in one job must not take the thread with it
                log.exception("%s: a job failed", self._name)
            with self._lock:
                self._idle += 1

    def shutdown(self) -> None:
        """Run what was submitted, then stop every thread."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._jobs.put(_STOP)
        for thread in threads:
            thread.join()
