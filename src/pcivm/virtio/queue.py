"""The split virtqueue (virtio 1.2, 2.7), device side.

Everything in the rings is written by the guest and is checked before use: the queue
size, where the rings are, every descriptor's address, length, flags and next index, the
chain's length and shape, and how far the available index runs ahead. A violation raises
`VirtqueueError`; the device turns it into DEVICE_NEEDS_RESET or a stopped queue
(device.py). All guest memory is reached through `GuestMemory`, so a bad address can
only ever raise, never touch host memory.

Memory ordering. One worker at a time handles a queue (the device lock), and the guest
runs on other CPUs. The driver writes a ring entry, then (after a write barrier) the
available index; `pop` therefore reads the available index first and only then the ring
entry and the descriptors it names. x86 does not reorder loads with loads, and CPython
performs our loads in program order, so we see the entry the index promises. The same
holds in the other direction for the used ring: we write the element, then the index
(x86 does not reorder stores with stores). The one reordering x86 does allow, a later
load passing an earlier store, matters where we publish something and then read what the
driver asked for (used idx then used_event, avail_event then avail idx): there
`_full_barrier` issues a locked instruction, as the kernel's virtio_mb would.

Every ring field the driver reads while we write it (used idx, used flags, avail_event,
a used element) is stored with one store of its own width, through a memoryview cast to
16- or 32-bit items: `struct.pack_into` is not usable for that, because it clears the
whole destination before writing the value, and a driver on another CPU can read that
zero (a used index that jumps back, an avail_event of 0 that tells it not to kick). The
casts are native-endian; the rings are little-endian, as x86 is.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence

from pcivm.iovec import IoVec
from pcivm.memory import GuestMemory, GuestMemoryError
from pcivm.virtio.constants import (
    VIRTIO_PCI_VRING_ALIGN,
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC_ALIGN,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VIRTQ_DESC_SIZE,
    VIRTQ_MAX_SIZE,
    VIRTQ_USED_ALIGN,
    VIRTQ_USED_ELEM_SIZE,
    VIRTQ_USED_F_NO_NOTIFY,
)

_DESC = struct.Struct("<QIHH")
# 2.7.5.2: a chain is at most 2^32 bytes long in total (used.len is a le32).
MAX_CHAIN_BYTES = 1 << 32
# An indirect table is addressed by 16-bit next fields: more entries are unreachable.
MAX_INDIRECT_ENTRIES = 1 << 16
# An indirect table as Linux writes it, as columns of bytes (byte k of every 16-byte
# descriptor: `table[k::16]`): next of entry i is i + 1, low byte and high byte; the
# flags' high byte is zero, their low byte NEXT or NEXT | WRITE but for the last entry's.
_NEXT_LOW, _NEXT_HIGH, _FLAGS_LOW, _FLAGS_HIGH = 14, 15, 12, 13
# (Built from 256-byte pieces: a Python step per entry would cost a boot in the box
# ~0.3 s of import time.)
_LINKS_LOW = (bytes(range(256)) * 256)[1:]
_LINKS_HIGH = b"".join(bytes([high]) * 256 for high in range(256))[1:]
_ZEROS = bytes(1 << 16)
_F_READ_MORE = bytes([VIRTQ_DESC_F_NEXT])
_F_WRITE_MORE = bytes([VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE])
# From this many entries on an indirect table is checked in bulk (measured natively: a
# 3-entry table, a 4 KiB read, walks in 2.6 us one by one and 4.4 us in bulk; at 16
# entries bulk wins, 7.7 against 9.4 us; at 258, 69 against 143 us).
BULK_TABLE_MIN = 12

# Indirect tables the bulk check accepted lately, with what it made of them, per queue:
# at most this many, holding at most this many table bytes (a 1 MiB read's table is
# 4,128 bytes; Linux's tables repeat with the request's tag, see `_RecentTables`).
RECENT_TABLES = 512
RECENT_TABLE_BYTES = 1 << 20

_fence = threading.Lock()


def _full_barrier() -> None:
    # Acquiring a pthread mutex is a locked read-modify-write on x86, a full barrier: the
    # store before it is visible before the load after it (the smp_mb of virtio_ring.c).
    with _fence:
        pass


class VirtqueueError(Exception):
    """The guest broke the virtqueue rules; the message says which and where."""


def vring_need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """True when moving an index from `old_idx` to `new_idx` crosses `event_idx`
    (2.7.7 / 2.7.10, include/uapi/linux/virtio_ring.h), in 16-bit arithmetic."""
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old_idx) & 0xFFFF)


def avail_ring_size(size: int) -> int:
    return 6 + 2 * size  # flags, idx, ring[size], used_event


def used_ring_size(size: int) -> int:
    return 6 + VIRTQ_USED_ELEM_SIZE * size  # flags, idx, ring[size], avail_event


def legacy_layout(pfn: int, size: int, align: int = VIRTIO_PCI_VRING_ALIGN) -> tuple[int, int, int]:
    """(desc, avail, used) addresses of a legacy queue whose page frame number is `pfn`
    (2.7.2 "Legacy Interfaces: A Note on Virtqueue Layout"): the descriptor table, the
    available ring right after it, the used ring at the next `align` boundary."""
    desc = pfn * VIRTIO_PCI_VRING_ALIGN
    avail = desc + VIRTQ_DESC_SIZE * size
    used = (avail + avail_ring_size(size) + align - 1) & ~(align - 1)
    return desc, avail, used


def legacy_ring_bytes(size: int, align: int = VIRTIO_PCI_VRING_ALIGN) -> int:
    """The bytes a legacy queue of `size` entries occupies from its page frame on."""
    desc, _, used = legacy_layout(0, size, align)
    return used + used_ring_size(size) - desc


class DescriptorChain:
    """One available descriptor chain, resolved and validated: the device-readable and
    device-writable buffers in chain order, each side an `IoVec` of guest RAM (checked
    once, when the chain was walked)."""

    __slots__ = ("head", "readable_len", "writable_len", "_addrs", "_riov", "_wiov")

    def __init__(self, head: int, addrs: Sequence[int], readable: IoVec, writable: IoVec):
        self.head = head
        self._addrs = addrs  # guest address of every buffer, the readable ones first
        self._riov, self._wiov = readable, writable
        self.readable_len = readable.nbytes
        self.writable_len = writable.nbytes

    @property
    def readable(self) -> list[tuple[int, int]]:
        """(guest address, length) of each device-readable buffer."""
        count = len(self._riov)
        return list(zip(self._addrs[:count], self._riov.lengths, strict=True))

    @property
    def writable(self) -> list[tuple[int, int]]:
        """(guest address, length) of each device-writable buffer."""
        count = len(self._riov)
        return list(zip(self._addrs[count:], self._wiov.lengths, strict=True))

    def readable_iovec(self, skip: int = 0, limit: int | None = None) -> IoVec:
        """The readable buffers, `skip` bytes in, at most `limit` bytes: for transfers."""
        return self._riov.trimmed(skip, limit)

    def writable_iovec(self, skip: int = 0, limit: int | None = None) -> IoVec:
        """The writable buffers, `skip` bytes in, at most `limit` bytes: for transfers."""
        return self._wiov.trimmed(skip, limit)

    def readable_views(self, skip: int = 0, limit: int | None = None) -> list[memoryview]:
        """Views of the readable buffers, `skip` bytes in, at most `limit` bytes."""
        return self._riov.trimmed(skip, limit).views()

    def writable_views(self, skip: int = 0, limit: int | None = None) -> list[memoryview]:
        """Views of the writable buffers, `skip` bytes in, at most `limit` bytes."""
        return self._wiov.trimmed(skip, limit).views()

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes of the readable stream from `offset` (short at its end)."""
        if self._riov.lengths and offset + length <= self._riov.lengths[0]:
            return bytes(self._riov.view(0)[offset : offset + length])  # a header in one buffer
        return b"".join(bytes(v) for v in self.readable_views(offset, length))

    def write(self, offset: int, data: bytes) -> int:
        """Scatter `data` into the writable stream at `offset`; the bytes written."""
        done = 0
        for view in self.writable_views(offset, len(data)):
            view[:] = data[done : done + len(view)]
            done += len(view)
        return done

    def write_last_byte(self, value: int) -> None:
        """Set the last byte of the writable stream (virtio-blk's status byte)."""
        if not self.writable_len:
            raise IndexError("the chain has no writable byte")
        self._wiov.view(-1)[-1] = value


