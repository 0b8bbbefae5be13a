"""A large read cut in two and done by two threads at once, while that is faster here.

A virtio-blk read that the page cache holds is one copy, page cache to guest RAM, by the
CPU that asks for it. A second thread reading the back part of the read copies it at the
same time on another CPU: here one of the kernel's io_uring workers (`BackParts`,
uring.py), handed the read with IOSQE_ASYNC, so that no Python thread has to wake, take
the GIL and hand it back (in the box a Python helper thread started its part ~0.6 ms
after the caller and returned it ~0.3 ms after its copy ended). Whether that pays
depends on the machine: the worker starts late (a wake-up on the other CPU), and the
copy it takes over must be worth more than that. Under the box's TCG a 1 MiB copy costs
2.5-5 ms and a round trip to a worker ~0.3 ms, and the guest's sequential reads got
faster cut; on a host whose round trip (~80 us) is close to its 1 MiB copy (~100-250
us), cut reads gain little or nothing (bench/split_read.py, docs/performance.md).

So nothing is assumed: `SplitPolicy` does large reads in short runs of one way, times
them, keeps the times per byte of the last run of cut reads and of whole ones, and after
a run of each chooses the way whose median is lower, with one run in `PROBE_RUN_EVERY` of
the other (the host's load moves). Runs, because a worker that has idled starts slower than
one in use (timed one at a time among whole reads, cut reads looked slower in the box
than they are in a row); medians, because single reads in the box can take several
times the usual (an interrupt lands mid-copy). It also places the cut: the front's share
of the read moves by `SHARE_STEP` each cut read toward where both parts finish
together. Writes are not cut: a buffered write holds the file's inode lock, and two
parts would take turns. Where io_uring is refused (an old kernel, seccomp,
kernel.io_uring_disabled) reads stay whole.
"""

from __future__ import annotations

import logging
import mmap
import os
import time
from collections import deque

from pcivm.iovec import IoVec
from pcivm.uring import ReadRing

log = logging.getLogger(__name__)

# The smallest read asked about: below it a cut read has not been seen to pay anywhere.
SPLIT_READ_MIN = 512 << 10
# The least and the most of a cut read the caller's front part takes, and how far that
# share moves per cut read.
FRONT_SHARE_MIN = 0.125
FRONT_SHARE_MAX = 0.875
SHARE_STEP = 1 / 64
# Reads are done one way in runs of RUN (the first of a run is not timed: a helper that
# has been idle for a while starts slower than one in use); one run in PROBE_RUN_EVERY is
# of the way currently measured slower, to see if it still is.
RUN = 4
PROBE_RUN_EVERY = 16
# Times kept per way: its last run's. The way in use is compared with the other as the
# other last ran (its probe run): samples from older runs of a way, taken while the box
# was slower or faster, would outvote its fresh ones (in the box, after a stretch of
# slow reads, three such kept the faster way off for 64 reads at a time).
WINDOW = RUN - 1


class SplitPolicy:
    """Whether to cut a large read in two and where, from the reads themselves."""

    __slots__ = ("enabled", "front_share", "_per_byte", "_cutting", "_left", "_runs", "_cold")

    def __init__(self, enabled: bool | None = None):
        # One CPU: nothing to gain.
        self.enabled = len(os.sched_getaffinity(0)) > 1 if enabled is None else enabled
        self.front_share = 0.5
        # Seconds a byte of the last reads timed: whole ones, cut ones.
        self._per_byte: tuple[deque[float], deque[float]] = (
            deque(maxlen=WINDOW),
            deque(maxlen=WINDOW),
        )
        self._cutting = False  # the way of the current run
        self._left = 0  # reads left in it
        self._runs = 0
        self._cold = False  # the read asked about last is the first of its run

    def cut_at(self, nbytes: int, offset: int) -> int | None:
        """Where to cut a read of `nbytes` at file `offset` (bytes into it, at a page
        boundary of the file, so that the two threads copy different pages), or None to
        read it whole."""
        if not self.enabled or nbytes < SPLIT_READ_MIN:
            return None
        self._cold = not self._left
        if self._cold:
            self._cutting = self._next_run_cuts()
            self._left = RUN
        self._left -= 1
        return self.cut_point(nbytes, offset) if self._cutting else None

    def cut_point(self, nbytes: int, offset: int) -> int | None:
        """Where the cut goes when a read is cut: the front's share of it, moved back to a
        page boundary of the file; None if that leaves a part empty."""
        at = ((offset + int(nbytes * self.front_share)) & -mmap.PAGESIZE) - offset
        return at if 0 < at < nbytes else None

    def _next_run_cuts(self) -> bool:
        whole, cut = self._per_byte
        self._runs += 1
        if len(cut) < RUN - 1 or len(whole) < RUN - 1:
            return len(cut) <= len(whole)  # a run of each way before any choice
        probe = self._runs % PROBE_RUN_EVERY == 0
        return (_median(cut) < _median(whole)) != probe

    def record(self, was_cut: bool, seconds: float, nbytes: int) -> None:
        """The read last asked about (`cut_at`) was done whole (or cut) in `seconds`."""
        if not self._cold:
            self._per_byte[was_cut].append(seconds / nbytes)

    def front_done(self, back_still_running: bool) -> None:
        """The front part of a cut read is done: move the cut toward where both parts
        finish together (the back part, started late, still running: the front takes
        more next time)."""
        if back_still_running:
            self.front_share = min(FRONT_SHARE_MAX, self.front_share + SHARE_STEP)
        else:
            self.front_share = max(FRONT_SHARE_MIN, self.front_share - SHARE_STEP)


def _median(times: deque[float]) -> float:
    return sorted(times)[len(times) // 2]


class BackParts:
    """Back parts of cut reads, each read by one of the kernel's io_uring workers
    (`ReadRing`) while the caller reads the front. The ring is opened on first use; where
    io_uring is not to be had there is none, `start` says so, and the caller stops
    cutting reads."""

    __slots__ = ("_ring", "_started")

    def __init__(self):
        self._ring: ReadRing | None = None
        self._started = 0.0

    def start(self, fd: int, iov: IoVec, offset: int, flags: int) -> bool:
        """Start reading `iov` from `offset` (at most IOV_MAX ranges); False if there is no
        ring to do it."""
        try:
            if self._ring is None:
                self._ring = ReadRing()
            if self._ring.busy:  # a wait that failed: its read may still be running
                return False
            self._ring.start_readv(fd, iov.iovec_array(), iov.count, offset, flags, keep=iov)
            self._started = time.perf_counter()
        except OSError as error:  # RingUnavailable among them
            log.debug("large reads are not cut: %s", error)
            return False
        return True

    @property
    def running(self) -> bool:
        """The part started last is still being read."""
        return not self._ring.done

    def wait(self) -> int:
        """The bytes the part started last read, once it is done; raises its error.

        Called when the front part is done. The cut is placed so that both parts end
        together (`SplitPolicy.front_done`), so the back is mostly done or nearly so:
        the thread looks for its end, without sleeping, for as long as the back has
        taken so far (as long as the front took, less the back's late start); a back
        part that needs longer than that waits for something else, and is slept on."""
        return self._ring.wait(spin=time.perf_counter() - self._started)

    def close(self) -> None:
        if self._ring is not None and not self._ring.busy:
            self._ring.close()
            self._ring = None
