"""Scatter-gather transfers between a file and guest RAM.

An `IoVec` is a list of ranges of guest RAM in transfer order, in one of two forms. A
few ranges (what a 4 KiB request has) are memoryviews, as the chain walk makes them
and as `os.preadv` takes them. Many ranges (a 1 MiB request is 256) are host addresses
that `GuestMemory.iovec` checked and translated in bulk: their transfers are
preadv2/pwritev2 given one iovec array built from the two lists, which is what QEMU and
every other VMM hand the kernel. Making 256 memoryviews (and the kernel call taking a
buffer from each) was the largest part of such a request's Python.

An `IoVec` of host addresses holds a view of the whole RAM mapping: while one exists the
mapping cannot be unmapped (`GuestMemory.close` then only releases the pages), so a
transfer still running writes where the guest's RAM was, never into memory mapped there
since. Views hold their part of the mapping the same way.
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
# Up to this many ranges, views and os.preadv cost less than building the iovec array and
# the ctypes call (measured natively: one 4 KiB range 0.9 us against 1.9-2.5 us); from
# there on the array wins (256 ranges: 56 us of views against 5 us).
FEW_RANGES = 8


class IoVec:
    """Checked ranges of guest RAM in transfer order: as views (a few ranges, the form
    os.preadv takes) or as host addresses (many, for one iovec array)."""

    __slots__ = ("lengths", "nbytes", "_views", "_bases", "_ram", "_origin", "_array")

    def __init__(
        self,
        lengths: list[int],
        nbytes: int,
        views: list[memoryview] | None = None,
        bases: list[int] | None = None,
        ram: memoryview | None = None,
        origin: int = 0,
    ):
        # Views are safe by construction (each reaches only what it views); host
        # addresses only `GuestMemory.iovec` gives, having checked every range. With
        # those, `ram` is a view of the whole mapping and `origin` its host address:
        # views are cut from it, and it keeps the mapping alive. `nbytes` is
        # sum(lengths), which every maker knows already.
        self.lengths = lengths
        self.nbytes = nbytes
        self._views = views
        self._bases = bases
        self._ram = ram
        self._origin = origin
        self._array: array | None = None

    @classmethod
    def over(cls, views: list[memoryview]) -> IoVec:
        """The ranges of some views: the VMM's own buffers (bounce buffers, zeros)."""
        lengths = [len(v) for v in views]
        return cls(lengths, sum(lengths), views)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def bases(self) -> list[int]:
        """The host address of each range."""
        if self._bases is None:
            self._bases = [ctypes.addressof(ctypes.c_char.from_buffer(v)) for v in self._views]
        return self._bases

    # -- the ranges as views (for os.preadv, copies in Python, and tests) --

    def view(self, index: int) -> memoryview:
        if self._views is not None:
            return self._views[index]
        start = self._bases[index] - self._origin
        return self._ram[start : start + self.lengths[index]]

    def views(self) -> list[memoryview]:
        if self._views is not None:
            return self._views
        return [self.view(i) for i in range(len(self.lengths))]

    # -- parts --

    def trimmed(self, skip: int, limit: int | None = None) -> IoVec:
        """The ranges from `skip` bytes in, at most `limit` bytes of them. Cut from both
        ends, so the cost is the number of ranges cut, not of ranges (a 1 MiB read is
        256 data buffers between a header and a status byte)."""
        total = self.nbytes
        end = total if limit is None else min(total, skip + max(limit, 0))
        if skip == 0 and end == total:
            return self
        if skip >= end:
            return IoVec([], 0, [])
        lengths = self.lengths
        first, last = 0, len(lengths)
        nbytes = end - skip
        while skip >= lengths[first]:
            skip -= lengths[first]
            first += 1
        cut = total - end  # bytes to drop from the back
        while cut and cut >= lengths[last - 1]:
            cut -= lengths[last - 1]
            last -= 1
        lengths = lengths[first:last]
        if cut:
            lengths[-1] -= cut
        if skip:
            lengths[0] -= skip
        if self._views is not None:
            views = self._views[first:last]
            if cut:
                views[-1] = views[-1][: len(views[-1]) - cut]
            if skip:
                views[0] = views[0][skip:]
            return IoVec(lengths, nbytes, views)
        bases = self._bases[first:last]
        if skip:
            bases[0] += skip
        return IoVec(lengths, nbytes, None, bases, self._ram, self._origin)

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
        return self._transfer(os.preadv, _preadv2, fd, offset, flags)

    def pwritev(self, fd: int, offset: int, flags: int = 0) -> int:
        """One pwritev2(2) from the ranges (the first IOV_MAX of them): the bytes written."""
        return self._transfer(os.pwritev, _pwritev2, fd, offset, flags)

    def _transfer(self, with_views, with_vector, fd: int, offset: int, flags: int) -> int:
        views = self._views
        if views is None:
            if len(self.lengths) > FEW_RANGES:
                return self._call(with_vector, fd, offset, flags)
            views = self.views()
        elif len(views) > IOV_MAX:
            views = views[:IOV_MAX]
        return with_views(fd, views, offset, flags)

    def _call(self, call, fd: int, offset: int, flags: int) -> int:
        vector = self._array
        if vector is None:
            # struct iovec { void *iov_base; size_t iov_len; }: two 64-bit words a range.
            vector = self._array = array("Q", bytes(16 * len(self.lengths)))
            vector[0::2] = array("Q", self.bases)
            vector[1::2] = array("Q", self.lengths)
        address = vector.buffer_info()[0]
        count = min(len(self.lengths), IOV_MAX)
        while True:
            # ctypes releases the GIL for the call, as os.preadv does.
            done = call(fd, address, count, offset, flags)
            if done >= 0:
                return done
            error = ctypes.get_errno()
            if error != errno.EINTR:
                raise OSError(error, os.strerror(error))
