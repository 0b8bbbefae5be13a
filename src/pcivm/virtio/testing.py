"""A Python virtio driver that plays the guest against a device model (like QEMU's libqos).

It lays out rings and buffers in a `GuestMemory`, negotiates features the modern or the
legacy way, sets up queues, submits requests, kicks, and waits for used entries and
interrupts. It talks to the device through a `VirtioTransport`: `DirectTransport` calls
the device API directly; PCI transports get adapters with the same six or so methods
(config, status, features, queue setup, notify), so the same tests run through them.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pcivm.memory import GuestMemory
from pcivm.virtio.constants import (
    ACKNOWLEDGE,
    DRIVER,
    DRIVER_OK,
    FEATURES_OK,
    VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_SECTOR_SIZE,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_VERSION_1,
    VIRTIO_PCI_QUEUE_ADDR_SHIFT,
    VIRTIO_PCI_VRING_ALIGN,
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VIRTQ_DESC_SIZE,
    VIRTQ_USED_F_NO_NOTIFY,
)
from pcivm.virtio.device import VirtioDevice
from pcivm.virtio.queue import (
    VirtqueueError,
    avail_ring_size,
    legacy_layout,
    legacy_ring_bytes,
    used_ring_size,
    vring_need_event,
)

_DESC = struct.Struct("<QIHH")


class DriverError(AssertionError):
    """The device did not behave as a driver expects (a test failure)."""


# --- the transport seen from the driver ------------------------------------------------


class InterruptRecorder:
    """An `InterruptSink` that counts interrupts and lets a waiter sleep on them."""

    def __init__(self) -> None:
        self.used: dict[int, int] = {}
        self.config = 0
        self._cond = threading.Condition()

    def signal_used(self, queue_index: int) -> None:
        with self._cond:
            self.used[queue_index] = self.used.get(queue_index, 0) + 1
            self._cond.notify_all()

    def signal_config(self) -> None:
        with self._cond:
            self.config += 1
            self._cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Wait until `predicate()` holds, re-checking on each interrupt and every 10 ms
        (a driver that suppressed interrupts still polls)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.01))
        return True


class VirtioTransport(Protocol):
    legacy: bool
    interrupts: InterruptRecorder

    def get_device_features(self) -> int: ...
    def set_driver_features(self, features: int) -> None: ...
    def get_status(self) -> int: ...
    def set_status(self, status: int) -> None: ...
    def read_config(self, offset: int, size: int) -> bytes: ...
    def write_config(self, offset: int, data: bytes) -> None: ...
    def queue_max_size(self, index: int) -> int: ...
    def setup_queue(self, index: int, size: int, desc: int, avail: int, used: int) -> None: ...
    def notify(self, index: int) -> None: ...


class DirectTransport:
    """The device API called directly, the way the PCI transports will call it."""

    def __init__(self, device: VirtioDevice, *, legacy: bool = False, modern_capable: bool = True):
        self.device = device
        self.legacy = legacy
        self.interrupts = InterruptRecorder()
        device.attach(self.interrupts, modern_capable=modern_capable)
        device.set_legacy(legacy)

    def get_device_features(self) -> int:
        if self.legacy:
            return self.device.device_features & 0xFFFF_FFFF
        low = self.device.read_device_features(0)
        return low | self.device.read_device_features(1) << 32

    def set_driver_features(self, features: int) -> None:
        if self.legacy:
            self.device.set_driver_features(features & 0xFFFF_FFFF)
        else:
            self.device.write_driver_features(0, features & 0xFFFF_FFFF)
            self.device.write_driver_features(1, features >> 32)

    def get_status(self) -> int:
        return self.device.get_status()

    def set_status(self, status: int) -> None:
        self.device.set_status(status)

    def read_config(self, offset: int, size: int) -> bytes:
        return self.device.read_config(offset, size)

    def write_config(self, offset: int, data: bytes) -> None:
        self.device.write_config(offset, data)

    def queue_max_size(self, index: int) -> int:
        return self.device.queues[index].max_size

    def setup_queue(self, index: int, size: int, desc: int, avail: int, used: int) -> None:
        if self.legacy:
            pfn = desc >> VIRTIO_PCI_QUEUE_ADDR_SHIFT
            if (desc, avail, used) != legacy_layout(pfn, size) or size != self.queue_max_size(
                index
            ):
                raise DriverError("a legacy queue has the fixed layout of its page frame")
            self.device.set_queue_pfn(index, pfn)
            return
        queue = self.device.queues[index]
        try:
            queue.set_size(size)
            queue.set_addresses(desc, avail, used)
        except VirtqueueError as error:
            self.device.device_error(str(error), index)
            return
        self.device.enable_queue(index)

    def notify(self, index: int) -> None:
        self.device.notify(index)


# --- guest memory management -------------------------------------------------------------


class GuestAllocator:
    """A bump allocator over [start, end) of guest RAM; `mark`/`release` free in bulk."""

    def __init__(self, start: int, end: int):
        self.start, self.end, self.next = start, end, start

    def alloc(self, size: int, align: int = 16) -> int:
        addr = (self.next + align - 1) & ~(align - 1)
        if addr + size > self.end:
            raise DriverError("the test driver ran out of guest memory")
        self.next = addr + size
        return addr

    def mark(self) -> int:
        return self.next

    def release(self, mark: int) -> None:
        self.next = mark


# --- one queue, driver side ----------------------------------------------------------------


@dataclass
class Request:
    queue: int
    head: int
    writable: list[tuple[int, int]]
    descriptors: list[int] = field(default_factory=list)
    used_len: int | None = None

    @property
    def done(self) -> bool:
        return self.used_len is not None


class DriverQueue:
    """The driver's side of a split virtqueue in guest memory."""

    def __init__(
        self,
        memory: GuestMemory,
        index: int,
        size: int,
        desc: int,
        avail: int,
        used: int,
        *,
        event_idx: bool,
    ):
        self.memory, self.index, self.size = memory, index, size
        self.desc, self.avail, self.used = desc, avail, used
        self.event_idx = event_idx
        self.free = list(range(size))
        self.avail_idx = 0
        self.last_used = 0
        self.in_flight: dict[int, Request] = {}
        self.kicks = 0
        self.rearm = True  # move used_event along as entries are collected
        memory.write(desc, bytes(VIRTQ_DESC_SIZE * size))
        memory.write(avail, bytes(avail_ring_size(size)))
        memory.write(used, bytes(used_ring_size(size)))

    def write_desc(self, table: int, i: int, addr: int, length: int, flags: int, nxt: int) -> None:
        self.memory.write(table + VIRTQ_DESC_SIZE * i, _DESC.pack(addr, length, flags, nxt))

    def add(
        self,
        readable: Sequence[tuple[int, int]],
        writable: Sequence[tuple[int, int]],
        *,
        indirect_table: int | None = None,
    ) -> Request:
        """Put a chain in the descriptor table (or in an indirect table at
        `indirect_table`, referenced by one descriptor); not yet available."""
        buffers = [(a, n, 0) for a, n in readable] + [
            (a, n, VIRTQ_DESC_F_WRITE) for a, n in writable
        ]
        if indirect_table is not None:
            for i, (addr, length, flags) in enumerate(buffers):
                more = VIRTQ_DESC_F_NEXT if i + 1 < len(buffers) else 0
                self.write_desc(indirect_table, i, addr, length, flags | more, i + 1)
            head = self._take(1)[0]
            table_len = VIRTQ_DESC_SIZE * len(buffers)
            self.write_desc(self.desc, head, indirect_table, table_len, VIRTQ_DESC_F_INDIRECT, 0)
            descriptors = [head]
        else:
            descriptors = self._take(len(buffers))
            for i, (addr, length, flags) in enumerate(buffers):
                last = i + 1 == len(buffers)
                nxt = 0 if last else descriptors[i + 1]
                more = 0 if last else VIRTQ_DESC_F_NEXT
                self.write_desc(self.desc, descriptors[i], addr, length, flags | more, nxt)
        request = Request(self.index, descriptors[0], list(writable), descriptors)
        self.in_flight[request.head] = request
        return request

    def _take(self, count: int) -> list[int]:
        if count > len(self.free):
            raise DriverError(f"queue {self.index}: no {count} free descriptors")
        taken, self.free = self.free[:count], self.free[count:]
        return taken

    def publish(self, head: int) -> None:
        """Make a chain available: ring entry, then the index."""
        slot = self.avail_idx % self.size
        self.memory.write_u16(self.avail + 4 + 2 * slot, head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.memory.write_u16(self.avail + 2, self.avail_idx)

    def kick_needed(self, old_avail_idx: int) -> bool:
        """Whether the device asked to be notified of what was published since
        `old_avail_idx` (2.7.10)."""
        if self.event_idx:
            avail_event = self.memory.read_u16(self.used + 4 + 8 * self.size)
            return vring_need_event(avail_event, self.avail_idx, old_avail_idx)
        return not self.memory.read_u16(self.used) & VIRTQ_USED_F_NO_NOTIFY

    def set_interrupts(self, enabled: bool) -> None:
        """NO_INTERRUPT in the avail flags (without EVENT_IDX)."""
        self.memory.write_u16(self.avail, 0 if enabled else VIRTQ_AVAIL_F_NO_INTERRUPT)

    def set_used_event(self, value: int) -> None:
        self.memory.write_u16(self.avail + 4 + 2 * self.size, value & 0xFFFF)

    def used_idx(self) -> int:
        return self.memory.read_u16(self.used + 2)

    def collect(self) -> list[Request]:
        """Requests the device returned since the last call, in used-ring order."""
        done = []
        while self.last_used != self.used_idx():
            slot = self.last_used % self.size
            head, length = struct.unpack("<II", self.memory.read(self.used + 4 + 8 * slot, 8))
            request = self.in_flight.pop(head, None)
            if request is None:
                raise DriverError(f"queue {self.index}: device used unknown head {head}")
            request.used_len = length
            self.free.extend(request.descriptors)
            done.append(request)
            self.last_used = (self.last_used + 1) & 0xFFFF
        if self.event_idx and self.rearm:
            # What Linux's virtqueue_enable_cb does: interrupt on the next used entry.
            self.set_used_event(self.last_used)
        return done


# --- the driver ---------------------------------------------------------------------------


class VirtioDriver:
    """Device initialisation (3.1) and request plumbing over any `VirtioTransport`."""

    def __init__(
        self,
        transport: VirtioTransport,
        memory: GuestMemory,
        *,
        arena: tuple[int, int] = (0x100000, 0x200000),
        data: tuple[int, int] | None = None,
    ):
        self.transport = transport
        self.memory = memory
        self.rings = GuestAllocator(*arena)
        start, end = data or (arena[1], arena[1] + 0x400000)
        self.buffers = GuestAllocator(start, end)
        self.queues: list[DriverQueue] = []
        self.features = 0
        self.completed: list[Request] = []

    @property
    def legacy(self) -> bool:
        return self.transport.legacy

    def negotiate(self, wanted: int) -> int:
        """Reset, ACKNOWLEDGE, DRIVER, features (and FEATURES_OK on the modern
        interface). Returns the accepted features; raises if the device refuses."""
        t = self.transport
        t.set_status(0)
        t.set_status(ACKNOWLEDGE)
        t.set_status(ACKNOWLEDGE | DRIVER)
        offered = t.get_device_features()
        if not self.legacy:
            wanted |= 1 << VIRTIO_F_VERSION_1
        self.features = offered & wanted
        t.set_driver_features(self.features)
        if not self.legacy:
            t.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK)
            if not t.get_status() & FEATURES_OK:
                raise DriverError("the device refused FEATURES_OK")
        return self.features

    def setup_queue(self, index: int, size: int | None = None) -> DriverQueue:
        t = self.transport
        size = size or t.queue_max_size(index)
        if self.legacy:
            desc = self.rings.alloc(legacy_ring_bytes(size), VIRTIO_PCI_VRING_ALIGN)
            desc, avail, used = legacy_layout(desc >> VIRTIO_PCI_QUEUE_ADDR_SHIFT, size)
        else:
            desc = self.rings.alloc(VIRTQ_DESC_SIZE * size, 16)
            avail = self.rings.alloc(avail_ring_size(size), 2)
            used = self.rings.alloc(used_ring_size(size), 4)
        event_idx = bool(self.features & (1 << VIRTIO_F_EVENT_IDX))
        queue = DriverQueue(self.memory, index, size, desc, avail, used, event_idx=event_idx)
        while len(self.queues) <= index:
            self.queues.append(None)  # type: ignore[arg-type]
        self.queues[index] = queue
        t.setup_queue(index, size, desc, avail, used)
        return queue

    def driver_ok(self) -> None:
        self.transport.set_status(self.transport.get_status() | DRIVER_OK)

    def init(self, wanted: int = ~0, queues: int = 1) -> int:
        """The whole initialisation sequence with every queue at its maximum size."""
        features = self.negotiate(wanted)
        for index in range(queues):
            self.setup_queue(index)
        self.driver_ok()
        return features

    # --- requests ----------------------------------------------------------------------

    def buffer(self, data: bytes | int, align: int = 16) -> tuple[int, int]:
        """Guest memory for a buffer: initialised with `data`, or `data` bytes of 0xee."""
        if isinstance(data, int):
            data = b"\xee" * data
        addr = self.buffers.alloc(max(len(data), 1), align)
        self.memory.write(addr, data)
        return addr, len(data)

    def submit(
        self,
        queue: int,
        readable: Sequence[bytes],
        writable: Sequence[int],
        *,
        indirect: bool = False,
        kick: bool = True,
    ) -> Request:
        q = self.queues[queue]
        rd = [self.buffer(data) for data in readable]
        wr = [self.buffer(length) for length in writable]
        table = None
        if indirect:
            table = self.buffers.alloc(VIRTQ_DESC_SIZE * (len(rd) + len(wr)), 16)
        request = q.add(rd, wr, indirect_table=table)
        old = q.avail_idx
        q.publish(request.head)
        if kick and q.kick_needed(old):
            q.kicks += 1
            self.transport.notify(queue)
        return request

    def kick(self, queue: int) -> None:
        self.queues[queue].kicks += 1
        self.transport.notify(queue)

    def poll(self, queue: int) -> list[Request]:
        done = self.queues[queue].collect()
        self.completed += done
        return done

    def wait(self, request: Request, timeout: float = 5.0) -> Request:
        def done() -> bool:
            self.poll(request.queue)
            return request.done

        if not self.transport.interrupts.wait(done, timeout):
            raise DriverError(f"queue {request.queue}: request {request.head} not completed")
        return request

    def read_writable(self, request: Request, length: int | None = None) -> bytes:
        data = b"".join(self.memory.read(a, n) for a, n in request.writable)
        return data if length is None else data[:length]


