"""The firmware role: bus numbers, BARs and bridge windows assigned before boot.

`allocate(root, layout)` walks the hierarchy as firmware would and leaves every register
programmed; the `Plan` it returns is the one source of truth for addresses (`pcivm plan`,
the ACPI tables, and what the guest reads back all come from it).

Policy (docs/pci.md tells the same story with numbers):

1. Bus numbers depth first in scan order; a bridge's subordinate number is the last bus
   below it, or secondary + `bus-reserve` when that is larger.
2. Windows are sized bottom-up (PCI-to-PCI Bridge 1.2, 3.2.5): IO windows 4 KiB aligned
   and granular, memory windows 1 MiB. Inside a window, the ranges below are packed by
   decreasing alignment; the window is aligned to the largest of them.
   - A bridge gets a window only for what is below it, or what `io-reserve`,
     `mem-reserve`, `pref64-reserve` ask (a minimum size). A hot-pluggable port gets a
     1 MiB memory and a 1 MiB prefetchable window even when empty, but no IO window
     unless `io-reserve` asks: most devices plugged there later need no IO.
   - The prefetchable window of a root-bus bridge goes above 4 GiB when every
     prefetchable BAR below it is 64-bit, else in the 32-bit window (one 32-bit
     prefetchable BAR below pulls the whole subtree's prefetchable window down).
   - Non-prefetchable BARs, 64-bit or not, go in the 32-bit space: a bridge's memory
     window is 32-bit. On the root bus, 64-bit prefetchable BARs go above 4 GiB.
3. The root bus's ranges are placed top-down in each space by decreasing alignment.
4. When a space runs out, the machine still boots: ranges are granted in priority order
   (the root bus's own BARs first, then each root-bus bridge's subtree depth first, a
   bridge before what is below it), each kept only if everything granted so far still
   fits. What is not granted stays unassigned: BAR registers 0, the bridge's window
   closed, and IO/memory decoding off for a function left with nothing in that space.
   A warning names every casualty. Same tree, same plan.
5. Registers are programmed (inside `host.batch()` when a host is given, so the
   machine remaps once) and the command registers enable IO/memory decoding for what got
   an address, and bus mastering.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pcivm.pci import regs as R
from pcivm.pci.bridge import PciBridge, Window
from pcivm.pci.bus import PciBus
from pcivm.pci.function import IO, Bar, PciFunction
from pcivm.pci.layout import AddressLayout

IO_SPACE, MEM32, MEM64 = "io", "mem32", "mem64"
SPACES = (IO_SPACE, MEM32, MEM64)
SPACE_LABEL = {IO_SPACE: "IO", MEM32: "32-bit MMIO", MEM64: "64-bit MMIO"}
# Window kinds of a bridge, and the resource numbers Linux gives them in sysfs.
WIN_IO, WIN_MEM, WIN_PREF = "io", "mem", "pref"
WINDOW_KINDS = (WIN_IO, WIN_MEM, WIN_PREF)
LINUX_WINDOW_INDEX = {WIN_IO: 13, WIN_MEM: 14, WIN_PREF: 15}
GRANULE = {WIN_IO: 0x1000, WIN_MEM: 0x100000, WIN_PREF: 0x100000}
MAX_BUS = 0xFF


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def visible_functions(bus: PciBus) -> list[PciFunction]:
    """The functions a scan of `bus` finds (fn > 0 only behind a multifunction fn 0)."""
    return [f for f in bus.ordered() if bus.function(f.slot, f.fn) is f]


def short_bdf(function: PciFunction) -> str:
    return function.bdf.removeprefix("0000:")


def describe(function: PciFunction) -> str:
    """'00:1c.0 (pcie-root-port rp1)', as warnings name a function."""
    return f"{short_bdf(function)} ({_label(function)})"


def model_name(function: PciFunction) -> str:
    """The device model as the user names it (-device DRIVER); built-in functions, whose
    `driver` is left at the class name, go by their own name ("q35-host")."""
    driver = getattr(function, "driver", "")
    if not driver or driver == type(function).__name__:
        return function.name
    return driver


def _label(function: PciFunction) -> str:
    model = model_name(function)
    if function.name and function.name != model:
        return f"{model} {function.name}"
    return model


# -- the plan ---------------------------------------------------------------------------


@dataclass
class BarPlan:
    index: int
    kind: str  # "io" or "mem"
    size: int
    prefetch: bool
    mem64: bool
    space: str  # the space it belongs in: io, mem32 or mem64
    address: int | None = None
    reason: str = ""  # why it has no address

    @property
    def assigned(self) -> bool:
        return self.address is not None


@dataclass
class BridgePlan:
    primary: int
    secondary: int
    subordinate: int
    secondary_bus: str  # the bus's name ("rp1", ...)
    io: Window | None = None
    mem: Window | None = None
    pref: Window | None = None
    pref_space: str = MEM64  # where its prefetchable window belongs
    hotplug: bool = False
    # Windows it would have had if its space had not run out: kind -> reason.
    denied: dict[str, str] = field(default_factory=dict)

    def window(self, kind: str) -> Window | None:
        return {WIN_IO: self.io, WIN_MEM: self.mem, WIN_PREF: self.pref}[kind]


@dataclass
class FunctionPlan:
    bdf: str
    name: str
    model: str  # the device model (QEMU's -device driver name)
    bus_name: str
    depth: int  # bridges above it
    vendor: int
    device: int
    subsystem_vendor: int
    subsystem_device: int
    revision: int
    class_code: int
    command: int
    bars: list[BarPlan]
    bridge: BridgePlan | None = None
    parent: str | None = None  # bdf of the bridge above, None on the root bus

    @property
    def short_bdf(self) -> str:
        return self.bdf.removeprefix("0000:")

    def label(self) -> str:
        named = f"{self.model} {self.name}" if self.name and self.name != self.model else self.model
        return f"{self.short_bdf} ({named})"


@dataclass
class Plan:
    layout: AddressLayout
    functions: list[FunctionPlan]  # scan order (depth first)
    warnings: list[str] = field(default_factory=list)

    def function(self, bdf: str) -> FunctionPlan:
        if not bdf.startswith("0000:"):
            bdf = "0000:" + bdf
        for f in self.functions:
            if f.bdf == bdf:
                return f
        raise KeyError(bdf)

    def unassigned(self) -> list[tuple[FunctionPlan, BarPlan]]:
        return [(f, b) for f in self.functions for b in f.bars if not b.assigned]

    def bridges(self) -> list[FunctionPlan]:
        return [f for f in self.functions if f.bridge is not None]

    def to_json(self) -> dict:
        """One document whose `pci` entries carry the probe report's fields
        (docs/probe-report.md), so the two compare field by field."""
        entries = []
        for f in sorted(self.functions, key=lambda f: f.bdf):
            bars = [
                _json_range(b.index, b.address, b.size, b.kind, b.prefetch, b.mem64)
                for b in f.bars
                if b.assigned
            ]
            if f.bridge is not None:
                for kind in WINDOW_KINDS:
                    w = f.bridge.window(kind)
                    if w is not None:
                        # Linux flags a 64-bit capable prefetchable window IORESOURCE_MEM_64
                        # wherever it sits; pcivm's bridges all have one.
                        bars.append(
                            _json_range(
                                LINUX_WINDOW_INDEX[kind],
                                w.base,
                                w.size,
                                "io" if kind == WIN_IO else "mem",
                                kind == WIN_PREF,
                                kind == WIN_PREF,
                            )
                        )
            entry = {
                "bdf": f.bdf,
                "vendor": f"0x{f.vendor:04x}",
                "device": f"0x{f.device:04x}",
                "subsystem_vendor": f"0x{f.subsystem_vendor:04x}",
                "subsystem_device": f"0x{f.subsystem_device:04x}",
                "revision": f"0x{f.revision:02x}",
                "class": f"0x{f.class_code:06x}",
                "name": f.name,
                "model": f.model,
                "bus": f.bus_name,
                "bars": bars,
            }
            if f.bridge is not None:
                b = f.bridge
                entry["bridge"] = {
                    "primary": b.primary,
                    "secondary": b.secondary,
                    "subordinate": b.subordinate,
                    "secondary_bus": b.secondary_bus,
                    "hotplug": b.hotplug,
                    "pref_space": b.pref_space,
                }
            entries.append(entry)
        unassigned = []
        for f in self.functions:
            for b in f.bars:
                if not b.assigned:
                    unassigned.append(
                        {
                            "bdf": f.bdf,
                            "name": f.name,
                            "index": b.index,
                            "type": b.kind,
                            "size": hex(b.size),
                            "prefetch": b.prefetch,
                            "mem64": b.mem64,
                            "reason": b.reason,
                        }
                    )
            if f.bridge is not None:
                for kind, reason in f.bridge.denied.items():
                    unassigned.append(
                        {
                            "bdf": f.bdf,
                            "name": f.name,
                            "index": LINUX_WINDOW_INDEX[kind],
                            "type": "io" if kind == WIN_IO else "mem",
                            "window": kind,
                            "reason": reason,
                        }
                    )
        lay = self.layout
        return {
            "machine": lay.machine,
            "layout": {
                space: None if w is None else {"start": hex(w.base), "end": hex(w.limit)}
                for space, w in ((s, lay.space(s)) for s in SPACES)
            },
            "pci": entries,
            "unassigned": unassigned,
            "warnings": list(self.warnings),
        }


def _json_range(index, start, size, kind, prefetch, mem64) -> dict:
    return {
        "index": index,
        "start": hex(start),
        "size": hex(size),
        "type": kind,
        "prefetch": bool(prefetch),
        "mem64": bool(mem64),
    }


# -- sizing -----------------------------------------------------------------------------


@dataclass
class _Item:
    """A range to place: a BAR, or a bridge window with what it holds."""

    function: PciFunction
    key: int | str  # BAR index or window kind
    size: int
    align: int
    children: list[tuple[_Item, int]] = field(default_factory=list)  # (item, offset)


def _pack(items: list[_Item]) -> tuple[int, int, list[tuple[_Item, int]]]:
    """Lay `items` out from offset 0 by decreasing alignment: (end, alignment, offsets)."""
    order = sorted(range(len(items)), key=lambda i: (-items[i].align, -items[i].size, i))
    cursor, align, placed = 0, 1, []
    for i in order:
        item = items[i]
        offset = _align_up(cursor, item.align)
        placed.append((item, offset))
        cursor = offset + item.size
        align = max(align, item.align)
    return cursor, align, placed


def _bar_kind(bar: Bar) -> str:
    """Which bridge window a BAR below a bridge lives in."""
    if bar.kind == IO:
        return WIN_IO
    return WIN_PREF if bar.prefetch else WIN_MEM


def _bars(function: PciFunction) -> list[Bar]:
    return [function.bars[i] for i in sorted(function.bars)]


class _Allocator:
    def __init__(self, root: PciBus, layout: AddressLayout):
        self.root = root
        self.layout = layout
        self.numbered: list[PciBridge] = []  # bridges with valid bus numbers, scan order
        self.numbered_ids: set[int] = set()
        self.unreachable: list[tuple[PciBridge, int]] = []  # (bridge, functions below)
        self.pref_space: dict[int, str] = {}
        # Per space: granted candidates (None: all of them).
        self.granted: dict[str, set | None] = {s: None for s in SPACES}

    # -- bus numbers --------------------------------------------------------------------

    def number_buses(self) -> None:
        self._next_bus = 0
        self._number(self.root, 0)

    def _number(self, bus: PciBus, number: int) -> None:
        for f in visible_functions(bus):
            if not isinstance(f, PciBridge):
                continue
            if self._next_bus >= MAX_BUS:
                f.set_bus_numbers(0, 0, 0)
                self.unreachable.append((f, sum(1 for _ in f.secondary.walk())))
                continue
            self._next_bus += 1
            secondary = self._next_bus
            f.set_bus_numbers(number, secondary, MAX_BUS)
            self.numbered.append(f)
            self.numbered_ids.add(id(f))
            self._number(f.secondary, secondary)
            subordinate = max(self._next_bus, min(secondary + max(f.reserve.bus, 0), MAX_BUS))
            f.set_bus_numbers(number, secondary, subordinate)
            self._next_bus = subordinate

    def reachable(self, bus: PciBus) -> list[PciFunction]:
        return [
            f
            for f in visible_functions(bus)
            if not isinstance(f, PciBridge) or id(f) in self.numbered_ids
        ]

    # -- where things belong ------------------------------------------------------------

    def decide_pref_spaces(self) -> None:
        for f in self.reachable(self.root):
            if isinstance(f, PciBridge):
                high = self.layout.mem64 is not None and self._pref64_capable(f)
                self._set_pref_space(f, MEM64 if high else MEM32)

    def _pref64_capable(self, bridge: PciBridge) -> bool:
        for f in self.reachable(bridge.secondary):
            if any(b.prefetch and not b.mem64 for b in f.bars.values() if b.kind != IO):
                return False
            if isinstance(f, PciBridge) and not self._pref64_capable(f):
                return False
        return True

    def _set_pref_space(self, bridge: PciBridge, space: str) -> None:
        self.pref_space[id(bridge)] = space
        for f in self.reachable(bridge.secondary):
            if isinstance(f, PciBridge):
                self._set_pref_space(f, space)

    def window_space(self, bridge: PciBridge, kind: str) -> str:
        if kind == WIN_IO:
            return IO_SPACE
        return MEM32 if kind == WIN_MEM else self.pref_space[id(bridge)]

    def root_bar_space(self, bar: Bar) -> str:
        if bar.kind == IO:
            return IO_SPACE
        if bar.prefetch and bar.mem64 and self.layout.mem64 is not None:
            return MEM64
        return MEM32

    def bar_space(self, function: PciFunction, bar: Bar) -> str:
        parent = function.bus.parent if function.bus is not None else None
        if parent is None:
            return self.root_bar_space(bar)
        return self.window_space(parent, _bar_kind(bar))

    # -- candidates, in priority order --------------------------------------------------

    def candidates(self, space: str) -> list[tuple]:
        """("bar", function, index) and ("bridge", bridge) in the order they are granted:
        root-bus BARs first, then each root-bus bridge's subtree depth first."""
        out: list[tuple] = []
        top = self.reachable(self.root)
        for f in top:
            out += [("bar", f, b.index) for b in _bars(f) if self.root_bar_space(b) == space]
        for f in top:
            if isinstance(f, PciBridge):
                self._subtree_candidates(f, space, out)
        return out

    def _subtree_candidates(self, bridge: PciBridge, space: str, out: list) -> None:
        out.append(("bridge", bridge))
        for f in self.reachable(bridge.secondary):
            out += [("bar", f, b.index) for b in _bars(f) if self.bar_space(f, b) == space]
            if isinstance(f, PciBridge):
                self._subtree_candidates(f, space, out)

    @staticmethod
    def _key(candidate: tuple) -> tuple:
        if candidate[0] == "bar":
            return ("bar", id(candidate[1]), candidate[2])
        return ("bridge", id(candidate[1]))

    def _granted(self, space: str, key: tuple) -> bool:
        granted = self.granted[space]
        return granted is None or key in granted

    # -- sizing -------------------------------------------------------------------------

    def root_items(self, space: str) -> list[_Item]:
        items: list[_Item] = []
        top = self.reachable(self.root)
        for f in top:
            for b in _bars(f):
                if self.root_bar_space(b) == space and self._granted(
                    space, ("bar", id(f), b.index)
                ):
                    items.append(_Item(f, b.index, b.size, b.size))
        for f in top:
            if isinstance(f, PciBridge):
                for kind in WINDOW_KINDS:
                    if self.window_space(f, kind) == space:
                        item = self.window(f, kind, space)
                        if item is not None:
                            items.append(item)
        return items

    def window(self, bridge: PciBridge, kind: str, space: str) -> _Item | None:
        if not self._granted(space, ("bridge", id(bridge))):
            return None
        children: list[_Item] = []
        for f in self.reachable(bridge.secondary):
            for b in _bars(f):
                if _bar_kind(b) == kind and self._granted(space, ("bar", id(f), b.index)):
                    children.append(_Item(f, b.index, b.size, b.size))
            if isinstance(f, PciBridge):
                child = self.window(f, kind, space)
                if child is not None:
                    children.append(child)
        reserve = bridge.reserve
        minimum = {WIN_IO: reserve.io, WIN_MEM: reserve.mem, WIN_PREF: reserve.pref64}[kind]
        minimum = max(minimum, 0)
        if not children and not minimum:
            if not bridge.hotplug or kind == WIN_IO:
                return None
            minimum = GRANULE[kind]
        end, align, placed = _pack(children)
        granule = GRANULE[kind]
        size = _align_up(max(end, minimum), granule)
        return _Item(bridge, kind, size, max(align, granule), placed)

    # -- placing ------------------------------------------------------------------------

    def free_segments(self, space: str) -> list[Window]:
        whole = self.layout.space(space)
        if whole is None:
            return []
        segments = [whole]
        for r in sorted(self.layout.reserved(space), key=lambda w: w.base):
            out = []
            for s in segments:
                if r.limit < s.base or r.base > s.limit:
                    out.append(s)
                    continue
                if s.base < r.base:
                    out.append(Window(s.base, r.base - 1))
                if r.limit < s.limit:
                    out.append(Window(r.limit + 1, s.limit))
            segments = out
        return segments

    def place(self, space: str, items: list[_Item]) -> list[tuple[_Item, int]] | None:
        """Top-down, by decreasing alignment, into the space's free segments; None when
        something does not fit."""
        free = self.free_segments(space)
        order = sorted(range(len(items)), key=lambda i: (-items[i].align, -items[i].size, i))
        placed = []
        for i in order:
            item = items[i]
            best = None
            for n, seg in enumerate(free):
                start = (seg.limit + 1 - item.size) // item.align * item.align
                if start >= seg.base and (best is None or start > best[1]):
                    best = (n, start)
            if best is None:
                return None
            n, start = best
            seg = free.pop(n)
            if seg.base < start:
                free.append(Window(seg.base, start - 1))
            if start + item.size <= seg.limit:
                free.append(Window(start + item.size, seg.limit))
            placed.append((item, start))
        return placed

    def solve(self, space: str) -> list[tuple[_Item, int]]:
        """Place everything if it fits; else grant candidates one by one in priority
        order, keeping each only if all granted so far still fits."""
        self.granted[space] = None
        placed = self.place(space, self.root_items(space))
        if placed is not None:
            return placed
        granted: set = set()
        self.granted[space] = granted
        placed = []
        for candidate in self.candidates(space):
            key = self._key(candidate)
            if not self._ancestors_granted(candidate, space):
                continue  # its bridge has no window in this space: it goes with it
            granted.add(key)
            attempt = self.place(space, self.root_items(space))
            if attempt is None:
                granted.discard(key)
            else:
                placed = attempt
        return placed

    def _ancestors_granted(self, candidate: tuple, space: str) -> bool:
        bus = candidate[1].bus
        while bus is not None and bus.parent is not None:
            if not self._granted(space, ("bridge", id(bus.parent))):
                return False
            bus = bus.parent.bus
        return True


