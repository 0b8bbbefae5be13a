"""PCI-to-PCI bridges (type 1 header): bus numbers, and the windows that decide what a
bridge forwards downstream (PCI-to-PCI Bridge Architecture 1.2, chapter 3.2.5).

IO windows are 4 KiB aligned and granular, memory windows 1 MiB; the prefetchable window
here is 64-bit. A window forwards only while base <= limit and the bridge's command
register enables that kind of decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

from pcivm.pci import regs as R
from pcivm.pci.bus import PciBus
from pcivm.pci.function import IO, PciFunction

IO_WINDOW_GRANULE = 0x1000
MEM_WINDOW_GRANULE = 0x100000


@dataclass(frozen=True)
class Window:
    base: int
    limit: int  # inclusive

    @property
    def size(self) -> int:
        return self.limit - self.base + 1

    def contains(self, address: int, size: int) -> bool:
        return self.base <= address and address + size - 1 <= self.limit


@dataclass(frozen=True)
class Reserve:
    """Resources a port keeps for hotplug (QEMU's io-reserve, mem-reserve, ...)."""

    bus: int = 0
    io: int = 0
    mem: int = 0
    pref64: int = 0


class PciBridge(PciFunction):
    header_type = R.PCI_HEADER_TYPE_BRIDGE
    bar_slots = 2
    # A port whose secondary side is a PCI Express link (root and downstream ports).
    has_link_below = False
    # The secondary bus is PCI Express.
    express_below = False
    # Hot-plug capable: SeaBIOS-like firmware gives such a port room only on request.
    hotplug = False

    def __init__(self, name: str, vendor: int, device: int, revision: int = 0, **kwargs):
        super().__init__(name, vendor, device, R.PCI_CLASS_BRIDGE_PCI, revision, **kwargs)
        self.secondary = PciBus(name, self.express_below, parent=self)
        self.reserve = Reserve()
        c = self.config
        for offset, size in (
            (R.PCI_PRIMARY_BUS, 1),
            (R.PCI_SECONDARY_BUS, 1),
            (R.PCI_SUBORDINATE_BUS, 1),
            (R.PCI_SEC_LATENCY_TIMER, 1),
            (R.PCI_IO_BASE_UPPER16, 2),
            (R.PCI_IO_LIMIT_UPPER16, 2),
            (R.PCI_PREF_BASE_UPPER32, 4),
            (R.PCI_PREF_LIMIT_UPPER32, 4),
        ):
            c.set_wmask(offset, size, (1 << (8 * size)) - 1)
        c.set(R.PCI_IO_BASE, 1, R.PCI_IO_RANGE_TYPE_32)
        c.set(R.PCI_IO_LIMIT, 1, R.PCI_IO_RANGE_TYPE_32)
        c.set_wmask(R.PCI_IO_BASE, 1, 0xF0)
        c.set_wmask(R.PCI_IO_LIMIT, 1, 0xF0)
        c.set_wmask(R.PCI_MEMORY_BASE, 2, 0xFFF0)
        c.set_wmask(R.PCI_MEMORY_LIMIT, 2, 0xFFF0)
        c.set(R.PCI_PREF_MEMORY_BASE, 2, R.PCI_PREF_RANGE_TYPE_64)
        c.set(R.PCI_PREF_MEMORY_LIMIT, 2, R.PCI_PREF_RANGE_TYPE_64)
        c.set_wmask(R.PCI_PREF_MEMORY_BASE, 2, 0xFFF0)
        c.set_wmask(R.PCI_PREF_MEMORY_LIMIT, 2, 0xFFF0)
        c.set_w1cmask(R.PCI_SEC_STATUS, 2, R.PCI_STATUS_W1C)
        c.set_wmask(
            R.PCI_BRIDGE_CONTROL,
            2,
            R.PCI_BRIDGE_CTL_PARITY
            | R.PCI_BRIDGE_CTL_SERR
            | R.PCI_BRIDGE_CTL_ISA
            | R.PCI_BRIDGE_CTL_VGA
            | R.PCI_BRIDGE_CTL_BUS_RESET,
        )
        self.close_windows()

    # -- bus numbers --------------------------------------------------------------------

    @property
    def secondary_bus_number(self) -> int:
        return self.config.get(R.PCI_SECONDARY_BUS, 1)

    @property
    def subordinate_bus_number(self) -> int:
        return self.config.get(R.PCI_SUBORDINATE_BUS, 1)

    def set_bus_numbers(self, primary: int, secondary: int, subordinate: int) -> None:
        self.config.set(R.PCI_PRIMARY_BUS, 1, primary)
        self.config.set(R.PCI_SECONDARY_BUS, 1, secondary)
        self.config.set(R.PCI_SUBORDINATE_BUS, 1, subordinate)

    # -- windows ------------------------------------------------------------------------

    def io_window(self) -> Window | None:
        c = self.config
        base = ((c.get(R.PCI_IO_BASE, 1) & 0xF0) << 8) | (c.get(R.PCI_IO_BASE_UPPER16, 2) << 16)
        limit = (
            ((c.get(R.PCI_IO_LIMIT, 1) & 0xF0) << 8)
            | (c.get(R.PCI_IO_LIMIT_UPPER16, 2) << 16)
            | 0xFFF
        )
        return Window(base, limit) if base <= limit else None

    def mem_window(self) -> Window | None:
        c = self.config
        base = (c.get(R.PCI_MEMORY_BASE, 2) & 0xFFF0) << 16
        limit = ((c.get(R.PCI_MEMORY_LIMIT, 2) & 0xFFF0) << 16) | 0xFFFFF
        return Window(base, limit) if base <= limit else None

    def pref_window(self) -> Window | None:
        c = self.config
        base = ((c.get(R.PCI_PREF_MEMORY_BASE, 2) & 0xFFF0) << 16) | (
            c.get(R.PCI_PREF_BASE_UPPER32, 4) << 32
        )
        limit = (
            ((c.get(R.PCI_PREF_MEMORY_LIMIT, 2) & 0xFFF0) << 16)
            | (c.get(R.PCI_PREF_LIMIT_UPPER32, 4) << 32)
            | 0xFFFFF
        )
        return Window(base, limit) if base <= limit else None

    def forwarded_windows(self, kind: str) -> list[Window]:
        """The windows this bridge forwards downstream now, for `kind` (IO or MEM)."""
        if not self.decodes(kind):
            return []
        windows = [self.io_window()] if kind == IO else [self.mem_window(), self.pref_window()]
        return [w for w in windows if w is not None]

    def close_windows(self) -> None:
        """Base above limit: nothing is forwarded (the state firmware leaves unused)."""
        c = self.config
        c.set(R.PCI_IO_BASE, 1, 0xF0 | R.PCI_IO_RANGE_TYPE_32)
        c.set(R.PCI_IO_LIMIT, 1, R.PCI_IO_RANGE_TYPE_32)
        c.set(R.PCI_IO_BASE_UPPER16, 2, 0)
        c.set(R.PCI_IO_LIMIT_UPPER16, 2, 0)
        c.set(R.PCI_MEMORY_BASE, 2, 0xFFF0)
        c.set(R.PCI_MEMORY_LIMIT, 2, 0)
        c.set(R.PCI_PREF_MEMORY_BASE, 2, 0xFFF0 | R.PCI_PREF_RANGE_TYPE_64)
        c.set(R.PCI_PREF_MEMORY_LIMIT, 2, R.PCI_PREF_RANGE_TYPE_64)
        c.set(R.PCI_PREF_BASE_UPPER32, 4, 0xFFFFFFFF)
        c.set(R.PCI_PREF_LIMIT_UPPER32, 4, 0)

    def set_io_window(self, window: Window) -> None:
        c = self.config
        c.set(R.PCI_IO_BASE, 1, ((window.base >> 8) & 0xF0) | R.PCI_IO_RANGE_TYPE_32)
        c.set(R.PCI_IO_LIMIT, 1, ((window.limit >> 8) & 0xF0) | R.PCI_IO_RANGE_TYPE_32)
        c.set(R.PCI_IO_BASE_UPPER16, 2, window.base >> 16)
        c.set(R.PCI_IO_LIMIT_UPPER16, 2, window.limit >> 16)

    def set_mem_window(self, window: Window) -> None:
        self.config.set(R.PCI_MEMORY_BASE, 2, (window.base >> 16) & 0xFFF0)
        self.config.set(R.PCI_MEMORY_LIMIT, 2, (window.limit >> 16) & 0xFFF0)

    def set_pref_window(self, window: Window) -> None:
        c = self.config
        c.set(R.PCI_PREF_MEMORY_BASE, 2, ((window.base >> 16) & 0xFFF0) | R.PCI_PREF_RANGE_TYPE_64)
        c.set(
            R.PCI_PREF_MEMORY_LIMIT, 2, ((window.limit >> 16) & 0xFFF0) | R.PCI_PREF_RANGE_TYPE_64
        )
        c.set(R.PCI_PREF_BASE_UPPER32, 4, window.base >> 32)
        c.set(R.PCI_PREF_LIMIT_UPPER32, 4, window.limit >> 32)

    def _touches_decode(self, offset: int, size: int) -> bool:
        # Bus numbers and windows change what is reachable below, as BARs do.
        end = offset + size
        return super()._touches_decode(offset, size) or (
            offset < R.PCI_BRIDGE_CONTROL + 2 and end > R.PCI_PRIMARY_BUS
        )
