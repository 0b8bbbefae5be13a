"""A function's configuration space: bytes plus per-bit masks that say what a write may
change (read-only, read-write, write-1-to-clear), and the capability lists.

Masks make BAR sizing work the way hardware does: the address bits below the BAR's size
are not writable, so writing all-ones reads back the size mask.
"""

from __future__ import annotations

from pcivm.pci.regs import (
    PCI_CAPABILITY_LIST,
    PCI_CFG_SPACE_SIZE,
    PCI_EXT_CAP_START,
    PCI_STATUS,
    PCI_STATUS_CAP_LIST,
)


class ConfigSpace:
    def __init__(self, size: int = PCI_CFG_SPACE_SIZE):
        self.size = size
        self.data = bytearray(size)
        self.wmask = bytearray(size)  # bits a write sets as given
        self.w1cmask = bytearray(size)  # bits a write of 1 clears
        self._last_cap = 0  # offset of the last standard capability, 0 if none
        self._next_cap = 0x40  # where the next standard capability goes
        self._last_ext_cap = 0
        self._next_ext_cap = PCI_EXT_CAP_START

    # -- guest access -----------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if offset < 0 or offset + size > self.size:
            return (1 << (8 * size)) - 1 if offset >= self.size else 0
        return int.from_bytes(self.data[offset : offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        if offset < 0 or offset + size > self.size:
            return
        for i in range(size):
            byte = (value >> (8 * i)) & 0xFF
            pos = offset + i
            wmask, w1c = self.wmask[pos], self.w1cmask[pos]
            old = self.data[pos]
            new = (old & ~wmask) | (byte & wmask)
            new &= ~(byte & w1c) & 0xFF
            self.data[pos] = new

    # -- model side (no masks) --------------------------------------------------------

    def get(self, offset: int, size: int) -> int:
        return int.from_bytes(self.data[offset : offset + size], "little")

    def set(self, offset: int, size: int, value: int) -> None:
        self.data[offset : offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(
            size, "little"
        )

    def set_wmask(self, offset: int, size: int, mask: int) -> None:
        self.wmask[offset : offset + size] = mask.to_bytes(size, "little")

    def set_w1cmask(self, offset: int, size: int, mask: int) -> None:
        self.w1cmask[offset : offset + size] = mask.to_bytes(size, "little")

    # -- capabilities -----------------------------------------------------------------

    def add_capability(self, cap_id: int, length: int) -> int:
        """Reserve a standard capability of `length` bytes (id and next pointer included)
        and link it at the end of the list; returns its offset."""
        offset = (self._next_cap + 3) & ~3
        if offset + length > PCI_CFG_SPACE_SIZE:
            raise ValueError("no room left for a capability")
        self.data[offset] = cap_id
        self.data[offset + 1] = 0
        if self._last_cap:
            self.data[self._last_cap + 1] = offset
        else:
            self.data[PCI_CAPABILITY_LIST] = offset
            self.set(PCI_STATUS, 2, self.get(PCI_STATUS, 2) | PCI_STATUS_CAP_LIST)
        self._last_cap = offset
        self._next_cap = offset + length
        return offset

    def capabilities(self) -> list[tuple[int, int]]:
        """(id, offset) of each standard capability, following the list as a guest would."""
        found, offset, seen = [], self.data[PCI_CAPABILITY_LIST] & ~3, set()
        while offset and offset not in seen:
            seen.add(offset)
            found.append((self.data[offset], offset))
            offset = self.data[offset + 1] & ~3
        return found

    def add_ext_capability(self, cap_id: int, version: int, length: int) -> int:
        """Reserve an extended capability (PCIe config space, offset 0x100 and up)."""
        if self.size <= PCI_CFG_SPACE_SIZE:
            raise ValueError("extended capabilities need PCI Express config space")
        offset = (self._next_ext_cap + 3) & ~3
        if offset + length > self.size:
            raise ValueError("no room left for an extended capability")
        self.set(offset, 4, cap_id | (version << 16))
        if self._last_ext_cap:
            header = self.get(self._last_ext_cap, 4)
            self.set(self._last_ext_cap, 4, (header & 0xFFFFF) | (offset << 20))
        self._last_ext_cap = offset
        self._next_ext_cap = offset + length
        return offset
