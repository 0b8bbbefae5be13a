"""Address spaces (port IO and MMIO): ranges mapped to device handlers.

A handler is any object with `read(offset, size) -> int` and `write(offset, size, value)`,
where `offset` is relative to the start of its range. Accesses where nothing is mapped read
as all-ones and are logged once per address, at debug level: a probing guest is normal.
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


class BusDevice(Protocol):
    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


class BusConflict(ValueError):
    """Two ranges overlap: a programming error in the machine's layout."""


@dataclass(frozen=True)
class Mapping:
    base: int
    size: int
    device: BusDevice
    name: str

    @property
    def end(self) -> int:
        return self.base + self.size


class AddressSpace:
    """Non-overlapping ranges in one address space, found by binary search."""

    def __init__(self, name: str):
        self.name = name
        self._bases: list[int] = []
        self._maps: list[Mapping] = []
        self._unmapped_seen: set[int] = set()
        # Exit statistics: accesses per mapping name (or per unmapped address).
        self.accesses: Counter[str] = Counter()

    def register(self, base: int, size: int, device: BusDevice, name: str) -> Mapping:
        mapping = Mapping(base, size, device, name)
        i = bisect.bisect_left(self._bases, base)
        if (i > 0 and self._maps[i - 1].end > base) or (
            i < len(self._maps) and self._maps[i].base < base + size
        ):
            raise BusConflict(f"{self.name}: {name} at {base:#x}+{size:#x} overlaps")
        self._bases.insert(i, base)
        self._maps.insert(i, mapping)
        return mapping

    def unregister(self, mapping: Mapping) -> None:
        i = self._maps.index(mapping)
        del self._maps[i]
        del self._bases[i]

    def find(self, addr: int) -> Mapping | None:
        i = bisect.bisect_right(self._bases, addr) - 1
        if i >= 0:
            m = self._maps[i]
            if addr < m.end:
                return m
        return None

    def read(self, addr: int, size: int) -> int:
        m = self.find(addr)
        if m is None:
            self._note_unmapped(addr, "read")
            return (1 << (8 * size)) - 1
        self.accesses[m.name] += 1
        return m.device.read(addr - m.base, size)

    def write(self, addr: int, size: int, value: int) -> None:
        m = self.find(addr)
        if m is None:
            self._note_unmapped(addr, "write")
            return
        self.accesses[m.name] += 1
        m.device.write(addr - m.base, size, value)

    def _note_unmapped(self, addr: int, kind: str) -> None:
        self.accesses[f"unmapped {addr:#x}"] += 1
        if addr not in self._unmapped_seen:
            self._unmapped_seen.add(addr)
            log.debug("%s %s at %#x: nothing mapped there", self.name, kind, addr)
