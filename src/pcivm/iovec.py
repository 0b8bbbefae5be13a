"""Scatter-gather transfers between a file and guest RAM.

An `IoVec` is a list of ranges of guest RAM in transfer order, in one of two forms. A
few ranges (what a 4 KiB request has) are memoryviews, as the chain walk makes them
and as `os.preadv` takes them. Many ranges (a 1 MiB request is 256) are a `struct iovec`
array of host addresses, which `GuestMemory` makes having checked every range (a
virtqueue's table of them in bulk: `range_table`): their transfers are preadv2/pwritev2
given that array, which is what QEMU and every other VMM hand the kernel. Making 256
memoryviews (and the kernel call taking a buffer from each) was the largest part of
such a request's Python.

An `IoVec` of host addresses holds a view of the whole RAM mapping: while one exists the
mapping cannot be unmapped (`GuestMemory.close` then only releases the pages), so a
transfer still running writes where the guest's RAM was, never into memory mapped there
since. Views hold their part of the mapping the same way.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from array import array
from bisect import bisect_left
from itertools import accumulate

from pcivm import range_table

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
# A page's length, once per range of the longest array one call takes: compared with an
# array's lengths in one C loop (`IoVec.split`).
PAGE = 4096
_PAGE_LENGTHS = memoryview(array("Q", [PAGE]) * IOV_MAX)
# struct iovec { void *iov_base; size_t iov_len; } on a 64-bit host.
_RANGE = struct.Struct("<QQ")
RANGE_BYTES = _RANGE.size


class IoVec:
    """Checked ranges of guest RAM in transfer order: as views (a few ranges, the form
    os.preadv takes) or as a `struct iovec` array of host addresses (many, what
    preadv2 takes)."""

    __slots__ = (
        "nbytes",
        "count",
        "_views",
        "_lengths",
        "_vector",
        "_ram",
        "_origin",
        "_last_trim",
    )

    def __init__(self, lengths: list[int], nbytes: int, views: list[memoryview]):
        # Views are safe by construction (each reaches only what it views). `nbytes` is
        # sum(lengths), which every maker knows already; `count` is len(self), without
        # the Python-level call len() makes of __len__.
        self.nbytes = nbytes
        self.count = len(lengths)
        self._views: list[memoryview] | None = views
        self._lengths: list[int] | None = lengths
        self._vector: bytes | None = None
        self._ram: memoryview | None = None
        self._origin = 0
        self._last_trim: tuple[int, int, IoVec] | None = None

    @classmethod
    def of_vector(cls, vector: bytes, nbytes: int, ram: memoryview, origin: int) -> IoVec:
        """Ranges as a `struct iovec` array (16 bytes a range: host address, length) that
        only `GuestMemory` makes, having checked every range. `ram` is a view of the whole
        mapping and `origin` its host address: views are cut from it, and it keeps the
        mapping alive."""
        iov = cls.__new__(cls)
        iov.nbytes = nbytes
        iov.count = len(vector) // RANGE_BYTES
        iov._views = iov._lengths = None
        iov._vector, iov._ram, iov._origin = vector, ram, origin
        iov._last_trim = None
        return iov

    @classmethod
    def over(cls, views: list[memoryview]) -> IoVec:
        """The ranges of some views: the VMM's own buffers (bounce buffers, zeros)."""
        lengths = [len(v) for v in views]
        return cls(lengths, sum(lengths), views)

    def __len__(self) -> int:
        return self.count

    @property
    def lengths(self) -> list[int]:
        """The length of each range."""
        if self._lengths is None:
            self._lengths = memoryview(self._vector).cast("Q")[1::2].tolist()
        return self._lengths

    @property
    def bases(self) -> list[int]:
        """The host address of each range."""
        if self._vector is not None:
            return memoryview(self._vector).cast("Q")[0::2].tolist()
        return [ctypes.addressof(ctypes.c_char.from_buffer(v)) for v in self._views]

    def iovec_array(self) -> bytes:
        """The ranges as a `struct iovec` array (what preadv2 and io_uring take). The
        addresses stay valid while this IoVec exists (it holds the mapping)."""
        if self._vector is not None:
            return self._vector
        return b"".join(map(_RANGE.pack, self.bases, self.lengths))

    # -- the ranges as views (for os.preadv, copies in Python, and tests) --

    def view(self, index: int) -> memoryview:
        if self._views is not None:
            return self._views[index]
        if not -self.count <= index < self.count:
            raise IndexError(f"range {index} of {self.count}")  # as a list of views would
        base, length = _RANGE.unpack_from(self._vector, RANGE_BYTES * (index % self.count))
        start = base - self._origin
        return self._ram[start : start + length]

    def views(self) -> list[memoryview]:
        if self._views is not None:
            return self._views
        return [self.view(i) for i in range(self.count)]

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
        asked = skip
        if self._views is None:
            # The part asked for last is kept: a queue hands out the same IoVec for a
            # table it has seen before (queue._RecentTables), and virtio-blk asks each
            # time for its data, all but the status byte. (A few views cost less made.)
            kept = self._last_trim
            if kept is not None and kept[0] == skip and kept[1] == end:
                return kept[2]
            words = memoryview(self._vector).cast("Q")
            lengths = words[1::2]  # a strided view: nothing is copied
        else:
            lengths = self._lengths
        first, last = 0, self.count
        nbytes = end - skip
        while skip >= lengths[first]:
            skip -= lengths[first]
            first += 1
        cut = total - end  # bytes to drop from the back
        while cut and cut >= lengths[last - 1]:
            cut -= lengths[last - 1]
            last -= 1
        if self._views is None:
            if not (skip or cut):
                vector = self._vector[RANGE_BYTES * first : RANGE_BYTES * last]
            else:
                part = words[2 * first : 2 * last].tolist()
                part[-1] -= cut
                part[0] += skip
                part[1] -= skip
                vector = array("Q", part).tobytes()
            made = IoVec.of_vector(vector, nbytes, self._ram, self._origin)
            self._last_trim = (asked, end, made)
            return made
        lengths = lengths[first:last]
        views = self._views[first:last]
        if cut:
            lengths[-1] -= cut
            views[-1] = views[-1][: len(views[-1]) - cut]
        if skip:
            lengths[0] -= skip
            views[0] = views[0][skip:]
        return IoVec(lengths, nbytes, views)

    def split(self, at: int) -> tuple[IoVec, IoVec]:
        """The first `at` bytes and the rest (0 < at < nbytes): the range holding byte
        `at` is cut in two. Finding it in an array of many ranges takes C-level steps
        (their running sum, a bisection), not a Python step per range."""
        if not 0 < at < self.nbytes:
            raise ValueError(f"no split at {at} of {self.nbytes} bytes")
        if self._vector is None:
            return self.trimmed(0, at), self.trimmed(at)
        words = memoryview(self._vector).cast("Q")
        # A read of whole pages (Linux's ranges) cut at a page: the ranges before the cut
        # and after it, as they are (a cut read pays this on its critical path; the
        # lengths compared as one memoryview, not summed as Python ints: 0.5 against
        # 2.2 us natively for 128 pages).
        k, inside_page = divmod(at, PAGE)
        if not inside_page and k < self.count and words[1 : 2 * k : 2] == _PAGE_LENGTHS[:k]:
            at_k = RANGE_BYTES * k
            return (
                IoVec.of_vector(self._vector[:at_k], at, self._ram, self._origin),
                IoVec.of_vector(self._vector[at_k:], self.nbytes - at, self._ram, self._origin),
            )
        ends = list(accumulate(words[1::2]))
        k = bisect_left(ends, at)  # the range that holds byte at - 1
        inside = at - (ends[k] - words[2 * k + 1])  # how far into range k the cut is
        head = _RANGE.pack(words[2 * k], inside)
        tail = (
            b""
            if inside == words[2 * k + 1]
            else _RANGE.pack(words[2 * k] + inside, words[2 * k + 1] - inside)
        )
        at_k, after_k = RANGE_BYTES * k, RANGE_BYTES * (k + 1)
        front = self._vector[:at_k] + head
        back = tail + self._vector[after_k:]
        return (
            IoVec.of_vector(front, at, self._ram, self._origin),
            IoVec.of_vector(back, self.nbytes - at, self._ram, self._origin),
        )

    def after(self, done: int) -> IoVec:
        """What is left once the first `done` bytes have been transferred."""
        return self.trimmed(done)

    def aligned(self, alignment: int) -> bool:
        """Every range starts and ends on a multiple of `alignment` (O_DIRECT's rule)."""
        if self._vector is not None:
            return range_table.aligned(self._vector, alignment)
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
        if views is None and self.count > FEW_RANGES:
            count = min(self.count, IOV_MAX)
            while True:
                # The bytes object is passed as the address of its contents; ctypes
                # releases the GIL for the call, as os.preadv does.
                done = with_vector(fd, self._vector, count, offset, flags)
                if done >= 0:
                    return done
                error = ctypes.get_errno()
                if error != errno.EINTR:
                    raise OSError(error, os.strerror(error))
        if views is None:
            views = self.views()
        elif len(views) > IOV_MAX:
            views = views[:IOV_MAX]
        return with_views(fd, views, offset, flags)
