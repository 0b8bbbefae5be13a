"""Guest RAM: bounds checks and the layout around the 32-bit PCI hole."""

import errno
import mmap
import struct

import pytest

from pcivm.memory import FOUR_GIB, E820Type, GiB, GuestMemory, GuestMemoryError, MiB


def test_ram_above_the_hole_is_mapped_at_4_gib():
    memory = GuestMemory(4 * GiB, lowmem_limit=3 * GiB)
    assert [(r.guest_phys_addr, r.size) for r in memory.regions] == [
        (0, 3 * GiB),
        (FOUR_GIB, 1 * GiB),
    ]
    memory.write(FOUR_GIB + 10, b"hi")
    assert memory.read(FOUR_GIB + 10, 2) == b"hi"
    assert memory.e820()[-1].addr == FOUR_GIB


def test_small_ram_has_one_region_and_a_reserved_legacy_hole():
    memory = GuestMemory(256 * MiB)
    assert len(memory.regions) == 1
    types = {(e.addr, e.type) for e in memory.e820()}
    assert (0x9FC00, E820Type.RESERVED) in types
    assert (0xE0000, E820Type.RESERVED) in types


@pytest.mark.parametrize(
    "gpa,length",
    [(256 * MiB - 1, 2), (256 * MiB, 1), (-1, 1), (0, -1), (2**64 - 1, 2), (0, 300 * MiB)],
)
def test_ranges_leaving_ram_are_refused(gpa, length):
    memory = GuestMemory(256 * MiB)
    with pytest.raises(GuestMemoryError):
        memory.view(gpa, length)


def test_a_range_spanning_the_hole_is_refused():
    memory = GuestMemory(4 * GiB, lowmem_limit=3 * GiB)
    with pytest.raises(GuestMemoryError):
        memory.view(3 * GiB - 4, 8)


def test_integer_accessors_are_little_endian():
    memory = GuestMemory(4 * MiB)
    memory.write_u32(0x1000, 0x11223344)
    assert memory.read(0x1000, 4) == b"\x44\x33\x22\x11"
    memory.write_u64(0x2000, 2**64 - 2)
    assert memory.read_u64(0x2000) == 2**64 - 2


def test_iovecs_check_every_range_and_name_host_memory_inside_guest_ram():
    memory = GuestMemory(8 * MiB, lowmem_limit=4 * MiB)  # 4 MiB low, 4 MiB at 4 GiB
    memory.write(0x1000, b"abcd")
    memory.write(FOUR_GIB + 0x10, b"wxyz")
    low = memory.iovec([0x1000, 0x1002], [2, 2])
    assert [bytes(v) for v in low.views()] == [b"ab", b"cd"]
    assert low.bases == [memory.host_addr + 0x1000, memory.host_addr + 0x1002]
    high = memory.iovec([FOUR_GIB + 0x10], [4])
    assert [bytes(v) for v in high.views()] == [b"wxyz"]
    assert high.bases == [memory.host_addr + 4 * MiB + 0x10]  # high RAM follows low RAM
    assert len(memory.iovec([], [])) == 0
    # Ranges in both regions, and a bulk bound that is loose: each judged on its own.
    both = memory.iovec([0x1000, FOUR_GIB + 0x10], [4, 4])
    assert [bytes(v) for v in both.views()] == [b"abcd", b"wxyz"]
    edge = memory.iovec([0x1000, 4 * MiB - 4], [16, 4])
    assert edge.lengths == [16, 4] and edge.nbytes == 20
    for addrs, lengths in (
        ([4 * MiB - 2], [4]),  # runs past the end of low RAM
        ([FOUR_GIB + 4 * MiB - 2], [4]),  # and of high RAM
        ([0x1000, 5 * MiB], [4, 4]),  # one range in the hole
        ([-4], [8]),
        ([0x1000], [-1]),
    ):
        with pytest.raises(GuestMemoryError):
            memory.iovec(addrs, lengths)


def _vm_flags(addr: int) -> list[str]:
    """The kernel's VmFlags of this process's mapping that holds `addr` (proc(5))."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split()[0]
            if "-" in first and ":" not in first:
                start, end = (int(x, 16) for x in first.split("-"))
                inside = start <= addr < end
            elif inside and first == "VmFlags:":
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {addr:#x}")


def test_ram_is_2_mib_aligned_asks_for_huge_pages_and_stays_out_of_forks():
    # KVM maps guest RAM with 2 MiB pages only where host and guest addresses are both
    # 2 MiB-aligned and the host memory is a huge page: that is what cuts nested faults.
    memory = GuestMemory(8 * MiB)
    assert memory.host_addr % (2 * MiB) == 0
    flags = _vm_flags(memory.host_addr)
    assert "hg" in flags and "dc" in flags  # MADV_HUGEPAGE, MADV_DONTFORK
    memory.close()


def test_ram_starts_at_a_multiple_of_4_gib_unless_the_host_refuses_the_room(monkeypatch):
    # At a multiple of 4 GiB, tables of guest ranges translate as byte columns
    # (range_table); a host that refuses the larger mapping still gets a working VM.
    memory = GuestMemory(64 * MiB)
    assert memory.host_addr % FOUR_GIB == 0
    assert memory._range_checker._columns is not None
    assert "nr" in _vm_flags(memory.host_addr)  # MAP_NORESERVE: the slack costs nothing
    memory.close()
    real_mmap = mmap.mmap

    def refuse_large(fileno, length, flags, *args, **kwargs):
        if length > FOUR_GIB:
            raise OSError(errno.ENOMEM, "Cannot allocate memory")
        return real_mmap(fileno, length, flags, *args, **kwargs)

    monkeypatch.setattr(mmap, "mmap", refuse_large)
    memory = GuestMemory(64 * MiB)
    assert memory.host_addr % (2 * MiB) == 0
    assert memory._range_checker._columns is None or memory.host_addr % FOUR_GIB == 0
    memory.write(0x1000, b"still RAM")
    iov = memory.iovec_of_table(struct.pack("<QII", 0x1000, 9, 0) * 20)
    assert bytes(iov.view(0)) == b"still RAM" and iov.nbytes == 180
    memory.close()
