"""The host side of a PCI hierarchy: config access (conf1 ports and ECAM), deciding which
BARs are reachable, and INTx routing to the IOAPIC.

Reachability is recomputed from the config registers whenever the guest writes a command
register, a BAR, or a bridge's bus numbers or windows: a BAR answers only while its
function decodes it and every bridge above forwards its whole range.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pcivm.bus import AddressSpace, BusConflict, Mapping
from pcivm.pci.bridge import PciBridge, Window
from pcivm.pci.bus import PciBus
from pcivm.pci.function import IO, Bar, PciFunction

log = logging.getLogger(__name__)

CONF1_ADDRESS_PORT = 0xCF8
CONF1_PORTS = 8  # 0xcf8-0xcff
CONF1_ENABLE = 1 << 31
ECAM_BUS_SHIFT, ECAM_DEVFN_SHIFT = 20, 12
# GSIs 16-23 of the IOAPIC carry PCI INTx: level-triggered, active-low, shared.
PCI_INTX_GSI_BASE = 16
PCI_INTX_GSI_COUNT = 8


def root_intx_gsi(slot: int, pin: int) -> int:
    """The GSI of INTx `pin` (0 = INTA) of a root-bus slot; the DSDT's _PRT says the same."""
    return PCI_INTX_GSI_BASE + (slot + pin) % PCI_INTX_GSI_COUNT


def _intersect(windows: list[Window] | None, other: list[Window]) -> list[Window]:
    if windows is None:
        return list(other)
    out = []
    for a in windows:
        for b in other:
            base, limit = max(a.base, b.base), min(a.limit, b.limit)
            if base <= limit:
                out.append(Window(base, limit))
    return out


