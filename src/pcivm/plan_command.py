"""`pcivm plan [--json] OPTIONS...`: what the firmware role assigns, without booting.

Takes the options of a run (QEMU-style; `-kernel` may be left out), builds the machine's
PCI hierarchy without KVM and without guest RAM, runs the allocator and prints the tree
(each bridge with the buses and windows it forwards), every BAR, a map of each address
space, and the warnings. `--json` prints one JSON document instead, whose `pci` entries
carry the guest probe report's fields (docs/probe-report.md) so the two compare field by
field (pcivm.pci.plan_compare).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from pcivm.errors import UsageError
from pcivm.memory import FOUR_GIB
from pcivm.pci.allocator import (
    IO_SPACE,
    MEM32,
    MEM64,
    SPACE_LABEL,
    WIN_IO,
    WIN_MEM,
    WIN_PREF,
    WINDOW_KINDS,
    FunctionPlan,
    Plan,
    allocate,
)
from pcivm.pci.bridge import Window
from pcivm.pci.layout import AddressLayout
from pcivm.spec import VmSpec

USAGE = """\
usage: pcivm plan [--json] [QEMU-style options of a run]
  Prints the PCI tree, every BAR and bridge window, maps of the IO and MMIO spaces and
  what did not fit, as the machine would be programmed before boot. -kernel is optional.
"""


def build_plan(spec: VmSpec) -> Plan:
    """The plan of the machine `spec` describes, as a run would program it."""
    from pcivm.pci.topology import build_topology

    topology = build_topology(spec.machine, spec.devices, spec.drives)
    return allocate(topology.root, spec_layout(spec))


def spec_layout(spec: VmSpec) -> AddressLayout:
    from pcivm.machine import pci_layout

    return pci_layout(spec)


def main(argv: list[str]) -> int:
    argv = list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE, end="")
        return 0
    as_json = "--json" in argv
    argv = [a for a in argv if a != "--json"]
    if not any(a in ("-kernel", "--kernel") for a in argv):
        argv += ["-kernel", "(none)"]  # a plan boots nothing
    from pcivm.options import parse_options

    spec = parse_options(argv)
    try:
        plan = build_plan(spec)
    except ValueError as exc:  # a layout the machine cannot have
        raise UsageError(f"plan: {exc}") from None
    if as_json:
        document = plan.to_json()
        document["memory"] = spec.memory
        document["virtio_drivers"] = {
            f.bdf: {"old_guest": old, "modern_guest": modern}
            for f, old, modern in virtio_drivers(plan)
        }
        print(json.dumps(document, indent=1))
    else:
        sys.stdout.write(render(plan, spec))
    return 0


# -- the text report --------------------------------------------------------------------


def human_size(size: int) -> str:
    for shift, unit in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if size >= 1 << shift:
            if size % (1 << shift) == 0:
                return f"{size >> shift} {unit}"
            hundredths = size * 100 >> shift  # rounded down: never claims more than there is
            text = f"{hundredths // 100}.{hundredths % 100:02d}".rstrip("0").rstrip(".")
            return f"{text} {unit}"
    return f"{size} B"


def _range(start: int, size: int) -> str:
    return f"{start:#x}-{start + size - 1:#x}"


def _bar_type(bar) -> str:
    if bar.kind == "io":
        return "io"
    return ("mem64" if bar.mem64 else "mem32") + ("-pref" if bar.prefetch else "")


def render(plan: Plan, spec: VmSpec | None = None) -> str:
    lines: list[str] = []
    lay = plan.layout
    head = f"machine {lay.machine}"
    if spec is not None:
        head += f", {human_size(spec.memory)} RAM"
    lines.append(head)
    for space in (IO_SPACE, MEM32, MEM64):
        w = lay.space(space)
        text = "none" if w is None else f"{_range(w.base, w.size)} ({human_size(w.size)})"
        lines.append(f"  {SPACE_LABEL[space]:<12} {text}")
    lines.append("")
    lines.append("PCI tree")
    lines += _tree(plan)
    for space in (IO_SPACE, MEM32, MEM64):
        if lay.space(space) is not None:
            lines.append("")
            lines += _space_map(plan, space)
    drivers = virtio_drivers(plan)
    if drivers:
        lines.append("")
        lines.append("virtio devices and the guests that can drive them")
        lines.append("  (old guest: a pre-1.0 driver, IO BAR only; modern guest: virtio 1.x)")
        for f, old, modern in drivers:
            lines.append(
                f"  {f.short_bdf:<8} {_label(f):<36} old guest: {'yes' if old else 'NO':<4} "
                f"modern guest: {modern or 'NO'}"
            )
    lines.append("")
    if plan.warnings:
        lines.append("Warnings")
        lines += [f"  {w}" for w in plan.warnings]
    else:
        lines.append("Everything has an address.")
    return "\n".join(lines) + "\n"


VIRTIO_VENDOR = 0x1AF4
TRANSITIONAL_IDS = range(0x1000, 0x1040)  # virtio 1.2, 4.1.2.1
LEGACY_BAR, MODERN_BAR = 0, 4


def virtio_drivers(plan: Plan) -> list[tuple[FunctionPlan, bool, str | None]]:
    """For each virtio function: can an old guest drive it, and through which interface a
    modern guest does. An old driver binds only ids 0x1000-0x103f at revision 0 and needs
    IO BAR0; a modern one uses BAR4's structures, else falls back to BAR0."""
    out = []
    for f in plan.functions:
        if f.vendor != VIRTIO_VENDOR:
            continue
        assigned = {bar.index for bar in f.bars if bar.assigned}
        legacy_ok = LEGACY_BAR in assigned
        old = f.device in TRANSITIONAL_IDS and f.revision == 0 and legacy_ok
        modern = "modern" if MODERN_BAR in assigned else ("legacy" if legacy_ok else None)
        out.append((f, old, modern))
    return out


