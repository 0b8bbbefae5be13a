"""A PCI bus: up to 32 slots of up to 8 functions, below a host bridge or a bridge."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pcivm.pci.regs import PCI_FUNCTIONS_PER_SLOT, PCI_SLOTS_PER_BUS

if TYPE_CHECKING:
    from pcivm.pci.bridge import PciBridge
    from pcivm.pci.function import PciFunction


class PciBus:
    def __init__(self, name: str, express: bool, parent: PciBridge | None = None):
        self.name = name  # QEMU's bus name: "pci.0", "pcie.0", or the bridge's id
        self.express = express
        self.parent = parent  # the bridge above, None for a root bus
        self.functions: dict[tuple[int, int], PciFunction] = {}

    @property
    def is_root(self) -> bool:
        return self.parent is None

    @property
    def number(self) -> int:
        """The bus number the guest sees now (from the bridge above, 0 for the root)."""
        return 0 if self.parent is None else self.parent.secondary_bus_number

    @property
    def single_device(self) -> bool:
        """Below a PCI Express port only device 0 exists (a link has one device)."""
        return self.parent is not None and self.parent.has_link_below

    @property
    def slot_count(self) -> int:
        return 1 if self.single_device else PCI_SLOTS_PER_BUS

    def function(self, slot: int, fn: int) -> PciFunction | None:
        found = self.functions.get((slot, fn))
        if found is None:
            return None
        # Functions other than 0 are visible only when function 0 says multifunction.
        if fn and not getattr(self.functions.get((slot, 0)), "multifunction", False):
            return None
        return found

    def free_slot(self) -> int | None:
        for slot in range(self.slot_count):
            if not any((slot, fn) in self.functions for fn in range(PCI_FUNCTIONS_PER_SLOT)):
                return slot
        return None

    def attach(self, function: PciFunction, slot: int, fn: int) -> None:
        self.functions[(slot, fn)] = function
        function.bus = self
        function.slot = slot
        function.fn = fn

    def ordered(self) -> list[PciFunction]:
        """Functions in slot.fn order, as a scan finds them."""
        return [self.functions[key] for key in sorted(self.functions)]

    def walk(self):
        """Every function on this bus and below it, depth first in scan order."""
        for function in self.ordered():
            yield function
            child = getattr(function, "secondary", None)
            if child is not None:
                yield from child.walk()
