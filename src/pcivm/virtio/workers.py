"""A fixed set of worker threads that take jobs from one queue, and can share one large
job among themselves (`run_split`).

Devices hand blocking work (a virtio-blk request's preadv/pwritev) to these threads so
that the thread that took the guest's kick is free for the next one. It does what
`concurrent.futures.ThreadPoolExecutor` would, minus the Future, its condition variable
and the bookkeeping per job: a job is one `SimpleQueue.put` (C code) and a wake-up. In
the box, where every line of Python runs under TCG, that difference is a noticeable part
of a 4 KiB request's cost.

A large request can be split: its parts go to idle workers while the thread that split it
does the first, so that a 1 MiB read from the page cache is copied by several CPUs at
once instead of one (the guest waits for the whole request either way).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

log = logging.getLogger(__name__)

_STOP = object()


class _Share:
    """One part of a split job: run by whichever comes first, an idle worker or the
    thread that split the job (`claim` decides)."""

    __slots__ = ("_fn", "_part", "_claimed", "_done", "result", "error")

    def __init__(self, fn: Callable[[Any], Any], part: Any):
        self._fn, self._part = fn, part
        self._claimed = threading.Lock()
        self._done = threading.Lock()
        self._done.acquire()  # released when the part has run
        self.result: Any = None
        self.error: BaseException | None = None

    def claim(self) -> bool:
        return self._claimed.acquire(blocking=False)

    def run(self) -> None:
        try:
            self.result = self._fn(self._part)
        except BaseException as error:  # handed to the thread that split the job
            self.error = error
        finally:
            self._done.release()

    def wait(self) -> None:
        self._done.acquire()
        self._done.release()


class WorkerThreads:
    """`count` daemon threads calling `handler(job)` for every submitted job, in
    submission order per thread and concurrently across threads. Threads start on first
    use, one more each time a job arrives while every started one is busy."""

    def __init__(self, count: int, name: str, handler: Callable[[Any], None]):
        if count < 1:
            raise ValueError("at least one worker thread")
        self._count = count
        self._name = name
        self._handler = handler
        self._jobs: SimpleQueue = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, job: Any) -> None:
        with self._lock:
            if self._closed:
                if type(job) is _Share:
                    return  # its owner runs it: nothing new starts once shut down
                raise RuntimeError(f"{self._name}: submit after shutdown")
            if self._idle == 0 and len(self._threads) < self._count:
                thread = threading.Thread(
                    target=self._serve, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                self._idle += 1
                thread.start()
            self._idle -= 1
        self._jobs.put(job)

    def run_split(self, fn: Callable[[Any], Any], parts: list[Any]) -> list[Any]:
        """`fn(part)` for every part, the results in order; the first exception is
        raised after every part has finished. Called from a worker: the parts after the
        first are offered to the other workers, and this thread runs the first and then
        any that no worker has taken yet, so it never waits on a queue (no deadlock
        when every worker is busy)."""
        shares = [_Share(fn, part) for part in parts[1:]]
        for share in shares:
            self.submit(share)
        first: _Share = _Share(fn, parts[0])
        first.claim()
        first.run()
        for share in shares:
            if share.claim():
                share.run()
            else:
                share.wait()
        for share in (first, *shares):
            if share.error is not None:
                raise share.error
        return [share.result for share in (first, *shares)]

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not _STOP:
            try:
                if type(job) is _Share:
                    if job.claim():
                        job.run()
                else:
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