class _RecentTables:
    """Indirect tables the bulk check accepted, by their bytes, with what it made of them.

    Linux gives every request tag its own header and status byte, and a guest that reads
    into one buffer (dd, fio, a database's pool) sends the same pages every time: its
    1 MiB reads come as a few tables (seen: two buffers' worth of pages between 64 tags'
    ends, 128 tables) over and over. A table with the same bytes as one accepted before
    is accepted again, with the same ranges (guest RAM does not move): found by its
    first two entries and its last (a dict key of 48 bytes) and compared whole, it costs
    that comparison instead of the check and the translation (~13 us natively for 258
    entries, ~1 ms in the nested box). Bounded in entries and bytes; the oldest go
    first."""

    __slots__ = ("_by_key", "_bytes")

    def __init__(self):
        self._by_key: dict[bytes, tuple[bytes, tuple]] = {}
        self._bytes = 0

    @staticmethod
    def _key(table: bytes) -> bytes:
        return table[: 2 * VIRTQ_DESC_SIZE] + table[-VIRTQ_DESC_SIZE:]

    def get(self, table: bytes) -> tuple | None:
        """What `put` kept for a table with these bytes, or None."""
        kept = self._by_key.get(self._key(table))
        if kept is not None and kept[0] == table:
            return kept[1]
        return None

    def put(self, table: bytes, made: tuple) -> None:
        if len(table) > RECENT_TABLE_BYTES // 64:
            return  # a guest's very large tables: few repeat, each would crowd out many
        key = self._key(table)
        old = self._by_key.pop(key, None)
        if old is not None:
            self._bytes -= len(old[0])
        while self._by_key and (
            len(self._by_key) >= RECENT_TABLES or self._bytes + len(table) > RECENT_TABLE_BYTES
        ):
            oldest = next(iter(self._by_key))
            self._bytes -= len(self._by_key.pop(oldest)[0])
        self._by_key[key] = (table, made)
        self._bytes += len(table)