class _BarWindow:
    """Adapts a BAR's handler to an address-space mapping."""

    def __init__(self, bar: Bar):
        self._handler = bar.handler

    def read(self, offset: int, size: int) -> int:
        return self._handler.read(offset, size) if self._handler else (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        if self._handler:
            self._handler.write(offset, size, value)


@dataclass(frozen=True)
class _Key:
    kind: str
    address: int
    size: int
    function: int  # id()
    bar: int


class PciHost:
    """One PCI segment: the root bus and everything below it."""

    def __init__(
        self,
        root: PciBus,
        io: AddressSpace,
        mmio: AddressSpace,
        set_irq: Callable[[int, int], None],
    ):
        self.root = root
        self.io = io
        self.mmio = mmio
        self._set_irq = set_irq
        self._mapped: dict[_Key, tuple[Mapping, PciFunction, Bar]] = {}
        self._intx_count = [0] * PCI_INTX_GSI_COUNT
        self._conf1_address = 0
        self._batch = 0
        self._dirty = False
        # Config accesses per (bus, slot, fn, register): where a guest's config traffic goes.
        self.config_accesses: Counter[tuple[int, int, int, int]] = Counter()

    # -- wiring ---------------------------------------------------------------------------

    def adopt(self, function: PciFunction) -> None:
        """Connect a plugged function's decode and INTx changes to this host."""
        function.on_decode_change = self.remap
        function.on_intx = self._intx_changed

    def functions(self) -> Iterable[PciFunction]:
        return self.root.walk()

    # -- config routing ---------------------------------------------------------------------

    def find(self, bus_number: int, slot: int, fn: int) -> PciFunction | None:
        bus: PciBus = self.root
        if bus_number == 0:
            return bus.function(slot, fn)
        while True:
            for function in bus.ordered():
                if not isinstance(function, PciBridge):
                    continue
                secondary = function.secondary_bus_number
                subordinate = function.subordinate_bus_number
                if secondary == 0 or not secondary <= bus_number <= subordinate:
                    continue
                if bus_number == secondary:
                    return function.secondary.function(slot, fn)
                bus = function.secondary
                break
            else:
                return None

    def config_read(self, bus: int, slot: int, fn: int, offset: int, size: int) -> int:
        self.config_accesses[(bus, slot, fn, offset & ~3)] += 1
        function = self.find(bus, slot, fn)
        if function is None:
            return (1 << (8 * size)) - 1
        return function.read_config(offset, size)

    def config_write(self, bus: int, slot: int, fn: int, offset: int, size: int, value: int):
        self.config_accesses[(bus, slot, fn, offset & ~3)] += 1
        function = self.find(bus, slot, fn)
        if function is not None:
            function.write_config(offset, size, value)

    # -- reachability ---------------------------------------------------------------------

    def batch(self):
        """A context in which remaps are deferred to its end (firmware programming)."""
        host = self

        class _Batch:
            def __enter__(self):
                host._batch += 1

            def __exit__(self, *exc):
                host._batch -= 1
                if not host._batch and host._dirty:
                    host.remap()

        return _Batch()

    def wanted_mappings(
        self, scope: PciFunction | None = None
    ) -> dict[_Key, tuple[PciFunction, Bar]]:
        """The BAR ranges that should be reachable now: of every function, or of `scope`
        (a function, and for a bridge everything below it)."""
        wanted: dict[_Key, tuple[PciFunction, Bar]] = {}

        def place(function: PciFunction, io: list[Window] | None, mem: list[Window] | None):
            for bar, address in function.decoded_bar_ranges():
                allowed = io if bar.kind == IO else mem
                if allowed is not None and not any(w.contains(address, bar.size) for w in allowed):
                    continue
                key = _Key(bar.kind, address, bar.size, id(function), bar.index)
                wanted[key] = (function, bar)
            if isinstance(function, PciBridge):
                visit(
                    function.secondary,
                    _intersect(io, function.forwarded_windows(IO)),
                    _intersect(mem, function.forwarded_windows("mem")),
                )

        def visit(bus: PciBus, io: list[Window] | None, mem: list[Window] | None) -> None:
            for function in bus.ordered():
                if function.bus is bus and bus.function(function.slot, function.fn) is not None:
                    place(function, io, mem)

        if scope is None:
            visit(self.root, None, None)
        else:
            above = self._windows_above(scope)
            if above is not None:
                place(scope, *above)
        return wanted

    @staticmethod
    def _windows_above(function: PciFunction):
        """(io, mem) windows every bridge above `function` forwards, or None when the
        function is not visible on its bus (a function of a non-multifunction slot)."""
        bridges = []
        node = function
        while node.bus is not None:
            if node.bus.function(node.slot, node.fn) is not node:
                return None
            if node.bus.parent is None:
                break
            node = node.bus.parent
            bridges.append(node)
        io = mem = None
        for bridge in reversed(bridges):
            io = _intersect(io, bridge.forwarded_windows(IO))
            mem = _intersect(mem, bridge.forwarded_windows("mem"))
        return io, mem

    def remap(self, scope: PciFunction | None = None) -> None:
        """Bring the address spaces in line with the config registers: all of them, or
        just `scope`'s part (a function whose command register or BARs changed, or a
        bridge and everything below it) — a guest programs one function at a time, and
        a whole-tree walk per config write grows with the square of the devices."""
        if self._batch:
            self._dirty = True
            return
        if scope is None:
            self._dirty = False
            in_scope = None
        else:
            in_scope = {id(scope)}
            child = getattr(scope, "secondary", None)
            if child is not None:
                in_scope.update(id(f) for f in child.walk())
        wanted = self.wanted_mappings(scope)
        changed: set[int] = set()
        touched: dict[int, PciFunction] = {}
        for key in [
            k
            for k in self._mapped
            if k not in wanted and (in_scope is None or k.function in in_scope)
        ]:
            mapping, function, bar = self._mapped.pop(key)
            (self.io if key.kind == IO else self.mmio).unregister(mapping)
            bar.mapped_at = None
            changed.add(id(function))
            touched[id(function)] = function
        for key, (function, bar) in wanted.items():
            if key in self._mapped:
                continue
            space = self.io if key.kind == IO else self.mmio
            try:
                mapping = space.register(
                    key.address, key.size, _BarWindow(bar), f"{function.name} BAR{bar.index}"
                )
            except BusConflict:
                log.debug(
                    "%s BAR%d at %#x overlaps another range: not mapped",
                    function.name,
                    bar.index,
                    key.address,
                )
                continue
            self._mapped[key] = (mapping, function, bar)
            bar.mapped_at = key.address
            changed.add(id(function))
            touched[id(function)] = function
        for function_id in changed:
            touched[function_id].bars_mapped()

    # -- INTx -------------------------------------------------------------------------------

    def intx_gsi(self, function: PciFunction) -> int | None:
        """Where the function's INTx pin lands: swizzled through each bridge (PCI-to-PCI
        Bridge 1.2, 9.1), then the root bus's routing."""
        pin = function.interrupt_pin
        if not pin:
            return None
        pin -= 1
        while function.bus is not None and function.bus.parent is not None:
            pin = (pin + function.slot) % 4
            function = function.bus.parent
        return root_intx_gsi(function.slot, pin)

    def _intx_changed(self, function: PciFunction, level: int) -> None:
        gsi = self.intx_gsi(function)
        if gsi is None:
            return
        index = gsi - PCI_INTX_GSI_BASE
        before = self._intx_count[index]
        self._intx_count[index] = max(0, before + (1 if level else -1))
        if bool(before) != bool(self._intx_count[index]):
            self._set_irq(gsi, 1 if self._intx_count[index] else 0)


class Conf1:
    """Configuration mechanism #1: the address at 0xcf8 (dword accesses only), the data
    window at 0xcfc-0xcff. Other accesses to 0xcf8-0xcfb go to `other` (the reset
    control register at 0xcf9 lives there)."""

    def __init__(self, host: PciHost, other=None):
        self._host = host
        self._other = other
        self.address = 0

    def read(self, offset: int, size: int) -> int:
        if offset < 4:
            if offset == 0 and size == 4:
                return self.address
            return self._other.read(offset, size) if self._other else (1 << (8 * size)) - 1
        target = self._target(offset)
        if target is None:
            return (1 << (8 * size)) - 1
        return self._host.config_read(*target, size)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset < 4:
            if offset == 0 and size == 4:
                self.address = value & 0x80FFFFFC
            elif self._other:
                self._other.write(offset, size, value)
            return
        target = self._target(offset)
        if target is not None:
            self._host.config_write(*target, size, value)

    def _target(self, offset: int) -> tuple[int, int, int, int] | None:
        address = self.address
        if not address & CONF1_ENABLE:
            return None
        bus = (address >> 16) & 0xFF
        slot = (address >> 11) & 0x1F
        fn = (address >> 8) & 0x7
        register = (address & 0xFC) + (offset - 4)
        return bus, slot, fn, register


class Ecam:
    """PCI Express enhanced configuration access: 4 KiB of config space per function,
    memory-mapped (PCIe Base 4.0, 7.2.2)."""

    def __init__(self, host: PciHost):
        self._host = host

    def read(self, offset: int, size: int) -> int:
        bus, slot, fn, register = self._decode(offset)
        if register + size > 4096:
            return (1 << (8 * size)) - 1
        return self._host.config_read(bus, slot, fn, register, size)

    def write(self, offset: int, size: int, value: int) -> None:
        bus, slot, fn, register = self._decode(offset)
        if register + size <= 4096:
            self._host.config_write(bus, slot, fn, register, size, value)

    @staticmethod
    def _decode(offset: int) -> tuple[int, int, int, int]:
        return (
            (offset >> ECAM_BUS_SHIFT) & 0xFF,
            (offset >> 15) & 0x1F,
            (offset >> ECAM_DEVFN_SHIFT) & 0x7,
            offset & 0xFFF,
        )