def _label(f: FunctionPlan) -> str:
    return f"{f.model} {f.name}" if f.model != f.name else f.name


def _tree(plan: Plan) -> list[str]:
    lines: list[str] = []
    root_name = next((f.bus_name for f in plan.functions if f.depth == 0), "root")
    lines.append(f"  {root_name} (bus 00)")
    for f in plan.functions:
        pad = "  " * (2 * f.depth + 2)
        ident = f"{f.vendor:04x}:{f.device:04x} rev {f.revision:02x} class {f.class_code:06x}"
        named = f.model if f.name == f.model else f"{f.model} {f.name}"
        lines.append(f"{pad}{f.short_bdf}  {ident}  {named}")
        inner = pad + "    "
        for bar in f.bars:
            where = (
                f"{_range(bar.address, bar.size)}" if bar.assigned else f"unassigned ({bar.reason})"
            )
            lines.append(
                f"{inner}BAR{bar.index} {_bar_type(bar):<15} {human_size(bar.size):>8}  {where}"
            )
        if f.bridge is not None:
            b = f.bridge
            extra = ", hot-pluggable" if b.hotplug else ""
            lines.append(
                f"{inner}forwards buses {b.secondary:02x}-{b.subordinate:02x}"
                f" (secondary bus '{b.secondary_bus}'){extra}"
            )
            for kind in WINDOW_KINDS:
                w = b.window(kind)
                label = {WIN_IO: "io window", WIN_MEM: "mem window", WIN_PREF: "pref window"}[kind]
                if w is not None:
                    where = f"{_range(w.base, w.size)}"
                    note = " (64-bit)" if kind == WIN_PREF and w.base >= FOUR_GIB else ""
                    lines.append(f"{inner}{label:<15} {human_size(w.size):>13}  {where}{note}")
                elif kind in b.denied:
                    lines.append(f"{inner}{label:<15} {'none':>13}  ({b.denied[kind]})")
                else:
                    lines.append(f"{inner}{label:<15} {'none':>13}")
            lines.append(f"{pad}  {b.secondary_bus} (bus {b.secondary:02x})")
    return lines


@dataclass
class _Entry:
    start: int
    size: int
    what: str

    @property
    def end(self) -> int:
        return self.start + self.size - 1


def _entries(plan: Plan, space: str) -> list[_Entry]:
    out: list[_Entry] = []
    for f in plan.functions:
        named = f.model if f.name == f.model else f"{f.model} {f.name}"
        for bar in f.bars:
            if bar.assigned and bar.space == space:
                out.append(_Entry(bar.address, bar.size, f"BAR{bar.index} {f.short_bdf} {named}"))
        if f.bridge is not None:
            for kind in WINDOW_KINDS:
                w = f.bridge.window(kind)
                if w is None or _window_space(f, kind) != space:
                    continue
                out.append(_Entry(w.base, w.size, f"{kind} window {f.short_bdf} {named}"))
    out.sort(key=lambda e: (e.start, -e.size))
    return out


def _window_space(f: FunctionPlan, kind: str) -> str:
    if kind == WIN_IO:
        return IO_SPACE
    if kind == WIN_MEM:
        return MEM32
    return f.bridge.pref_space


def _space_map(plan: Plan, space: str) -> list[str]:
    whole: Window = plan.layout.space(space)
    entries = _entries(plan, space)
    lines = [f"{SPACE_LABEL[space]} map {_range(whole.base, whole.size)}"]
    stack: list[_Entry] = []
    cursor = whole.base  # the first address not yet covered at the top level
    used = 0
    for e in entries:
        while stack and e.start > stack[-1].end:
            stack.pop()
        if not stack:
            if e.start > cursor:
                lines.append(_free_line(cursor, e.start))
            cursor = max(cursor, e.end + 1)
            used += e.size
        pad = "  " * (len(stack) + 1)
        lines.append(f"{pad}{_range(e.start, e.size):<27} {e.what} ({human_size(e.size)})")
        stack.append(e)
    if cursor <= whole.limit:
        lines.append(_free_line(cursor, whole.limit + 1))
    lines.insert(1, f"  {human_size(used)} used of {human_size(whole.size)}")
    return lines


def _free_line(start: int, end: int) -> str:
    return f"  {_range(start, end - start):<27} free ({human_size(end - start)})"