def _flatten(placed: Iterable[tuple[_Item, int]], out: dict) -> None:
    for item, start in placed:
        out[(id(item.function), item.key)] = (item, start)
        _flatten(((child, start + offset) for child, offset in item.children), out)


def _subsystem(function: PciFunction) -> tuple[int, int]:
    c = function.config
    if function.header_type == R.PCI_HEADER_TYPE_NORMAL:
        return c.get(R.PCI_SUBSYSTEM_VENDOR_ID, 2), c.get(R.PCI_SUBSYSTEM_ID, 2)
    for cap_id, offset in c.capabilities():
        if cap_id == R.PCI_CAP_ID_SSVID:
            return c.get(offset + 4, 2), c.get(offset + 6, 2)
    return 0, 0


def allocate(root: PciBus, layout: AddressLayout, host=None) -> Plan:
    """Assign bus numbers, BARs and windows below `root` within `layout`, program the
    registers (inside `host.batch()` when a host is given) and return the plan."""
    a = _Allocator(root, layout)
    a.number_buses()
    a.decide_pref_spaces()

    # What everything would get with unlimited space: to name what exhaustion took away.
    wanted_windows: dict[tuple[int, str], PciBridge] = {}
    for space in SPACES:
        a.granted[space] = None
        wanted: dict = {}
        _flatten(((item, 0) for item in a.root_items(space)), wanted)
        for (_fid, key), (item, _s) in wanted.items():
            if isinstance(key, str):
                wanted_windows[(id(item.function), key)] = item.function

    addresses: dict = {}
    for space in SPACES:
        _flatten(a.solve(space), addresses)

    warnings: list[str] = []
    for bridge, count in a.unreachable:
        warnings.append(
            f"bus numbers exhausted: {describe(bridge)} gets no bus number; "
            f"{count} functions below it are unreachable"
        )

    # -- the plan -----------------------------------------------------------------------
    functions: list[FunctionPlan] = []
    unassigned_by_space: dict[str, list[str]] = {s: [] for s in SPACES}
    no_window_by_space: dict[str, list[str]] = {s: [] for s in SPACES}

    def reason_for(function: PciFunction, space: str, kind: str) -> str:
        """Why a range of window kind `kind` below `function`'s bus got no address."""
        label = SPACE_LABEL[space]
        if a.layout.space(space) is None:
            return f"the machine has no {label} space"
        # The nearest bridge above whose window in this space could not be had.
        bus = function.bus
        while bus is not None and bus.parent is not None:
            bridge = bus.parent
            if (id(bridge), kind) not in addresses:
                return f"{label} space exhausted: bridge {short_bdf(bridge)} has no window"
            bus = bridge.bus
        return f"{label} space exhausted"

    def visit(bus: PciBus, depth: int) -> None:
        for f in a.reachable(bus):
            bars = []
            for b in _bars(f):
                space = a.bar_space(f, b)
                found = addresses.get((id(f), b.index))
                plan_bar = BarPlan(b.index, b.kind, b.size, b.prefetch, b.mem64, space)
                if found is not None:
                    plan_bar.address = found[1]
                else:
                    plan_bar.reason = reason_for(f, space, _bar_kind(b))
                    unassigned_by_space[space].append(f"{short_bdf(f)} BAR{b.index} ({_label(f)})")
                bars.append(plan_bar)
            sub_vendor, sub_device = _subsystem(f)
            c = f.config
            parent = bus.parent
            fp = FunctionPlan(
                bdf=f.bdf,
                name=f.name,
                model=model_name(f),
                bus_name=bus.name,
                depth=depth,
                vendor=f.vendor_id,
                device=f.device_id,
                subsystem_vendor=sub_vendor,
                subsystem_device=sub_device,
                revision=c.get(R.PCI_REVISION_ID, 1),
                class_code=f.class_code,
                command=0,
                bars=bars,
                parent=None if parent is None else parent.bdf,
            )
            functions.append(fp)
            if isinstance(f, PciBridge):
                bp = BridgePlan(
                    primary=bus.number,
                    secondary=f.secondary_bus_number,
                    subordinate=f.subordinate_bus_number,
                    secondary_bus=f.secondary.name,
                    pref_space=a.pref_space[id(f)],
                    hotplug=f.hotplug,
                )
                for kind in WINDOW_KINDS:
                    found = addresses.get((id(f), kind))
                    if found is not None:
                        item, start = found
                        window = Window(start, start + item.size - 1)
                        setattr(bp, kind, window)
                    elif (id(f), kind) in wanted_windows:
                        space = a.window_space(f, kind)
                        bp.denied[kind] = reason_for(f, space, kind)
                        no_window_by_space[space].append(describe(f))
                fp.bridge = bp
                visit(f.secondary, depth + 1)

    visit(root, 0)

    for space in SPACES:
        bars, bridges = unassigned_by_space[space], no_window_by_space[space]
        if not bars and not bridges:
            continue
        label = SPACE_LABEL[space]
        parts = []
        if bridges:
            parts.append(
                f"no {label} window for {len(bridges)} "
                f"bridge{'s' if len(bridges) != 1 else ''}: {', '.join(bridges)}"
            )
        if bars:
            parts.append(
                f"{len(bars)} BAR{'s' if len(bars) != 1 else ''} left unassigned: "
                + ", ".join(bars)
            )
        head = f"{label} space exhausted" if a.layout.space(space) else f"no {label} space"
        warnings.append(f"{head}: " + "; ".join(parts))

    plan = Plan(layout, functions, warnings)
    _program(a, root, plan, addresses, host)
    return plan


