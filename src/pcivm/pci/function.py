"""A PCI function: identity, BARs, interrupt pin, and what changes when the guest
programs its config space.

A function knows nothing of KVM or of where it sits in the address map: the bus it is
plugged into decides whether its BARs are reachable (see host.py) and tells it through
`bars_mapped`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from pcivm.pci import regs as R
from pcivm.pci.config_space import ConfigSpace

if TYPE_CHECKING:
    from pcivm.pci.bus import PciBus

IO, MEM = "io", "mem"
BAR_COUNT = 6
# An IO BAR decodes 16 bits on x86: the port space ends at 64 KiB.
IO_SPACE_END = 0x10000


class BarHandler(Protocol):
    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


@dataclass
class Bar:
    """One base address register as the function declares it."""

    index: int
    kind: str  # IO or MEM
    size: int  # a power of two
    handler: BarHandler | None = None
    prefetch: bool = False
    mem64: bool = False
    name: str = ""
    # Where the BAR is reachable now (None: not decoded, not forwarded, or unassigned).
    mapped_at: int | None = field(default=None, compare=False)

    def flags(self) -> int:
        if self.kind == IO:
            return R.PCI_BASE_ADDRESS_SPACE_IO
        return (R.PCI_BASE_ADDRESS_MEM_TYPE_64 if self.mem64 else 0) | (
            R.PCI_BASE_ADDRESS_MEM_PREFETCH if self.prefetch else 0
        )


class PciFunction:
    """Type 0 header function; bridges extend it (bridge.py)."""

    header_type = R.PCI_HEADER_TYPE_NORMAL
    bar_slots = BAR_COUNT

    def __init__(
        self,
        name: str,
        vendor: int,
        device: int,
        class_code: int,
        revision: int = 0,
        subsystem_vendor: int = 0,
        subsystem: int = 0,
        express: bool = False,
        interrupt_pin: int = 0,
    ):
        self.name = name  # the user's id=, or a generated name
        self.express = express
        self.config = ConfigSpace(R.PCI_CFG_SPACE_EXP_SIZE if express else R.PCI_CFG_SPACE_SIZE)
        self.bars: dict[int, Bar] = {}
        self.bus: PciBus | None = None
        self.slot = 0
        self.fn = 0
        self.multifunction = False
        self.driver = type(self).__name__
        # Called with this function when a write may have moved or (un)enabled a BAR or
        # a window: the host bridge recomputes what is reachable.
        self.on_decode_change: Callable[[PciFunction], None] | None = None
        # Called with (function, level) when the INTx line changes.
        self.on_intx: Callable[[PciFunction, int], None] | None = None
        self._intx_level = 0
        c = self.config
        c.set(R.PCI_VENDOR_ID, 2, vendor)
        c.set(R.PCI_DEVICE_ID, 2, device)
        c.set(R.PCI_REVISION_ID, 1, revision)
        c.set(R.PCI_CLASS_PROG, 3, class_code)
        c.set(R.PCI_HEADER_TYPE, 1, self.header_type)
        c.set_wmask(
            R.PCI_COMMAND,
            2,
            R.PCI_COMMAND_IO
            | R.PCI_COMMAND_MEMORY
            | R.PCI_COMMAND_MASTER
            | R.PCI_COMMAND_PARITY
            | R.PCI_COMMAND_SERR
            | R.PCI_COMMAND_INTX_DISABLE,
        )
        c.set_w1cmask(R.PCI_STATUS, 2, R.PCI_STATUS_W1C)
        c.set_wmask(R.PCI_CACHE_LINE_SIZE, 1, 0xFF)
        c.set_wmask(R.PCI_LATENCY_TIMER, 1, 0xFF)
        c.set_wmask(R.PCI_INTERRUPT_LINE, 1, 0xFF)
        c.set(R.PCI_INTERRUPT_PIN, 1, interrupt_pin)
        if self.header_type == R.PCI_HEADER_TYPE_NORMAL:
            c.set(R.PCI_SUBSYSTEM_VENDOR_ID, 2, subsystem_vendor)
            c.set(R.PCI_SUBSYSTEM_ID, 2, subsystem)

    # -- identity -----------------------------------------------------------------------

    @property
    def vendor_id(self) -> int:
        return self.config.get(R.PCI_VENDOR_ID, 2)

    @property
    def device_id(self) -> int:
        return self.config.get(R.PCI_DEVICE_ID, 2)

    @property
    def class_code(self) -> int:
        return self.config.get(R.PCI_CLASS_PROG, 3)

    @property
    def interrupt_pin(self) -> int:
        return self.config.get(R.PCI_INTERRUPT_PIN, 1)

    def set_multifunction(self, on: bool) -> None:
        self.multifunction = on
        header = self.config.get(R.PCI_HEADER_TYPE, 1) & ~R.PCI_HEADER_TYPE_MULTIFUNCTION
        self.config.set(
            R.PCI_HEADER_TYPE, 1, header | (R.PCI_HEADER_TYPE_MULTIFUNCTION if on else 0)
        )

    # -- BARs ---------------------------------------------------------------------------

    def add_bar(self, bar: Bar) -> Bar:
        if bar.size & (bar.size - 1) or bar.size < (4 if bar.kind == IO else 16):
            raise ValueError(f"{self.name}: BAR{bar.index} size {bar.size:#x} is invalid")
        limit = self.bar_slots - (2 if bar.mem64 else 1)
        if not 0 <= bar.index <= limit or bar.index in self.bars:
            raise ValueError(f"{self.name}: BAR{bar.index} is not free")
        if bar.mem64 and bar.index + 1 in self.bars:
            raise ValueError(f"{self.name}: BAR{bar.index + 1} is taken by a 64-bit BAR")
        if bar.kind == IO and (bar.prefetch or bar.mem64):
            raise ValueError(f"{self.name}: an IO BAR cannot be prefetchable or 64-bit")
        self.bars[bar.index] = bar
        offset = R.PCI_BASE_ADDRESS_0 + 4 * bar.index
        low_mask = 0xFFFFFFFC if bar.kind == IO else 0xFFFFFFF0
        self.config.set(offset, 4, bar.flags())
        self.config.set_wmask(offset, 4, low_mask & ~(bar.size - 1) & 0xFFFFFFFF)
        if bar.mem64:
            self.config.set_wmask(offset + 4, 4, (~(bar.size - 1) >> 32) & 0xFFFFFFFF)
        return bar

    def bar_address(self, bar: Bar) -> int:
        """The address the BAR register holds now (whether or not it decodes)."""
        offset = R.PCI_BASE_ADDRESS_0 + 4 * bar.index
        low = self.config.get(offset, 4)
        if bar.kind == IO:
            return low & ~0x3
        address = low & ~0xF
        if bar.mem64:
            address |= self.config.get(offset + 4, 4) << 32
        return address

    def set_bar_address(self, bar: Bar, address: int) -> None:
        """Program the BAR as firmware does (no masks)."""
        offset = R.PCI_BASE_ADDRESS_0 + 4 * bar.index
        self.config.set(offset, 4, (address & 0xFFFFFFFF & ~(bar.size - 1)) | bar.flags())
        if bar.mem64:
            self.config.set(offset + 4, 4, address >> 32)

    def decodes(self, kind: str) -> bool:
        command = self.config.get(R.PCI_COMMAND, 2)
        return bool(command & (R.PCI_COMMAND_IO if kind == IO else R.PCI_COMMAND_MEMORY))

    def decoded_bar_ranges(self) -> list[tuple[Bar, int]]:
        """(bar, address) for each BAR this function itself would answer: decoding is on
        and the address is plausible (not 0, not past the end of its space)."""
        out = []
        for bar in self.bars.values():
            if not self.decodes(bar.kind):
                continue
            address = self.bar_address(bar)
            end = address + bar.size
            if address == 0 or (bar.kind == IO and end > IO_SPACE_END) or end > 1 << 64:
                continue
            out.append((bar, address))
        return out

    def bars_mapped(self) -> None:
        """Hook: the reachable addresses of this function's BARs (Bar.mapped_at) changed."""

    # -- config access ------------------------------------------------------------------

    def read_config(self, offset: int, size: int) -> int:
        return self.config.read(offset, size)

    def write_config(self, offset: int, size: int, value: int) -> None:
        self.config.write(offset, size, value)
        if offset < R.PCI_COMMAND + 2 and offset + size > R.PCI_COMMAND:
            # INTx disable may have changed: the line follows the pending status.
            self.set_intx(self.config.get(R.PCI_STATUS, 2) & R.PCI_STATUS_INTERRUPT)
        if self._touches_decode(offset, size) and self.on_decode_change:
            self.on_decode_change(self)

    def _touches_decode(self, offset: int, size: int) -> bool:
        end = offset + size
        command = offset < R.PCI_COMMAND + 2 and end > R.PCI_COMMAND
        bars = offset < R.PCI_BASE_ADDRESS_0 + 4 * self.bar_slots and end > R.PCI_BASE_ADDRESS_0
        return command or bars

    # -- INTx ---------------------------------------------------------------------------

    def set_intx(self, level: int) -> None:
        """Raise or lower this function's INTx line (unless the guest disabled INTx)."""
        status = self.config.get(R.PCI_STATUS, 2)
        if level:
            status |= R.PCI_STATUS_INTERRUPT
        else:
            status &= ~R.PCI_STATUS_INTERRUPT
        self.config.set(R.PCI_STATUS, 2, status)
        disabled = self.config.get(R.PCI_COMMAND, 2) & R.PCI_COMMAND_INTX_DISABLE
        effective = 1 if level and not disabled else 0
        if effective != self._intx_level:
            self._intx_level = effective
            if self.on_intx:
                self.on_intx(self, effective)

    # -- describing ---------------------------------------------------------------------

    @property
    def bdf(self) -> str:
        bus = self.bus.number if self.bus else 0
        return f"0000:{bus:02x}:{self.slot:02x}.{self.fn}"
