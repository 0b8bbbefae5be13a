"""The address ranges a machine gives its PCI hierarchy: where the allocator may place
IO BARs and windows, 32-bit memory, and 64-bit memory.

IO: everything below 0x1000 belongs to the platform (PIC, PIT, the UART at 0x3f8, the
i8042, the RTC, ACPI PM at 0x600, conf1 at 0xcf8): PCI gets 0x1000-0xffff, which is
exactly fifteen 4 KiB bridge IO windows.

32-bit memory: the hole between the top of low RAM (or the ECAM window) and the IOAPIC
at 0xfec00000; the IOAPIC, HPET (0xfed00000) and the local APIC (0xfee00000) lie above it.
- pc: from the top of low RAM rounded up to 256 MiB, but never below 0xc0000000
  (RAM below 4 GiB ends at 3 GiB at most, see memory.py).
- q35: from 0xc0000000; the ECAM window occupies 0xb0000000-0xbfffffff, so low RAM must
  end at 0xb0000000 or below.

64-bit memory: 64 GiB starting at 32 GiB, or at the top of RAM rounded up to 1 GiB when
RAM reaches higher; it stays below 2^40 so that any host CPU's physical address width
(and the guest's, which KVM copies from it) reaches it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pcivm.pci.bridge import Window

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

PCI_IO_START = 0x1000
PCI_IO_END = 0xFFFF
IOAPIC_BASE = 0xFEC00000
PC_MMIO32_FLOOR = 0xC0000000
Q35_ECAM_BASE = 0xB0000000
Q35_ECAM_SIZE = 256 * MiB
MMIO64_MIN_BASE = 32 * GiB
MMIO64_SIZE = 64 * GiB
PHYS_ADDR_LIMIT = 1 << 40
LOWMEM_GRANULE = 256 * MiB
HIGHMEM_GRANULE = 1 * GiB


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


@dataclass(frozen=True)
class AddressLayout:
    """What PCI may use. `*_reserved` are fixed platform ranges inside those windows that
    the allocator must leave alone (none today; the platform's ports are all below 0x1000)."""

    machine: str
    io: Window
    mem32: Window
    mem64: Window | None
    io_reserved: tuple[Window, ...] = ()
    mem32_reserved: tuple[Window, ...] = ()
    mem64_reserved: tuple[Window, ...] = ()
    ecam: Window | None = None  # q35's MMCONFIG window (not PCI's to allocate)

    def space(self, name: str) -> Window | None:
        return {"io": self.io, "mem32": self.mem32, "mem64": self.mem64}[name]

    def reserved(self, name: str) -> tuple[Window, ...]:
        return {"io": self.io_reserved, "mem32": self.mem32_reserved, "mem64": self.mem64_reserved}[
            name
        ]


def machine_layout(
    machine: str, ram_size: int, lowmem_end: int, high_ram_end: int | None = None
) -> AddressLayout:
    """The layout of `machine` ("pc" or "q35") with `ram_size` bytes of RAM, low RAM
    ending at `lowmem_end` and RAM above 4 GiB ending at `high_ram_end` (None or 0 when
    all RAM is below 4 GiB)."""
    io = Window(PCI_IO_START, PCI_IO_END)
    ecam = None
    if machine == "pc":
        base = max(_align_up(lowmem_end, LOWMEM_GRANULE), PC_MMIO32_FLOOR)
    elif machine == "q35":
        if lowmem_end > Q35_ECAM_BASE:
            raise ValueError(
                f"q35: low RAM ends at {lowmem_end:#x}, above the ECAM window at {Q35_ECAM_BASE:#x}"
            )
        ecam = Window(Q35_ECAM_BASE, Q35_ECAM_BASE + Q35_ECAM_SIZE - 1)
        base = ecam.limit + 1
    else:
        raise ValueError(f"unknown machine {machine!r}")
    if base >= IOAPIC_BASE:
        raise ValueError(f"{machine}: no room for 32-bit PCI memory above {base:#x}")
    mem32 = Window(base, IOAPIC_BASE - 1)

    top = high_ram_end or 0
    if not top and ram_size > lowmem_end:
        top = 4 * GiB + ram_size - lowmem_end  # RAM that does not fit below goes above 4 GiB
    base64 = max(MMIO64_MIN_BASE, _align_up(top, HIGHMEM_GRANULE))
    limit64 = min(base64 + MMIO64_SIZE, PHYS_ADDR_LIMIT) - 1
    mem64 = Window(base64, limit64) if limit64 > base64 else None
    return AddressLayout(machine, io, mem32, mem64, ecam=ecam)
