"""A minimal io_uring: vectored reads that a kernel worker does while the caller goes on.

What it is for: the back part of a large virtio-blk read cut in two (virtio/split_read.py).
`IOSQE_ASYNC` sends the read straight to one of the kernel's io-wq workers, a kernel
thread of this process, so the copy starts as soon as that thread is woken, and needs no
Python thread to wake, take the GIL, and hand it back when done: in the box (TCG) a
Python helper thread started its part 0.6 ms after the caller and returned it 0.3 ms
after its copy ended, each a large share of a 1 MiB read (docs/performance.md).

One read at a time, submitted and waited for by one thread (the device's kick thread,
under the device's lock): a two-entry ring, no submission queue polling, no registered
buffers. x86-64 only, as the VMM is: the rings' heads and tails are plain 32-bit stores
and loads through memoryviews (one store each, as virtio's ring fields are written),
ordered as the kernel's acquire/release pairs need on x86's TSO.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
import time

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
# io_uring_enter through a syscall(2) of its own, its argument types declared: ctypes
# then passes the ints as they are (0.4 us less a call natively than wrapping each in a
# c_long), and a cut read makes one or two of these calls on its critical path.
_io_uring_enter = _libc["syscall"]  # a function object apart from `_libc.syscall`
_io_uring_enter.restype = ctypes.c_long
_io_uring_enter.argtypes = (ctypes.c_long,) * 5 + (ctypes.c_void_p, ctypes.c_long)

SYS_IO_URING_SETUP = 425
SYS_IO_URING_ENTER = 426
IORING_OFF_SQ_RING = 0
IORING_OFF_CQ_RING = 0x8000000
IORING_OFF_SQES = 0x10000000
IORING_FEAT_SINGLE_MMAP = 1 << 0
IORING_ENTER_GETEVENTS = 1 << 0
IORING_OP_READV = 1
IOSQE_ASYNC = 1 << 4

# struct io_uring_params: sq_entries, cq_entries, flags, sq_thread_cpu, sq_thread_idle,
# features, wq_fd, resv[3] (10 x u32), then struct io_sqring_offsets (head, tail,
# ring_mask, ring_entries, flags, dropped, array, resv1: u32; resv2: u64) and struct
# io_cqring_offsets (head, tail, ring_mask, ring_entries, overflow, cqes, flags, resv1:
# u32; resv2: u64).
_PARAMS = struct.Struct("<10I 7I I Q 8I Q")
# struct io_uring_sqe: opcode, flags, ioprio, fd, off, addr, len, rw_flags, user_data,
# buf_index, personality, splice_fd_in, addr3, pad.
_SQE = struct.Struct("<BBHiQQIIQHHiQQ")
# struct io_uring_cqe: user_data, res, flags.
_CQE = struct.Struct("<QiI")
ENTRIES = 2
# Looks at the completion ring between two readings of the clock while spinning.
SPIN_LOOKS = 32


class RingUnavailable(OSError):
    """This kernel (or its policy: seccomp, kernel.io_uring_disabled) gives no io_uring."""


class ReadRing:
    """One io_uring for vectored reads handed to the kernel's workers, one at a time."""

    def __init__(self):
        params = ctypes.create_string_buffer(_PARAMS.size)
        fd = _libc.syscall(
            ctypes.c_long(SYS_IO_URING_SETUP), ctypes.c_long(ENTRIES), params
        )  # fmt: skip
        if fd < 0:
            error = ctypes.get_errno()
            raise RingUnavailable(error, f"io_uring_setup: {os.strerror(error)}")
        self._fd = fd
        self._maps: list[mmap.mmap] = []
        self._words: list[memoryview] = []  # the rings as 32-bit words
        try:
            self._map_rings(_PARAMS.unpack(params.raw))
        except BaseException:
            self.close()
            raise
        self._busy = False
        self._held = None  # what the kernel reads or writes until the completion

    def _map_rings(self, p: tuple) -> None:
        sq_entries, cq_entries, features = p[0], p[1], p[5]
        _, sq_tail, sq_mask, _, _, _, sq_array = p[10:17]
        cq_head, cq_tail, cq_mask, _, _, cqes = p[19:25]
        sq_bytes = sq_array + 4 * sq_entries
        cq_bytes = cqes + _CQE.size * cq_entries
        if features & IORING_FEAT_SINGLE_MMAP:
            sq = cq = self._map(max(sq_bytes, cq_bytes), IORING_OFF_SQ_RING)
        else:
            sq = self._map(sq_bytes, IORING_OFF_SQ_RING)
            cq = self._map(cq_bytes, IORING_OFF_CQ_RING)
        self._sqes = self._map(_SQE.size * sq_entries, IORING_OFF_SQES)
        self._cq = cq  # the completions are read from it as bytes
        self._sq_words = memoryview(sq).cast("I")
        self._cq_words = memoryview(cq).cast("I")
        self._words += (self._sq_words, self._cq_words)
        # Offsets in 32-bit words (the kernel gives them in bytes, 4-aligned).
        self._sq_tail, self._sq_array = sq_tail // 4, sq_array // 4
        self._cq_head, self._cq_tail = cq_head // 4, cq_tail // 4
        self._cqes_at = cqes
        self._sq_mask = self._sq_words[sq_mask // 4]
        self._cq_mask = self._cq_words[cq_mask // 4]
        # The submission tail, which only this object moves.
        self._sq_next = self._sq_words[self._sq_tail]

    def _map(self, length: int, offset: int) -> mmap.mmap:
        try:
            ring = mmap.mmap(
                self._fd, length, mmap.MAP_SHARED | mmap.MAP_POPULATE,
                mmap.PROT_READ | mmap.PROT_WRITE, offset=offset,
            )  # fmt: skip
        except OSError as error:
            raise RingUnavailable(error.errno, f"mapping the io_uring: {error.strerror}") from None
        self._maps.append(ring)
        return ring

    def start_readv(
        self, fd: int, vector: bytes, count: int, offset: int, flags: int, keep: object
    ) -> None:
        """Hand `preadv2(fd, vector, count, offset, flags)` to a kernel worker. `vector` is
        a `struct iovec` array of `count` ranges; `keep` is what keeps the memory they name
        mapped: both are held until the read has completed."""
        if self._busy:
            raise RuntimeError("io_uring: one read at a time")
        address = ctypes.cast(vector, ctypes.c_void_p).value
        index = self._sq_next & self._sq_mask
        _SQE.pack_into(
            self._sqes, _SQE.size * index,
            IORING_OP_READV, IOSQE_ASYNC, 0, fd, offset, address, count, flags, 0, 0, 0, 0, 0, 0,
        )  # fmt: skip
        self._sq_words[self._sq_array + index] = index
        self._sq_next = (self._sq_next + 1) & 0xFFFFFFFF
        self._sq_words[self._sq_tail] = self._sq_next  # the release: x86 TSO
        self._held = (vector, keep)
        self._busy = True
        while True:
            submitted = self._enter(1, 0, 0)
            if submitted == 1:
                return
            error = ctypes.get_errno()
            if submitted >= 0 or error not in (errno.EINTR, errno.EAGAIN, errno.EBUSY):
                # Not taken: nothing will write anywhere; the caller reads it itself.
                self._sq_next = (self._sq_next - 1) & 0xFFFFFFFF
                self._sq_words[self._sq_tail] = self._sq_next
                self._busy, self._held = False, None
                raise OSError(error or errno.EIO, f"io_uring_enter: {os.strerror(error)}")

    @property
    def busy(self) -> bool:
        """A read was started and not yet waited for."""
        return self._busy

    @property
    def done(self) -> bool:
        """Whether the read started last has completed (it is waited for all the same)."""
        return self._cq_words[self._cq_tail] != self._cq_words[self._cq_head]

    def wait(self, spin: float = 0.0) -> int:
        """The result of the read started last, once the kernel has finished it: the
        bytes read, or OSError. Waits however long that takes: until then the kernel may
        still write into the read's buffers. `spin`: seconds to keep looking at the
        completion ring before sleeping in the kernel (holding the GIL)."""
        if not self._busy:
            raise RuntimeError("io_uring: no read to wait for")
        if spin > 0:
            self._spin(spin)
        while not self.done:
            if self._enter(0, 1, IORING_ENTER_GETEVENTS) < 0:
                error = ctypes.get_errno()
                if error not in (errno.EINTR, errno.EAGAIN, errno.EBUSY):
                    raise OSError(error, f"io_uring_enter: {os.strerror(error)}")
        head = self._cq_words[self._cq_head]
        _, result, _ = _CQE.unpack_from(
            self._cq, self._cqes_at + _CQE.size * (head & self._cq_mask)
        )  # fmt: skip
        self._cq_words[self._cq_head] = (head + 1) & 0xFFFFFFFF
        self._busy, self._held = False, None
        if result < 0:
            raise OSError(-result, os.strerror(-result))
        return result

    def _spin(self, seconds: float) -> None:
        """Until the read completes or `seconds` have passed. A wake-up from the kernel
        costs ~10 us natively but 0.3-0.5 ms in the nested box: a read that ends soon is
        cheaper looked for than slept on."""
        deadline = time.perf_counter() + seconds
        looks = 0
        while not self.done:
            looks += 1
            # The clock only now and then: in the box it is an emulated HPET, ~2.6 us a read.
            if looks % SPIN_LOOKS == 0 and time.perf_counter() >= deadline:
                return

    def _enter(self, to_submit: int, min_complete: int, flags: int) -> int:
        return _io_uring_enter(
            SYS_IO_URING_ENTER, self._fd, to_submit, min_complete, flags, None, 0
        )

    def close(self) -> None:
        """Unmap and close (no read may be running: `wait` first)."""
        for words in self._words:
            words.release()
        self._words = []
        for ring in self._maps:
            ring.close()
        self._maps = []
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