# -- programming the registers ----------------------------------------------------------


def _program(a: _Allocator, root: PciBus, plan: Plan, addresses: dict, host) -> None:
    by_bdf = {fp.bdf: fp for fp in plan.functions}

    def write() -> None:
        for f in root.walk():
            if f.bus is None or f.bus.function(f.slot, f.fn) is not f:
                continue
            reachable = _reachable(a, f)
            io_on = mem_on = False
            for b in _bars(f):
                found = addresses.get((id(f), b.index)) if reachable else None
                f.set_bar_address(b, found[1] if found else 0)
                if found:
                    if b.kind == IO:
                        io_on = True
                    else:
                        mem_on = True
            if isinstance(f, PciBridge):
                f.close_windows()
                if not reachable or id(f) not in a.numbered_ids:
                    f.set_bus_numbers(0, 0, 0)
                else:
                    for kind, setter in (
                        (WIN_IO, f.set_io_window),
                        (WIN_MEM, f.set_mem_window),
                        (WIN_PREF, f.set_pref_window),
                    ):
                        found = addresses.get((id(f), kind))
                        if found:
                            item, start = found
                            setter(Window(start, start + item.size - 1))
                            if kind == WIN_IO:
                                io_on = True
                            else:
                                mem_on = True
            command = f.config.get(R.PCI_COMMAND, 2)
            command &= ~(R.PCI_COMMAND_IO | R.PCI_COMMAND_MEMORY | R.PCI_COMMAND_MASTER)
            if reachable:
                command |= R.PCI_COMMAND_MASTER
                command |= R.PCI_COMMAND_IO if io_on else 0
                command |= R.PCI_COMMAND_MEMORY if mem_on else 0
            f.config.set(R.PCI_COMMAND, 2, command)
            fp = by_bdf.get(f.bdf) if reachable else None
            if fp is not None:
                fp.command = command

    if host is None:
        write()
        return
    with host.batch():
        write()
        host.remap()  # deferred to the end of the batch: one remap of the final state


def _reachable(a: _Allocator, function: PciFunction) -> bool:
    bus = function.bus
    while bus is not None and bus.parent is not None:
        if id(bus.parent) not in a.numbered_ids:
            return False
        bus = bus.parent.bus
    return True
