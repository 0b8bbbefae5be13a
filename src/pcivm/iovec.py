"""Scatter-gather transfers between a file and guest RAM, by host address.

An `IoVec` is a list of (host address, length) ranges that `GuestMemory.iovec` has
checked to lie inside guest RAM; its transfers are preadv2/pwritev2 given one iovec
array, built from those two lists in bulk. That is what QEMU and every other VMM hand the
kernel. `os.preadv` would want one memoryview per range instead, and a 1 MiB virtio-blk
read is 256 ranges: making those views (and the kernel call taking a buffer from each)
was the largest part of such a request's Python.

An `IoVec` holds a view of the whole RAM mapping: while one exists the mapping cannot be
unmapped (`GuestMemory.close` then only releases the pages), so a transfer still running
writes where the guest's RAM was, never into memory mapped there since.
"""

from __future__ import annotations

import ctypes
import errno
import os
from array import array

_libc = ctypes.CDLL(None, use_errno=True)


def _vector_call(name: str):
    call = getattr(_libc, name)
    call.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int]
    call.restype = ctypes.c_ssize_t
    return call


_preadv2 = _vector_call("preadv2")
_pwritev2 = _vector_call("pwritev2")

# The most ranges one call takes; a longer IoVec transfers in several (see `after`).
IOV_MAX = os.sysconf("SC_IOV_MAX")


class IoVec:
    """Checked ranges of guest RAM, by host address, in transfer order."""

    __slots__ = ("bases", "lengths", "nbytes", "_ram", "_origin", "_array")

    def __init__(self, bases: list[int], lengths: list[int], ram: memoryview, origin: int):
        # Only `GuestMemory.iovec` (which checks every range) and `IoVec` itself make one:
        # `ram` is a view of the whole mapping, `origin` its host address.
        self.bases = bases
        self.lengths = lengths
        self.nbytes = sum(lengths)
        self._ram = ram
        self._origin = origin
        self._array: array | None = None

    def __len__(self) -> int:
        return len(self.bases)

    def _derived(self, bases: list[int], lengths: list[int]) -> IoVec:
        return IoVec(bases, lengths, self._ram, self._origin)

    # -- the ranges as views (for copies in Python, and tests) --

    def view(self, index: int) -> memoryview:
        start = self.bases[index] - self._origin
        return self._ram[start : start + self.lengths[index]]

    def views(self) -> list[memoryview]:
        return [self.view(i) for i in range(len(self.bases))]

    # -- parts --

    def section(self, first: int, last: int) -> IoVec:
        """Ranges `first` up to (not including) `last`."""
        return self._derived(self.bases[first:last], self.lengths[first:last])

    def trimmed(self, skip: int, limit: int | None = None) -> IoVec:
        """The bytes from `skip` on, at most `limit` of them. Cut from both ends, so the
        cost is the number of ranges cut, not of ranges."""
        total = self.nbytes
        end = total if limit is None else min(total, skip + max(limit, 0))
        if skip == 0 and end == total:
            return self
        if skip >= end:
            return self._derived([], [])
        bases, lengths = self.bases, self.lengths
        first, last = 0, len(bases)
        while skip >= lengths[first]:
            skip -= lengths[first]
            first += 1
        cut = total - end  # bytes to drop from the back
        while cut and cut >= lengths[last - 1]:
            cut -= lengths[last - 1]
            last -= 1
        bases, lengths = bases[first:last], lengths[first:last]
        if cut:
            lengths[-1] -= cut
        if skip:
            bases[0] += skip
            lengths[0] -= skip
        return self._derived(bases, lengths)

    def after(self, done: int) -> IoVec:
        """What is left once the first `done` bytes have been transferred."""
        return self.trimmed(done)

    def aligned(self, alignment: int) -> bool:
        """Every range starts and ends on a multiple of `alignment` (O_DIRECT's rule)."""
        mask = alignment - 1
        return not any(b & mask for b in self.bases) and not any(n & mask for n in self.lengths)

    # -- transfers --

    def preadv(self, fd: int, offset: int, flags: int = 0) -> int:
        """One preadv2(2) into the ranges (the first IOV_MAX of them): the bytes read."""
        return self._call(_preadv2, fd, offset, flags)

    def pwritev(self, fd: int, offset: int, flags: int = 0) -> int:
        """One pwritev2(2) from the ranges (the first IOV_MAX of them): the bytes written."""
        return self._call(_pwritev2, fd, offset, flags)

    def _call(self, call, fd: int, offset: int, flags: int) -> int:
        vector = self._array
        if vector is None:
            # struct iovec { void *iov_base; size_t iov_len; }: two 64-bit words a range.
            vector = self._array = array("Q", bytes(16 * len(self.bases)))
            vector[0::2] = array("Q", self.bases)
            vector[1::2] = array("Q", self.lengths)
        address = vector.buffer_info()[0]
        count = min(len(self.bases), IOV_MAX)
        while True:
            # ctypes releases the GIL for the call, as os.preadv does.
            done = call(fd, address, count, offset, flags)
            if done >= 0:
                return done
            error = ctypes.get_errno()
            if error != errno.EINTR:
                raise OSError(error, os.strerror(error))
