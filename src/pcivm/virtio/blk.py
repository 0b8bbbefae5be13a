"""virtio-blk (virtio 1.2, 5.2) over a raw image file.

`BlockBackend` opens the image the way QEMU's file driver does: read-write or read-only,
cache=none (O_DIRECT), writeback (the page cache) or writethrough (O_DSYNC), and takes
QEMU's OFD byte-range locks so that two VMMs (pcivm or QEMU) cannot both write an image.

`VirtioBlk` parses each request from the chain as a byte stream (header, data, status
byte as the last writable byte: the device assumes no particular framing, 2.7.4), checks
it, and moves the data with preadv2/pwritev2 straight between the image and guest RAM
(an `IoVec`: checked host addresses, one iovec array). Every read or write is first
tried with RWF_NOWAIT on the thread that took the kick: what the page cache holds is
done at once, under the device lock, with no other thread involved (but for a large read
cut in two where that is measured faster: split_read.py). What would wait for the disk
(and flush, discard, write zeroes) runs on a small set of worker threads (workers.py):
preadv2/pwritev2 release the GIL, so several requests are in flight at once and complete
in whatever order the host finishes them; the used ring is written under the device
lock. The thread that takes a kick (ioevents.py) does the first of those itself.
`workers=0` runs each request inline on the notifying thread (deterministic, for tests).

Measured natively on a 2-CPU host, the driver in a second process sharing guest RAM:
four cached 4 KiB reads in flight cost 9 us of VMM user CPU per request done at once
against 18 us through the pool (and a fifth of the system time: no thread wake-ups);
sixteen cached 64 KiB reads in flight are served 1.25 times as fast. With O_DIRECT
every read goes to the pool, which keeps the notify path free of blocking I/O.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import mmap
import os
import stat
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pcivm.errors import PcivmError
from pcivm.iovec import IOV_MAX, IoVec
from pcivm.memory import GuestMemory
from pcivm.virtio.constants import (
    VIRTIO_BLK_F_BLK_SIZE,
    VIRTIO_BLK_F_DISCARD,
    VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_TOPOLOGY,
    VIRTIO_BLK_F_WRITE_ZEROES,
    VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_SECTOR_SIZE,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
    VIRTIO_ID_BLOCK,
)
from pcivm.virtio.device import VirtioDevice, bit
from pcivm.virtio.queue import DescriptorChain, SplitQueue, VirtqueueError
from pcivm.virtio.split_read import SPLIT_READ_MIN, BackParts, SplitPolicy
from pcivm.virtio.workers import WorkerThreads

log = logging.getLogger(__name__)

SECTOR = VIRTIO_BLK_SECTOR_SIZE
CACHE_MODES = ("none", "writeback", "writethrough")


class BlockImageError(PcivmError):
    """A disk image that cannot be opened or locked."""


# --- the backend ---------------------------------------------------------------------------

# linux/falloc.h
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.fallocate.restype = ctypes.c_int


_libc.fstatfs.argtypes = [ctypes.c_int, ctypes.c_char_p]
_libc.fstatfs.restype = ctypes.c_int
# Filesystems whose files are RAM (linux/magic.h): reading or writing one waits for no
# disk, but they refuse RWF_NOWAIT (EOPNOTSUPP), so their transfers are simply done.
TMPFS_MAGIC = 0x01021994
RAMFS_MAGIC = 0x858458F6
HUGETLBFS_MAGIC = 0x958458F6
RAM_FILESYSTEMS = (TMPFS_MAGIC, RAMFS_MAGIC, HUGETLBFS_MAGIC)


def filesystem_type(fd: int) -> int | None:
    """f_type of fstatfs(2) (the first field of struct statfs), None if it fails."""
    buffer = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on x86_64
    if _libc.fstatfs(fd, buffer) != 0:
        return None
    return struct.unpack_from("=l", buffer.raw)[0] & 0xFFFF_FFFF


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with its mode argument (os.posix_fallocate has none)."""
    if _libc.fallocate(fd, mode, offset, length) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