class RngDriver:
    def __init__(self, driver: VirtioDriver):
        self.driver = driver

    def read(self, length: int, *, timeout: float = 5.0, indirect: bool = False) -> bytes:
        request = self.driver.submit(0, [], [length], indirect=indirect)
        self.driver.wait(request, timeout)
        return self.driver.read_writable(request, request.used_len)


@dataclass
class BlkResult:
    status: int
    data: bytes
    used_len: int


class BlkDriver:
    """Block requests (5.2.6): header, data, status byte as separate buffers."""

    def __init__(self, driver: VirtioDriver):
        self.driver = driver

    def submit(
        self,
        kind: int,
        sector: int = 0,
        data: bytes = b"",
        read_len: int = 0,
        *,
        indirect: bool = False,
        split: int | None = None,
    ) -> Request:
        header = struct.pack("<IIQ", kind, 0, sector)
        readable = [header] + _pieces(data, split)
        writable = [len(p) for p in _pieces(bytes(read_len), split)] + [1]
        return self.driver.submit(0, readable, writable, indirect=indirect)

    def result(self, request: Request, timeout: float = 5.0) -> BlkResult:
        self.driver.wait(request, timeout)
        payload = self.driver.read_writable(request)
        return BlkResult(payload[-1], payload[:-1], request.used_len or 0)

    def read(self, sector: int, count: int, **kw) -> BlkResult:
        request = self.submit(
            VIRTIO_BLK_T_IN, sector, read_len=count * VIRTIO_BLK_SECTOR_SIZE, **kw
        )
        return self.result(request)

    def write(self, sector: int, data: bytes, **kw) -> BlkResult:
        return self.result(self.submit(VIRTIO_BLK_T_OUT, sector, data, **kw))

    def flush(self) -> BlkResult:
        return self.result(self.submit(VIRTIO_BLK_T_FLUSH))

    def get_id(self) -> BlkResult:
        return self.result(self.submit(VIRTIO_BLK_T_GET_ID, read_len=VIRTIO_BLK_ID_BYTES))

    def discard(self, segments: Sequence[tuple[int, int]]) -> BlkResult:
        return self.result(self.submit(VIRTIO_BLK_T_DISCARD, data=_segments(segments, 0)))

    def write_zeroes(self, segments: Sequence[tuple[int, int]], unmap: bool = False) -> BlkResult:
        data = _segments(segments, 1 if unmap else 0)
        return self.result(self.submit(VIRTIO_BLK_T_WRITE_ZEROES, data=data))


def _segments(segments: Sequence[tuple[int, int]], flags: int) -> bytes:
    return b"".join(struct.pack("<QII", sector, count, flags) for sector, count in segments)


def _pieces(data: bytes, split: int | None) -> list[bytes]:
    if not data:
        return []
    if not split:
        return [data]
    return [data[i : i + split] for i in range(0, len(data), split)]