class SplitQueue:
    """The device's side of one split virtqueue.

    The transport configures it (`set_size`, `set_addresses` or `set_legacy_pfn`,
    `enable`); the device negotiates `event_idx`/`indirect` and then pops chains and
    returns them with `add_used`. Not thread-safe by itself: the device serialises access.
    """

    def __init__(self, memory: GuestMemory, max_size: int, index: int = 0):
        if max_size < 1 or max_size > VIRTQ_MAX_SIZE or max_size & (max_size - 1):
            raise ValueError(f"queue size {max_size} is not a power of two up to 32768")
        self.memory = memory
        self.max_size = max_size
        self.index = index
        self.reset()

    def reset(self) -> None:
        self.size = self.max_size
        self.desc_addr = self.avail_addr = self.used_addr = 0
        self.ready = False
        # Set by the device from the negotiated features when the driver is done.
        self.event_idx = False
        self.indirect = False
        # Stopped after a guest error on the legacy interface: no processing until reset.
        self.stopped = False
        self.last_avail_idx = 0
        self.used_idx = 0
        self._signalled_used = 0
        self._signalled_used_valid = False
        self._used_since_signal = 0
        self._notify_enabled = True
        # Views of the rings while the queue is ready (bounds-checked once, by `enable`):
        # the descriptor table as bytes, the rings as 16-bit fields (the used ring's
        # elements also as 32-bit ones).
        self._desc_view = self._avail = self._used = self._used_elems = None
        self._recent_tables = _RecentTables()

    # --- configuration, by the transport -------------------------------------------------

    def set_size(self, size: int) -> None:
        """The driver's queue size (modern interface: it may shrink it); checked by
        `enable`, so the register reads back what the driver wrote."""
        self._check_not_ready("size")
        self.size = size

    def set_addresses(self, desc: int, avail: int, used: int) -> None:
        self._check_not_ready("addresses")
        self.desc_addr, self.avail_addr, self.used_addr = desc, avail, used

    def _check_not_ready(self, what: str) -> None:
        # 4.1.4.3.2: the driver must not change a queue it has enabled.
        if self.ready:
            raise VirtqueueError(f"queue {self.index}: {what} changed while enabled")

    def set_legacy_pfn(self, pfn: int, align: int = VIRTIO_PCI_VRING_ALIGN) -> None:
        """The legacy interface's queue address register: 0 disables the queue (the driver
        deleting it), anything else places the rings (2.7.2) and makes the queue ready."""
        stopped = self.stopped  # only a device reset restarts a stopped queue
        self.reset()
        self.stopped = stopped
        if pfn == 0:
            return
        self.size = self.max_size  # a legacy driver cannot change the size
        self.set_addresses(*legacy_layout(pfn, self.max_size, align))
        self.enable()

    def enable(self) -> None:
        """Queue ready: a power-of-two size up to the maximum (2.7: split queues), the
        rings inside guest RAM with the spec's alignment."""
        size = self.size
        if size < 1 or size > self.max_size or size & (size - 1):
            raise VirtqueueError(
                f"queue {self.index}: size {size} is not a power of two up to {self.max_size}"
            )
        parts = (
            ("descriptor table", self.desc_addr, VIRTQ_DESC_SIZE * size, VIRTQ_DESC_ALIGN),
            ("available ring", self.avail_addr, 6 + 2 * size, 2),
            ("used ring", self.used_addr, used_ring_size(size), VIRTQ_USED_ALIGN),
        )
        views = []
        for name, addr, length, align in parts:
            if addr % align:
                raise VirtqueueError(f"queue {self.index}: {name} at {addr:#x} is misaligned")
            try:
                views.append(self.memory.view(addr, length))
            except GuestMemoryError:
                raise VirtqueueError(
                    f"queue {self.index}: {name} {addr:#x}+{length:#x} is outside RAM"
                ) from None
        self._desc_view = views[0]
        self._avail = views[1].cast("H")  # flags, idx, ring[size], used_event
        self._used = views[2].cast("H")  # flags, idx, then elements, avail_event
        self._used_elems = views[2][: 4 + VIRTQ_USED_ELEM_SIZE * size].cast("I")
        self.ready = True

    @property
    def active(self) -> bool:
        return self.ready and not self.stopped

    # --- the available side ----------------------------------------------------------------

    def pending(self) -> int:
        """How many chains the driver has made available and we have not popped."""
        if not self.active:
            return 0
        ahead = (self._avail[1] - self.last_avail_idx) & 0xFFFF
        if ahead > self.size:
            raise VirtqueueError(
                f"queue {self.index}: available index moved {ahead} entries ahead of "
                f"{self.last_avail_idx} (queue size {self.size})"
            )
        return ahead

    def pop(self) -> DescriptorChain | None:
        """The next available chain, validated, or None when there is none."""
        if not self.pending():
            return None
        last = self.last_avail_idx
        # The ring entry is read after the index (see the module docstring).
        chain = self._walk(self._avail[2 + last % self.size])
        self.last_avail_idx = (last + 1) & 0xFFFF
        if self.event_idx and self._notify_enabled:
            self._write_avail_event()
        return chain

    def _walk(self, head: int) -> DescriptorChain:
        if head >= self.size:
            raise self._chain_error(head, f"head index out of range (queue size {self.size})")
        table, table_len, index, in_indirect = self._desc_view, self.size, head, False
        addr, length, flags, _ = _DESC.unpack_from(table, VIRTQ_DESC_SIZE * head)
        if flags & VIRTQ_DESC_F_INDIRECT:
            # A chain that is one indirect table (what Linux sends for all but its
            # smallest requests): a table of the usual shape is taken in bulk before the
            # walk sets anything up.
            table = self._indirect_table(head, addr, length, flags, nested=False)
            if length >= BULK_TABLE_MIN * VIRTQ_DESC_SIZE:
                chain = self._take_linear_table(head, table)
                if chain is not None:
                    return chain
            table_len, index, in_indirect = length // VIRTQ_DESC_SIZE, 0, True
        addrs: list[int] = []
        # The buffers' views (each made, and so checked, as the walk reaches it) and
        # lengths, the device-readable and the device-writable ones apart.
        rviews: list[memoryview] = []
        wviews: list[memoryview] = []
        rlengths: list[int] = []
        wlengths: list[int] = []
        unpack = _DESC.unpack_from
        count, total, written = 0, 0, 0
        while True:
            if index >= table_len:
                raise self._chain_error(head, f"next index {index} out of range ({table_len})")
            count += 1
            if count > table_len:
                # Also what a loop looks like: 2.7.5.2, "loops are forbidden".
                raise self._chain_error(head, f"longer than its table ({table_len} entries)")
            addr, length, flags, nxt = unpack(table, VIRTQ_DESC_SIZE * index)
            if flags & VIRTQ_DESC_F_INDIRECT:
                # 2.7.5.3.2: the chain may be direct descriptors then one indirect table.
                table = self._indirect_table(head, addr, length, flags, nested=in_indirect)
                table_len = length // VIRTQ_DESC_SIZE
                index, count, in_indirect = 0, 0, True
                continue
            total += length
            if total > MAX_CHAIN_BYTES:
                raise self._chain_error(head, "more than 4 GiB in total")
            if length:
                buffer = self._buffer(head, addr, length)
                if flags & VIRTQ_DESC_F_WRITE:
                    wviews.append(buffer)
                    wlengths.append(length)
                    written += length
                elif wviews:
                    # 2.7.4.2: device-readable buffers come before device-writable ones.
                    raise self._chain_error(head, "readable buffer after a writable one")
                else:
                    rviews.append(buffer)
                    rlengths.append(length)
                addrs.append(addr)
            if not flags & VIRTQ_DESC_F_NEXT:
                return DescriptorChain(
                    head,
                    addrs,
                    IoVec(rlengths, total - written, rviews),
                    IoVec(wlengths, written, wviews),
                )
            index = nxt

    def _indirect_table(
        self, head: int, addr: int, length: int, flags: int, nested: bool
    ) -> memoryview:
        """The table an indirect descriptor names, once the rules allow it (2.7.5.3.1:
        negotiated, not nested, not combined with NEXT, whole descriptors)."""
        if not self.indirect:
            raise self._chain_error(head, "indirect descriptor not negotiated")
        if nested:
            raise self._chain_error(head, "nested indirect descriptor")
        if flags & VIRTQ_DESC_F_NEXT:
            raise self._chain_error(head, "indirect descriptor with NEXT")
        if length == 0 or length % VIRTQ_DESC_SIZE:
            raise self._chain_error(head, f"indirect table length {length:#x}")
        if length // VIRTQ_DESC_SIZE > MAX_INDIRECT_ENTRIES:
            raise self._chain_error(head, f"indirect table of {length:#x} bytes")
        return self._buffer(head, addr, length)

    def _take_linear_table(self, head: int, table: memoryview) -> DescriptorChain | None:
        """An indirect table as Linux writes it, checked in bulk: entry i links to i + 1,
        every entry but the last has NEXT, readable entries come first, none is empty or
        INDIRECT, the many buffers of a side lie in one RAM region. The chain, or None
        for any other table, and then the descriptor-by-descriptor walk judges it (and
        names what is wrong).

        A 1 MiB read is a table of 258 entries: walking them one by one in Python cost
        more than the read itself; here every step is a C loop over bytes, on one copy
        of the table: a column of every entry's byte k compared with the pattern it must
        have, and the ranges checked and translated as columns too
        (`GuestMemory.iovec_of_table`)."""
        snapshot = table.tobytes()  # the guest may change its table meanwhile
        made = self._recent_tables.get(snapshot)
        if made is not None:
            return DescriptorChain(head, *made)
        n = len(snapshot) // VIRTQ_DESC_SIZE
        if (
            snapshot[_NEXT_LOW::VIRTQ_DESC_SIZE][:-1] != _LINKS_LOW[: n - 1]
            or snapshot[_NEXT_HIGH::VIRTQ_DESC_SIZE][:-1] != _LINKS_HIGH[: n - 1]
            or snapshot[_FLAGS_HIGH::VIRTQ_DESC_SIZE] != _ZEROS[:n]
        ):
            return None
        flags = snapshot[_FLAGS_LOW::VIRTQ_DESC_SIZE]
        # A valid table has no flags byte but these, so count finds the readable entries;
        # anything else fails the comparison below.
        readable = flags.count(_F_READ_MORE)
        writable = n - 1 - readable
        if flags[:-1] != _F_READ_MORE * readable + _F_WRITE_MORE * writable:
            return None
        last = flags[-1]
        if last == 0:
            if writable:
                return None  # a readable buffer after a writable one: let the walk say so
            readable += 1
        elif last != VIRTQ_DESC_F_WRITE:
            return None
        split = VIRTQ_DESC_SIZE * readable
        # The two sides' ranges checked and translated in bulk, each field read where
        # the descriptor has it: the flags and next fields are ignored there.
        rio = self.memory.iovec_of_table(snapshot[:split])
        wio = self.memory.iovec_of_table(snapshot[split:])
        if rio is None or wio is None or rio.nbytes + wio.nbytes > MAX_CHAIN_BYTES:
            return None  # an empty buffer, one outside RAM, or too many bytes
        addrs = memoryview(snapshot).cast("Q")[0::2]  # for `readable`/`writable`
        self._recent_tables.put(snapshot, (addrs, rio, wio))
        return DescriptorChain(head, addrs, rio, wio)

    def _chain_error(self, head: int, reason: str) -> VirtqueueError:
        return VirtqueueError(f"queue {self.index} chain {head}: {reason}")

    def _buffer(self, head: int, addr: int, length: int) -> memoryview:
        try:
            return self.memory.view(addr, length)
        except GuestMemoryError:
            raise self._chain_error(head, f"buffer {addr:#x}+{length:#x} is outside RAM") from None

    # --- the used side ---------------------------------------------------------------------

    def add_used(self, head: int, written: int) -> None:
        """Return chain `head` to the driver with `written` bytes written into it: the
        element first, then the index (2.7.8.2: len is set before idx moves)."""
        if not 0 <= written < MAX_CHAIN_BYTES:
            raise ValueError(f"used length {written} does not fit le32")
        elems = self._used_elems
        if elems is None:
            return  # the driver took the queue away meanwhile (legacy PFN 0): nowhere to put it
        at = 1 + 2 * (self.used_idx % self.size)  # in 32-bit items, after flags and idx
        elems[at] = head
        elems[at + 1] = written
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        self._used[1] = self.used_idx
        self._used_since_signal += 1

    def should_interrupt(self) -> bool:
        """Whether the driver wants a used buffer notification for what was added since
        the last call (2.7.7): avail flags without EVENT_IDX, used_event with it."""
        if not self._used_since_signal or self._avail is None:
            return False
        self._used_since_signal = 0
        _full_barrier()  # our used idx store before the load of the driver's request
        if not self.event_idx:
            return not self._avail[0] & VIRTQ_AVAIL_F_NO_INTERRUPT
        old, new = self._signalled_used, self.used_idx
        valid = self._signalled_used_valid
        self._signalled_used, self._signalled_used_valid = new, True
        used_event = self._avail[2 + self.size]
        return not valid or vring_need_event(used_event, new, old)

    # --- available buffer notification suppression (2.7.10) --------------------------------

    def set_notification(self, enabled: bool) -> None:
        """Ask the driver for kicks (or not): NO_NOTIFY in the used flags, or with
        EVENT_IDX avail_event. After enabling, re-check `pending()`: a chain made
        available just before is not kicked."""
        self._notify_enabled = enabled
        if self._used is None:
            return
        if self.event_idx:
            if enabled:
                self._write_avail_event()
        else:
            self._used[0] = 0 if enabled else VIRTQ_USED_F_NO_NOTIFY
        if enabled:
            _full_barrier()  # the store above before the caller's re-read of avail idx

    def _write_avail_event(self) -> None:
        # avail_event sits after the used ring: kick us once idx passes what we have seen.
        self._used[2 + 4 * self.size] = self.last_avail_idx
