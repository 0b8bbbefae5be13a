"""Guest RAM: one anonymous mapping, reached only through bounds-checked views.

Every access a device makes on behalf of the guest goes through `GuestMemory`, so a guest
address or length that leaves RAM raises `GuestMemoryError` instead of touching host memory.
RAM below the 32-bit PCI hole is mapped at 0; what does not fit there is mapped at 4 GiB.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from array import array
from dataclasses import dataclass
from enum import IntEnum

from pcivm import range_table
from pcivm.iovec import FEW_RANGES, RANGE_BYTES, IoVec

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# Conventional memory ends where the Extended BIOS Data Area starts; the MP table and other
# firmware data live there, the 0xa0000-0xfffff range is the legacy VGA/BIOS hole.
EBDA_START = 0x9FC00
BIOS_AREA_START = 0xE0000
HIGH_MEMORY_START = 1 * MiB
FOUR_GIB = 4 * GiB
# Guest RAM is mapped 2 MiB-aligned and asks for transparent huge pages, as QEMU's does:
# KVM then maps it into the guest with 2 MiB pages, and a boot takes a few hundred nested
# page faults instead of ~28,000 (each one emulated by TCG in the box).
HUGE_PAGE = 2 * MiB
# Better still, RAM starts at a multiple of 4 GiB of the host's address space: a guest
# address below 4 GiB then becomes its host address by replacing its upper four bytes,
# which `range_table` does for a whole table of them with a few byte-string operations.
# The mapping is made 4 GiB larger to find such a start; the slack is never touched, and
# MAP_NORESERVE keeps the kernel from counting it against the host's memory.
RAM_ALIGNMENT = FOUR_GIB
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)  # named by Python 3.13 on


class GuestMemoryError(ValueError):
    """A guest-physical range that is not entirely inside guest RAM."""


class E820Type(IntEnum):
    RAM = 1
    RESERVED = 2
    ACPI = 3


@dataclass(frozen=True)
class E820Entry:
    addr: int
    size: int
    type: E820Type


@dataclass(frozen=True)
class RamRegion:
    guest_phys_addr: int
    size: int
    offset: int  # into the host mapping

    @property
    def end(self) -> int:
        return self.guest_phys_addr + self.size


class GuestMemory:
    """`size` bytes of guest RAM; `lowmem_limit` is where the 32-bit PCI hole begins."""

    def __init__(self, size: int, lowmem_limit: int = 3 * GiB):
        if size < 2 * MiB:
            raise ValueError("guest RAM must be at least 2 MiB")
        self.size = size
        self.lowmem_limit = lowmem_limit
        self._map, alignment = self._map_aligned(size)
        # MADV_DONTFORK: a forked helper must not share (or copy) guest RAM.
        self._map.madvise(mmap.MADV_DONTFORK)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            self._map.madvise(mmap.MADV_HUGEPAGE)
        self._view = memoryview(self._map)
        anchor = ctypes.c_char.from_buffer(self._map)
        map_addr = ctypes.addressof(anchor)
        del anchor  # an export left behind would keep the mapping from ever closing
        start = -map_addr % alignment  # where RAM begins inside the mapping
        self.host_addr = map_addr + start
        self._map_addr = map_addr
        low = min(size, lowmem_limit)
        self.regions = [RamRegion(0, low, start)]
        if size > low:
            self.regions.append(RamRegion(FOUR_GIB, size - low, start + low))
        # (first guest address, end, a view of the region indexed from 0) per region:
        # `view` and `iovec` run for every descriptor and buffer a device touches, so they
        # avoid attribute lookups.
        self._region_views = tuple(
            (r.guest_phys_addr, r.end, self._view[r.offset : r.offset + r.size])
            for r in self.regions
        )
        # (first guest address, end, host address minus guest address) per region.
        self._region_hosts = tuple(
            (r.guest_phys_addr, r.end, self.host_address(r) - r.guest_phys_addr)
            for r in self.regions
        )
        self._range_checker = range_table.RangeChecker(self._region_hosts)

    @staticmethod
    def _map_aligned(size: int) -> tuple[mmap.mmap, int]:
        """An anonymous mapping with room for `size` bytes at a multiple of RAM_ALIGNMENT,
        or (a host that refuses so much address space) of HUGE_PAGE; and that multiple."""
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        try:
            return mmap.mmap(-1, size + RAM_ALIGNMENT, flags | MAP_NORESERVE), RAM_ALIGNMENT
        except OSError:
            return mmap.mmap(-1, size + HUGE_PAGE, flags), HUGE_PAGE

    def host_address(self, region: RamRegion) -> int:
        return self.host_addr + region.offset - self.regions[0].offset

    def view(self, gpa: int, length: int) -> memoryview:
        """A writable view of [gpa, gpa+length) that must lie inside one RAM region."""
        if length < 0 or gpa < 0:
            raise GuestMemoryError(f"bad guest range {gpa:#x}+{length:#x}")
        end = gpa + length
        for first, last, ram in self._region_views:
            if first <= gpa and end <= last:
                return ram[gpa - first : end - first]
        raise GuestMemoryError(f"guest range {gpa:#x}+{length:#x} is outside RAM")

    def iovec(self, addrs: list[int], lengths: list[int]) -> IoVec:
        """The ranges [addrs[i], addrs[i] + lengths[i]) by host address, for transfers
        straight between a file and guest RAM; GuestMemoryError if any leaves RAM."""
        if len(addrs) != len(lengths):
            raise ValueError("as many lengths as addresses")
        if len(addrs) <= FEW_RANGES:
            # A few ranges: a view of each (checked one by one) is what os.preadv takes.
            return IoVec(list(lengths), sum(lengths), list(map(self.view, addrs, lengths)))
        # Each range checked on its own: a virtqueue's many ranges come in a table, which
        # `iovec_of_table` checks in bulk.
        vector = array("Q", bytes(RANGE_BYTES * len(addrs)))
        vector[0::2] = array("Q", map(self.host_address_of, addrs, lengths))
        vector[1::2] = array("Q", lengths)
        return IoVec.of_vector(vector.tobytes(), sum(lengths), self._view[:], self._map_addr)

    def iovec_of_table(self, records) -> IoVec | None:
        """The ranges of a table of 16-byte records (`range_table`: a virtqueue's
        descriptors, for one; `records` a multiple of 16 bytes), checked and translated
        in bulk: a 1 MiB virtio-blk read carries 256. None unless every range is in one
        region and none is empty: then the caller looks at them one by one (and can say
        which one is wrong). The guest may change the table meanwhile: each range is
        checked as it was read, and the IoVec is made from what was checked."""
        if len(records) <= FEW_RANGES * RANGE_BYTES:
            # A few (a request's header): views, as `iovec` makes them.
            addrs, lengths = range_table.unpack(records)
            if 0 in lengths:
                return None
            try:
                return self.iovec(addrs, lengths)
            except GuestMemoryError:
                return None
        done = self._range_checker.translate(records)
        if done is None:
            return None
        vector, nbytes = done
        return IoVec.of_vector(vector, nbytes, self._view[:], self._map_addr)

    def host_address_of(self, gpa: int, length: int) -> int:
        """The host address of [gpa, gpa+length), which must lie inside one RAM region."""
        if length < 0 or gpa < 0:
            raise GuestMemoryError(f"bad guest range {gpa:#x}+{length:#x}")
        end = gpa + length
        for first, last, delta in self._region_hosts:
            if first <= gpa and end <= last:
                return gpa + delta
        raise GuestMemoryError(f"guest range {gpa:#x}+{length:#x} is outside RAM")

    def read(self, gpa: int, length: int) -> bytes:
        return bytes(self.view(gpa, length))

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self.view(gpa, len(data))[:] = data

    def read_u16(self, gpa: int) -> int:
        return struct.unpack_from("<H", self.view(gpa, 2))[0]

    def read_u32(self, gpa: int) -> int:
        return struct.unpack_from("<I", self.view(gpa, 4))[0]

    def read_u64(self, gpa: int) -> int:
        return struct.unpack_from("<Q", self.view(gpa, 8))[0]

    # One store of the field's width (little-endian, as x86 is), so that a vCPU reading
    # the field meanwhile sees the old value or the new one: struct.pack_into would clear
    # the destination first and let it see zero.

    def write_u16(self, gpa: int, value: int) -> None:
        self.view(gpa, 2).cast("H")[0] = value

    def write_u32(self, gpa: int, value: int) -> None:
        self.view(gpa, 4).cast("I")[0] = value

    def write_u64(self, gpa: int, value: int) -> None:
        self.view(gpa, 8).cast("Q")[0] = value

    def lowmem_end(self) -> int:
        return self.regions[0].end

    def e820(self, reserved: list[E820Entry] = ()) -> list[E820Entry]:
        """The map the guest is given: RAM minus the legacy hole below 1 MiB, plus the
        `reserved` ranges the machine declares (such as the ECAM window)."""
        entries = [
            E820Entry(0, EBDA_START, E820Type.RAM),
            E820Entry(EBDA_START, 0xA0000 - EBDA_START, E820Type.RESERVED),
            E820Entry(BIOS_AREA_START, HIGH_MEMORY_START - BIOS_AREA_START, E820Type.RESERVED),
            E820Entry(HIGH_MEMORY_START, self.lowmem_end() - HIGH_MEMORY_START, E820Type.RAM),
        ]
        entries += [E820Entry(r.guest_phys_addr, r.size, E820Type.RAM) for r in self.regions[1:]]
        entries += list(reserved)
        return sorted(entries, key=lambda e: e.addr)

    def close(self) -> None:
        """Give guest RAM back to the host. A view a device still holds would keep the
        mapping open: its pages are released all the same (MADV_DONTNEED), so a process
        that runs VMs one after another does not grow by a guest's RAM each time."""
        for _first, _last, ram in self._region_views:
            ram.release()
        self._view.release()
        try:
            self._map.close()
        except BufferError:
            self._map.madvise(mmap.MADV_DONTNEED)