# QEMU's file-posix locking (block/file-posix.c): one byte per permission at 100 + bit
# taken by every opener holding it, one at 200 + bit by every opener that does not let
# others hold it. Shared (read) OFD locks on both; a conflict is tested with F_OFD_GETLK.
_LOCK_PERM_BASE = 100
_LOCK_SHARED_BASE = 200
BLK_PERM_CONSISTENT_READ = 0x01
BLK_PERM_WRITE = 0x02
BLK_PERM_WRITE_UNCHANGED = 0x04
BLK_PERM_RESIZE = 0x08
_PERM_NAMES = ("consistent read", "write", "write unchanged", "resize")
_FLOCK = struct.Struct("hhqqi4x")  # struct flock on Linux x86_64 (l_pid 0 for OFD locks)


def _zero_buffer(size: int) -> mmap.mmap:
    # Anonymous mappings are page aligned and zero: good for O_DIRECT.
    return mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


class BlockBackend:
    """A raw image file (or block device) open for the device."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        read_only: bool = False,
        cache: str = "writeback",
        locking: bool = True,
    ):
        if cache not in CACHE_MODES:
            raise BlockImageError(f"cache mode '{cache}' is not one of {', '.join(CACHE_MODES)}")
        self.path = os.fspath(path)
        self.read_only = read_only
        self.cache = cache
        self.direct = cache == "none"
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
        if self.direct:
            flags |= os.O_DIRECT
        if cache == "writethrough":
            flags |= os.O_DSYNC
        try:
            self.fd = os.open(self.path, flags)
        except OSError as error:
            raise BlockImageError(f"Could not open '{self.path}': {error.strerror}") from None
        try:
            st = os.fstat(self.fd)
            if stat.S_ISREG(st.st_mode):
                self.size = st.st_size
            elif stat.S_ISBLK(st.st_mode):
                self.size = os.lseek(self.fd, 0, os.SEEK_END)
            else:
                raise BlockImageError(f"'{self.path}' is not a regular file or block device")
            self.alignment = self._probe_alignment() if self.direct else 1
            if self.direct and self.size % self.alignment:
                raise BlockImageError(
                    f"'{self.path}': cache=none needs a size that is a multiple of "
                    f"{self.alignment} bytes"
                )
            if locking:
                self._lock()
        except BaseException:
            os.close(self.fd)
            raise
        self._rmw = threading.Lock()
        self.flushes = 0
        # RWF_NOWAIT first (try_preadv/try_pwritev): a read the page cache holds, or a
        # buffered write that need not wait, is done at once on the thread that found
        # it; only the rest goes to a worker thread. Not with O_DIRECT (the device is
        # waited for all the same) nor O_DSYNC (the write waits for the disk). An image
        # in RAM (tmpfs) never waits (unless swapped out): every transfer is done at once.
        self.in_ram = stat.S_ISREG(st.st_mode) and filesystem_type(self.fd) in RAM_FILESYSTEMS
        self._now_flags = 0 if self.in_ram else os.RWF_NOWAIT
        self._nowait_reads = not self.direct
        self._nowait_writes = not read_only and (cache == "writeback" or self.in_ram)
        # An attempt that would wait is wasted work (a raised EAGAIN, and on FUSE a round
        # trip for attributes): after one, the next `_nowait_skip` requests go straight
        # to the pool, twice as many after each further miss (up to NOWAIT_MAX_SKIP), none
        # once an attempt succeeds. An image read mostly from the disk is then asked
        # about once in 64 requests; one the page cache holds, every time.
        self._nowait_skip = 0
        self._nowait_backoff = 0
        # A large read done at once may be cut in two, a kernel worker reading the back
        # part while the caller reads the front (split_read.py).
        self.split_policy = SplitPolicy()
        self._back_parts = BackParts()

    # -- locking --

    def _lock(self) -> None:
        perm = BLK_PERM_CONSISTENT_READ | (0 if self.read_only else BLK_PERM_WRITE)
        # What QEMU's virtio-blk shares by default (share-rw=off): reads, not writes.
        shared = BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED
        for i in range(len(_PERM_NAMES)):
            if perm & (1 << i):
                self._setlk(_LOCK_PERM_BASE + i)
            if not shared & (1 << i):
                self._setlk(_LOCK_SHARED_BASE + i)
        for i, name in enumerate(_PERM_NAMES):
            if perm & (1 << i) and self._locked_elsewhere(_LOCK_SHARED_BASE + i):
                self._lock_failed(f'"{name}"')
            if not shared & (1 << i) and self._locked_elsewhere(_LOCK_PERM_BASE + i):
                self._lock_failed(f'shared "{name}"')

    def _lock_failed(self, what: str) -> None:
        raise BlockImageError(
            f"Failed to get {what} lock: is another process using the image [{self.path}]?"
        )

    def _setlk(self, byte: int) -> None:
        try:
            fcntl.fcntl(self.fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_RDLCK, 0, byte, 1, 0))
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EACCES):
                # Someone holds an exclusive lock on the byte: QEMU never does, a tool might.
                self._lock_failed("byte-range")
            raise BlockImageError(f"Failed to lock '{self.path}': {error.strerror}") from None

    def _locked_elsewhere(self, byte: int) -> bool:
        probe = _FLOCK.pack(fcntl.F_WRLCK, 0, byte, 1, 0)
        result = fcntl.fcntl(self.fd, fcntl.F_OFD_GETLK, probe)
        return _FLOCK.unpack(result)[0] != fcntl.F_UNLCK

    def _probe_alignment(self) -> int:
        """The smallest O_DIRECT read that works: 512 or 4096 (what QEMU probes too)."""
        buffer = _zero_buffer(mmap.PAGESIZE)
        try:
            for align in (512, 4096):
                try:
                    os.preadv(self.fd, [memoryview(buffer)[:align]], 0)
                    return align
                except OSError as error:
                    if error.errno != errno.EINVAL:
                        raise
            return mmap.PAGESIZE
        finally:
            buffer.close()

    # -- data --
    # Every transfer takes an `IoVec`: checked ranges of guest RAM, or (`IoVec.over`)
    # the VMM's own bounce buffers and zeros.

    def try_preadv(self, iov: IoVec, offset: int) -> int | None:
        """`preadv` if it can finish without waiting (the data is in the page cache);
        None when it would wait, and then nothing has been promised. A large one may be
        cut in two and done by two threads at once (split_read.py)."""
        if not self._nowait_reads:
            return None
        if (
            iov.nbytes < SPLIT_READ_MIN
            or not self.split_policy.enabled
            or self._nowait_skip
            or iov.count > IOV_MAX
        ):
            done, self._nowait_reads = self._try_now(IoVec.preadv, iov, offset)
            return done  # not a read the policy is asked about, nor timed for it
        at = self.split_policy.cut_at(iov.nbytes, offset)
        started = time.perf_counter()
        if at is None:
            done, self._nowait_reads = self._try_now(IoVec.preadv, iov, offset)
        else:
            done = self._read_cut(iov, offset, at)
        if done == iov.nbytes:
            self.split_policy.record(at is not None, time.perf_counter() - started, done)
        return done

    def _read_cut(self, iov: IoVec, offset: int, at: int) -> int | None:
        front, back = iov.split(at)
        if not self._back_parts.start(self.fd, back, offset + at, self._now_flags):
            self.split_policy.enabled = False  # no io_uring here: large reads stay whole
            done, self._nowait_reads = self._try_now(IoVec.preadv, iov, offset)
            return done
        try:
            done, self._nowait_reads = self._try_now(IoVec.preadv, front, offset)
            self.split_policy.front_done(self._back_parts.running)
        finally:
            # The kernel writes into the request's buffers until then.
            rest = self._attempt(self._back_part_result, back, offset + at)
        if done is None or done < at:
            return done  # the front would wait, or the file ended in it
        if rest is None or rest == NOWAIT_REFUSED:
            self._would_wait()
            return None
        return done + rest

    def _back_part_result(self, iov: IoVec, fd: int, offset: int, flags: int) -> int:
        """`_attempt`'s transfer for a back part: its read, already started."""
        return self._back_parts.wait()

    def try_pwritev(self, iov: IoVec, offset: int) -> int | None:
        """`pwritev` if it can finish without waiting; None otherwise. A write that got
        part of the way is redone whole later, with the same bytes: harmless."""
        if not self._nowait_writes:
            return None
        done, self._nowait_writes = self._try_now(IoVec.pwritev, iov, offset)
        return done

    def _try_now(self, call, iov: IoVec, offset: int) -> tuple[int | None, bool]:
        """(bytes done or None, whether to try again later: False once this file or
        kernel has said it cannot)."""
        if self._nowait_skip:
            self._nowait_skip -= 1
            return None, True
        if iov.count > IOV_MAX:
            return None, True
        n = self._attempt(call, iov, offset)
        if n == NOWAIT_REFUSED:
            return None, False
        if n is None:
            return self._would_wait(), True
        self._nowait_backoff = 0
        return n, True

    def _attempt(self, call, iov: IoVec, offset: int) -> int | None:
        """One transfer that does not wait, touching no state: the bytes done, None if it
        would wait, or NOWAIT_REFUSED if this file or kernel does not take RWF_NOWAIT."""
        try:
            n = call(iov, self.fd, offset, self._now_flags)
        except BlockingIOError:
            return None
        except OSError as error:
            if error.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                return NOWAIT_REFUSED
            raise
        if n != iov.nbytes and offset + n < self.size:
            return None  # stopped where it would wait, not at the end
        return n

    def _would_wait(self) -> None:
        self._nowait_backoff = min(max(1, 2 * self._nowait_backoff), NOWAIT_MAX_SKIP)
        self._nowait_skip = self._nowait_backoff

    def preadv(self, iov: IoVec, offset: int) -> int:
        """Read into `iov` from `offset` until it is full or the file ends."""
        if not self._aligned(iov, offset):
            return self._bounce_read(iov.views(), offset)
        return _transfer(IoVec.preadv, self.fd, iov, offset)

    def pwritev(self, iov: IoVec, offset: int) -> int:
        if not self._aligned(iov, offset):
            return self._bounce_write(iov.views(), offset)
        return _transfer(IoVec.pwritev, self.fd, iov, offset)

    def _aligned(self, iov: IoVec, offset: int) -> bool:
        a = self.alignment
        return a == 1 or (offset % a == 0 and iov.aligned(a))

    # O_DIRECT wants the file offset, the length and the memory aligned. A guest that keeps
    # to the blk_size it is told does that already (guest pages are aligned in the host
    # mapping); only a misaligned request goes through an aligned bounce buffer, at the
    # cost of one copy (and, for writes, a read-modify-write of the edge blocks, serialised
    # so that two of them cannot undo each other).

    def _span(self, offset: int, length: int) -> tuple[int, int]:
        a = self.alignment
        start = offset - offset % a
        end = -(-(offset + length) // a) * a
        return start, end

    def _bounce_read(self, views: Sequence[memoryview], offset: int) -> int:
        length = sum(len(v) for v in views)
        start, end = self._span(offset, length)
        bounce = _zero_buffer(end - start)
        try:
            got = _transfer(IoVec.preadv, self.fd, IoVec.over([memoryview(bounce)]), start)
            available = max(0, min(length, got - (offset - start)))
            done = 0
            for view in views:
                take = min(len(view), available - done)
                if take <= 0:
                    break
                view[:take] = bounce[offset - start + done : offset - start + done + take]
                done += take
            return done
        finally:
            bounce.close()

    def _bounce_write(self, views: Sequence[memoryview], offset: int) -> int:
        length = sum(len(v) for v in views)
        start, end = self._span(offset, length)
        with self._rmw:
            bounce = _zero_buffer(end - start)
            try:
                _transfer(IoVec.preadv, self.fd, IoVec.over([memoryview(bounce)]), start)
                at = offset - start
                for view in views:
                    bounce[at : at + len(view)] = view
                    at += len(view)
                _transfer(IoVec.pwritev, self.fd, IoVec.over([memoryview(bounce)]), start)
                return length
            finally:
                bounce.close()

    def flush(self) -> None:
        self.flushes += 1
        os.fdatasync(self.fd)

    def discard(self, offset: int, length: int) -> None:
        """Give the blocks back to the host filesystem. Advisory: a filesystem that
        cannot punch holes keeps the data, which discard allows (5.2.6.2)."""
        try:
            fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise

    def write_zeroes(self, offset: int, length: int, unmap: bool) -> None:
        """Zeros that read back as zeros: a punched hole when unmapping is allowed, else
        FALLOC_FL_ZERO_RANGE; where the filesystem has neither, write zeros."""
        mode = FALLOC_FL_PUNCH_HOLE if unmap else FALLOC_FL_ZERO_RANGE
        try:
            fallocate(self.fd, mode | FALLOC_FL_KEEP_SIZE, offset, length)
            return
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
        chunk = 1 << 20
        zeros = _zero_buffer(chunk)
        try:
            done = 0
            while done < length:
                n = min(chunk, length - done)
                part = IoVec.over([memoryview(zeros)[:n]])
                _transfer(IoVec.pwritev, self.fd, part, offset + done)
                del part  # its view would keep `zeros` from closing
                done += n
        finally:
            zeros.close()

    def close(self) -> None:
        self._back_parts.close()
        if self.fd >= 0:
            os.close(self.fd)  # drops the OFD locks with the open file description
            self.fd = -1


NOWAIT_MAX_SKIP = 64
NOWAIT_REFUSED = -1  # `BlockBackend._attempt`: the file or kernel refuses RWF_NOWAIT
# The most a transfer done at once (on the kick thread, under the device lock) may move:
# Linux's largest request here (max_sectors_kb 1280) fits; a larger chain waits for a
# worker, so that no single guest request holds the device for long.
AT_ONCE_MAX_BYTES = 2 << 20


def _transfer(call, fd: int, iov: IoVec, offset: int) -> int:
    """`IoVec.preadv`/`pwritev` until every range is done; a read stops early at end of
    file. One call does IOV_MAX ranges at most: a longer IoVec takes several."""
    done = 0
    while iov.nbytes:
        n = call(iov, fd, offset + done)
        if n == 0:
            break
        done += n
        iov = iov.after(n)
    return done


# --- the device ----------------------------------------------------------------------------

# struct virtio_blk_config (5.2.4), up to write_zeroes_may_unmap and its padding.
_CONFIG = struct.Struct("<QIIHBBIBBHIBBHIIIIIB3x")
_HEADER = struct.Struct("<IIQ")  # le32 type, le32 reserved (ioprio), le64 sector
_SEGMENT = struct.Struct("<QII")  # le64 sector, le32 num_sectors, le32 flags

DEFAULT_QUEUE_SIZE = 256
MAX_DISCARD_SECTORS = 0x3F_FFFF  # 2 GiB per segment, QEMU's default
MAX_DISCARD_SEGMENTS = 32


@dataclass(slots=True)
class _Request:
    queue: SplitQueue
    chain: DescriptorChain
    kind: int
    sector: int
    epoch: int
    status_offset: int  # of the status byte in the writable stream


class VirtioBlk(VirtioDevice):
    device_type = VIRTIO_ID_BLOCK
    name = "virtio-blk"

    def __init__(
        self,
        memory: GuestMemory,
        backend: BlockBackend,
        *,
        serial: str = "",
        queue_size: int = DEFAULT_QUEUE_SIZE,
        workers: int = 4,
        discard: bool = True,
        write_zeroes: bool = True,
        label: str | None = None,
    ):
        self.backend = backend
        self.serial = serial.encode()[:VIRTIO_BLK_ID_BYTES]
        self.capacity = backend.size // SECTOR
        # cache=none on a 4K-sector host: say so, and the guest issues aligned I/O.
        self.blk_size = max(SECTOR, backend.alignment)
        features = (
            bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_BLK_SIZE)
            | bit(VIRTIO_BLK_F_FLUSH)
            | bit(VIRTIO_BLK_F_TOPOLOGY)
        )
        if backend.read_only:
            features |= bit(VIRTIO_BLK_F_RO)
        else:
            if discard:
                features |= bit(VIRTIO_BLK_F_DISCARD)
            if write_zeroes:
                features |= bit(VIRTIO_BLK_F_WRITE_ZEROES)
        block_sectors = self.blk_size // SECTOR
        config = _CONFIG.pack(
            self.capacity,
            0,  # size_max: VIRTIO_BLK_F_SIZE_MAX not offered
            queue_size - 2,  # seg_max: room for the header and status descriptors
            0, 0, 0,  # geometry: VIRTIO_BLK_F_GEOMETRY not offered
            self.blk_size,
            0, 0, 1, 0,  # topology: one logical block per physical block, no hints
            0, 0,  # writeback (CONFIG_WCE not offered), unused0
            1,  # num_queues: VIRTIO_BLK_F_MQ not offered
            MAX_DISCARD_SECTORS,
            MAX_DISCARD_SEGMENTS,
            block_sectors,  # discard_sector_alignment
            MAX_DISCARD_SECTORS,
            MAX_DISCARD_SEGMENTS,
            1,  # write_zeroes_may_unmap
        )  # fmt: skip
        super().__init__(memory, [queue_size], features=features, config=config, label=label)
        self._workers = WorkerThreads(workers, self.label, self._run) if workers else None
        self._epoch = 0
        self._in_flight = 0
        self._idle = threading.Condition(self.lock)
        # While a kick thread drains the queue (under the lock): where the request it
        # keeps for itself goes.
        self._kept: list[_Request] | None = None
        self._reported_io_error = False

    # -- requests --

    def process_queue(self, index: int, *, on_kick_thread: bool = False) -> None:
        kept: list[_Request] = []
        with self.lock:
            self._kept = kept if on_kick_thread else None
            try:
                self._process_queue_locked(index)
            finally:
                self._kept = None
        # The first request of the batch, kept back by _start: done here, on the thread
        # that took the kick, now that the device lock is released.
        for request in kept:
            self._run(request)

    def handle_queue(self, queue: SplitQueue) -> None:
        self.drain(queue, self._start)

    def _start(self, queue: SplitQueue, chain: DescriptorChain) -> None:
        if chain.readable_len < _HEADER.size or chain.writable_len < 1:
            raise VirtqueueError(f"request {chain.head}: no header or no status byte")
        kind, _, sector = _HEADER.unpack(chain.read(0, _HEADER.size))
        request = _Request(queue, chain, kind, sector, self._epoch, chain.writable_len - 1)
        if self._workers is None:
            self._finish(request, *self._execute(request))
            return
        # On the kick thread, what needs no waiting is done here and now, under the
        # lock: no hand-off to another thread, and the used ring is written at once. (A
        # vCPU's thread, kicking without an ioeventfd, leaves even that to a worker.)
        if self._kept is not None:
            result = self._execute(request, now=True)
            if result is not None:
                self._finish(request, *result)
                return
        self._in_flight += 1
        # The kicking thread does the first request of a batch itself and hands the rest
        # to the workers: a lone request (what a guest with a few reads in flight mostly
        # makes) costs no hand-off between threads, several still run at once. While it
        # runs, further kicks wait in their eventfd, for one request's time at most.
        if self._kept is not None and not self._kept:
            self._kept.append(request)
        else:
            self._workers.submit(request)

    def _run(self, request: _Request) -> None:
        result = (VIRTIO_BLK_S_IOERR, 0)
        try:
            result = self._execute(request)
        finally:
            with self.lock:
                self._in_flight -= 1
                if request.epoch == self._epoch:
                    self._finish(request, *result)
                if not self._in_flight:
                    self._idle.notify_all()  # a reset may be waiting for this

    def _finish(self, request: _Request, status: int, written: int) -> None:
        request.chain.write_last_byte(status)
        self.complete(request.queue, request.chain.head, written + 1)

    def _execute(self, request: _Request, now: bool = False) -> tuple[int, int] | None:
        """Do the request: its status and the data bytes written. `now`: only if that
        needs no waiting (else None, having done nothing the request can see)."""
        try:
            kind = request.kind
            if kind == VIRTIO_BLK_T_IN:
                return self._read(request, now)
            if kind == VIRTIO_BLK_T_OUT:
                return self._write(request, now)
            if now and kind != VIRTIO_BLK_T_GET_ID:
                return None  # flush, discard, write zeroes: they wait for the disk
            if kind == VIRTIO_BLK_T_FLUSH:
                self.backend.flush()
                return VIRTIO_BLK_S_OK, 0
            if kind == VIRTIO_BLK_T_GET_ID:
                serial = self.serial.ljust(VIRTIO_BLK_ID_BYTES, b"\0")
                limit = min(VIRTIO_BLK_ID_BYTES, request.status_offset)
                return VIRTIO_BLK_S_OK, request.chain.write(0, serial[:limit])
            if kind in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES):
                return self._discard_or_zero(request)
            return VIRTIO_BLK_S_UNSUPP, 0
        except OSError as error:
            if not self._reported_io_error:
                self._reported_io_error = True
                log.warning("%s: I/O error on %s: %s", self.label, self.backend.path, error)
            return VIRTIO_BLK_S_IOERR, 0

    def _in_range(self, sector: int, length: int) -> bool:
        """Whole logical blocks, inside the disk (5.2.6.3: otherwise IOERR)."""
        block = self.blk_size
        return (
            length % block == 0
            and (sector * SECTOR) % block == 0
            and sector * SECTOR + length <= self.capacity * SECTOR
        )

    def _read(self, request: _Request, now: bool) -> tuple[int, int] | None:
        length = request.status_offset
        if not self._in_range(request.sector, length):
            return VIRTIO_BLK_S_IOERR, 0
        if now and length > AT_ONCE_MAX_BYTES:
            return None
        iov = request.chain.writable_iovec(0, length)
        call = self.backend.try_preadv if now else self.backend.preadv
        done = call(iov, request.sector * SECTOR)
        if done is None:
            return None
        if done != length:
            return VIRTIO_BLK_S_IOERR, 0
        return VIRTIO_BLK_S_OK, length

    def _write(self, request: _Request, now: bool) -> tuple[int, int] | None:
        length = request.chain.readable_len - _HEADER.size
        if self.backend.read_only or not self._in_range(request.sector, length):
            return VIRTIO_BLK_S_IOERR, 0
        if now and length > AT_ONCE_MAX_BYTES:
            return None
        iov = request.chain.readable_iovec(_HEADER.size)
        call = self.backend.try_pwritev if now else self.backend.pwritev
        done = call(iov, request.sector * SECTOR)
        if done is None:
            return None
        if done != length:
            return VIRTIO_BLK_S_IOERR, 0
        return VIRTIO_BLK_S_OK, 0

    def _discard_or_zero(self, request: _Request) -> tuple[int, int]:
        zeroing = request.kind == VIRTIO_BLK_T_WRITE_ZEROES
        feature = VIRTIO_BLK_F_WRITE_ZEROES if zeroing else VIRTIO_BLK_F_DISCARD
        if not self.has_feature(feature):
            return VIRTIO_BLK_S_UNSUPP, 0
        if self.backend.read_only:
            return VIRTIO_BLK_S_IOERR, 0
        size = request.chain.readable_len - _HEADER.size
        if size == 0 or size % _SEGMENT.size or size // _SEGMENT.size > MAX_DISCARD_SEGMENTS:
            return VIRTIO_BLK_S_UNSUPP, 0
        payload = request.chain.read(_HEADER.size, size)
        segments = [_SEGMENT.unpack_from(payload, i) for i in range(0, size, _SEGMENT.size)]
        known = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP if zeroing else 0
        # Check every segment before touching the image (5.2.6.3).
        for sector, count, flags in segments:
            if flags & ~known:
                return VIRTIO_BLK_S_UNSUPP, 0
            if count > MAX_DISCARD_SECTORS or not self._in_range(sector, count * SECTOR):
                return VIRTIO_BLK_S_IOERR, 0
        for sector, count, flags in segments:
            offset, length = sector * SECTOR, count * SECTOR
            if zeroing:
                unmap = bool(flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)
                self.backend.write_zeroes(offset, length, unmap)
            else:
                self.backend.discard(offset, length)
        return VIRTIO_BLK_S_OK, 0

    # -- lifecycle --

    def on_reset(self) -> None:
        # Completions of the old epoch are dropped; wait for the I/O still running so that
        # nothing writes guest memory once reset has returned (2.1.1).
        self._epoch += 1
        while self._in_flight:
            self._idle.wait()

    def close(self) -> None:
        with self.lock:
            self.on_reset()
        if self._workers is not None:
            self._workers.shutdown()
        self.backend.close()
