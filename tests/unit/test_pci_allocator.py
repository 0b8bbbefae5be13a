"""The firmware-role allocator: bus numbers, BARs and windows on pc and q35 trees, what
happens when IO (or memory) runs out, and invariants on random trees."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcivm.bus import AddressSpace
from pcivm.pci import regs as R
from pcivm.pci.allocator import (
    IO_SPACE,
    MEM32,
    MEM64,
    WIN_IO,
    WIN_MEM,
    WIN_PREF,
    allocate,
)
from pcivm.pci.bridge import PciBridge, Reserve, Window
from pcivm.pci.bus import PciBus
from pcivm.pci.function import IO
from pcivm.pci.host import PciHost
from pcivm.pci.layout import AddressLayout, GiB, MiB, machine_layout
from pcivm.pci.testdev import PciTestDev
from pcivm.pci.topology_devices import (
    I440fxHost,
    Ich9Lpc,
    PciePciBridge,
    PcieRootPort,
    PciPciBridge,
    Piix3Isa,
    Q35Host,
    X3130Upstream,
    Xio3130Downstream,
)

PC = machine_layout("pc", 1 * GiB, 1 * GiB)
Q35 = machine_layout("q35", 1 * GiB, 1 * GiB)
FOUR_GIB = 4 * GiB


# -- building trees ---------------------------------------------------------------------


def make_testdev(name: str, bars: dict[int, str] | None = None) -> PciTestDev:
    dev = PciTestDev(name, bars)
    dev.driver = "pci-testdev"
    return dev


def named(function, driver: str):
    function.driver = driver
    return function


def pc_root() -> PciBus:
    root = PciBus("pci.0", express=False)
    root.attach(I440fxHost(), 0, 0)
    root.attach(Piix3Isa(), 1, 0)
    return root


def q35_root() -> PciBus:
    root = PciBus("pcie.0", express=True)
    root.attach(Q35Host(), 0, 0)
    root.attach(Ich9Lpc(), 0x1F, 0)
    return root


def add_root_ports(root: PciBus, count: int, first_slot: int = 1, **kwargs) -> list[PcieRootPort]:
    """`count` root ports, eight functions per slot as libvirt lays them out."""
    ports = []
    for i in range(count):
        port = named(
            PcieRootPort(f"rp{i + 1}", chassis=i + 1, slot=i + 1, **kwargs), "pcie-root-port"
        )
        slot, fn = first_slot + i // 8, i % 8
        root.attach(port, slot, fn)
        if fn == 0:
            port.set_multifunction(True)
        ports.append(port)
    return ports


def q35_with_ports(count: int, bars: dict[int, str] | None = None):
    root = q35_root()
    ports = add_root_ports(root, count)
    devices = []
    for i, port in enumerate(ports):
        dev = make_testdev(f"td{i + 1}", bars or {0: "io:32", 1: "mem32:4K"})
        port.secondary.attach(dev, 0, 0)
        devices.append(dev)
    return root, ports, devices


def window_of(bridge: PciBridge, kind: str) -> Window | None:
    return {WIN_IO: bridge.io_window, WIN_MEM: bridge.mem_window, WIN_PREF: bridge.pref_window}[
        kind
    ]()


# -- invariants (used by the examples and the property test) ----------------------------


def check_invariants(root: PciBus, layout: AddressLayout, plan) -> None:
    """No two assigned ranges overlap unless one is a window holding the other; every
    BAR lies in every window above it and is aligned; registers say what the plan says;
    the host bridge reaches exactly the assigned BARs."""
    spaces = {IO_SPACE: [], MEM32: [], MEM64: []}

    def space_of(address: int, kind: str) -> str:
        if kind == IO:
            return IO_SPACE
        return MEM64 if address >= FOUR_GIB else MEM32

    def visit(bus: PciBus, io: Window | None, mem: list[Window] | None) -> None:
        siblings: dict[str, list[tuple[int, int]]] = {IO_SPACE: [], MEM32: [], MEM64: []}
        for f in bus.ordered():
            if bus.function(f.slot, f.fn) is not f:
                continue
            fp = plan.function(f.bdf)
            command = f.config.get(R.PCI_COMMAND, 2)
            io_used = mem_used = False
            for bp in fp.bars:
                bar = f.bars[bp.index]
                register = f.bar_address(bar)
                if bp.address is None:
                    assert register == 0, (f.bdf, bp.index)
                    assert bp.reason
                    continue
                assert register == bp.address
                assert bp.address % bar.size == 0, "BAR misaligned"
                if bar.kind == IO:
                    io_used = True
                    assert layout.io.contains(bp.address, bar.size)
                    if io is not None or not bus.is_root:
                        assert io is not None and io.contains(bp.address, bar.size)
                else:
                    mem_used = True
                    if not bus.is_root:
                        assert any(w.contains(bp.address, bar.size) for w in mem), (f.bdf, bp)
                    whole = layout.mem64 if bp.address >= FOUR_GIB else layout.mem32
                    assert whole.contains(bp.address, bar.size)
                siblings[space_of(bp.address, bar.kind)].append((bp.address, bar.size))
            if isinstance(f, PciBridge):
                windows = {k: window_of(f, k) for k in (WIN_IO, WIN_MEM, WIN_PREF)}
                assert windows[WIN_IO] == fp.bridge.io
                assert windows[WIN_MEM] == fp.bridge.mem
                assert windows[WIN_PREF] == fp.bridge.pref
                for kind, w in windows.items():
                    if w is None:
                        continue
                    granule = 0x1000 if kind == WIN_IO else 0x100000
                    assert w.base % granule == 0 and w.size % granule == 0
                    if kind == WIN_IO:
                        io_used = True
                        assert layout.io.contains(w.base, w.size)
                        if not bus.is_root:
                            assert io is not None and io.contains(w.base, w.size)
                    else:
                        mem_used = True
                        if not bus.is_root:
                            assert any(p.contains(w.base, w.size) for p in mem)
                        # A memory window is 32-bit; so is a prefetchable one in mem32.
                        if kind == WIN_MEM:
                            assert w.limit < FOUR_GIB
                    siblings[space_of(w.base, IO if kind == WIN_IO else "mem")].append(
                        (w.base, w.size)
                    )
                below_mem = [w for w in (windows[WIN_MEM], windows[WIN_PREF]) if w is not None]
                visit(f.secondary, windows[WIN_IO], below_mem)
            assert bool(command & R.PCI_COMMAND_IO) == io_used, f.bdf
            assert bool(command & R.PCI_COMMAND_MEMORY) == mem_used, f.bdf
            assert command & R.PCI_COMMAND_MASTER
        for space, ranges in siblings.items():
            ranges.sort()
            for (a, asize), (b, _bsize) in zip(ranges, ranges[1:], strict=False):
                assert a + asize <= b, f"overlap in {space} on bus {bus.name}: {a:#x} {b:#x}"
            spaces[space] += ranges

    visit(root, None, None)

    # Leaves (BARs) never overlap anywhere.
    bars = {IO_SPACE: [], "mem": []}
    for fp in plan.functions:
        for bp in fp.bars:
            if bp.address is not None:
                bars[IO_SPACE if bp.kind == IO else "mem"].append((bp.address, bp.size))
    for ranges in bars.values():
        ranges.sort()
        for (a, asize), (b, _s) in zip(ranges, ranges[1:], strict=False):
            assert a + asize <= b

    # What the host would map is exactly what got an address.
    host = PciHost(root, AddressSpace("io"), AddressSpace("mmio"), lambda gsi, level: None)
    mapped = {(key.function, key.bar): key.address for key in host.wanted_mappings()}
    for f in root.walk():
        if f.bus.function(f.slot, f.fn) is not f:
            continue
        fp = plan.function(f.bdf)
        for bp in fp.bars:
            assert mapped.get((id(f), bp.index)) == bp.address, (f.bdf, bp.index)


# -- layouts ----------------------------------------------------------------------------


def test_pc_layout_starts_at_3_gib_or_above_low_ram():
    assert machine_layout("pc", 512 * MiB, 512 * MiB).mem32 == Window(0xC0000000, 0xFEBFFFFF)
    high = machine_layout("pc", 0xD0000000, 0xD0000000)
    assert high.mem32.base == 0xD0000000
    assert machine_layout("pc", 0xD8000000, 0xD8000000).mem32.base == 0xE0000000
    assert PC.io == Window(0x1000, 0xFFFF)


def test_q35_layout_starts_above_ecam():
    assert Q35.mem32 == Window(0xC0000000, 0xFEBFFFFF)
    assert Q35.ecam == Window(0xB0000000, 0xBFFFFFFF)
    with pytest.raises(ValueError, match="ECAM"):
        machine_layout("q35", 3 * GiB, 3 * GiB)


def test_64bit_window_sits_above_ram_and_below_2_to_the_40():
    assert PC.mem64 == Window(32 * GiB, 96 * GiB - 1)
    big = machine_layout("pc", 40 * GiB, 3 * GiB)  # RAM above 4 GiB ends at 41 GiB
    assert big.mem64.base == 41 * GiB
    huge = machine_layout("pc", 1000 * GiB, 3 * GiB)
    assert huge.mem64.limit < 1 << 40


# -- pc ---------------------------------------------------------------------------------


def test_pc_with_20_devices_assigns_everything():
    root = pc_root()
    for i in range(20):
        root.attach(make_testdev(f"td{i}", {0: "mem32:4K", 1: "io:256"}), 2 + i, 0)
    plan = allocate(root, PC)
    assert plan.warnings == []
    assert plan.unassigned() == []
    io = sorted(b.address for f in plan.functions for b in f.bars if b.kind == IO)
    assert len(io) == 20 and io[0] >= 0x1000 and io[-1] + 256 <= 0x10000
    check_invariants(root, PC, plan)


def test_pci_bridge_shares_one_io_window_among_its_devices():
    root = pc_root()
    bridge = named(PciPciBridge("br", chassis_nr=1), "pci-bridge")
    root.attach(bridge, 3, 0)
    for slot in range(5):
        bridge.secondary.attach(make_testdev(f"td{slot}", {0: "io:32", 1: "mem32:4K"}), slot, 0)
    plan = allocate(root, PC)
    bp = plan.function("00:03.0").bridge
    assert bp.io is not None and bp.io.size == 0x1000
    assert (bp.secondary, bp.subordinate) == (1, 1)
    assert all(bp.io.contains(b.address, b.size) for f in plan.functions[3:] for b in f.bars[:1])
    check_invariants(root, PC, plan)


def test_pci_bridges_past_the_io_space_get_no_io_window():
    root = pc_root()
    for i in range(16):
        bridge = named(PciPciBridge(f"br{i}", chassis_nr=i + 1), "pci-bridge")
        root.attach(bridge, 2 + i, 0)
        bridge.secondary.attach(make_testdev(f"td{i}", {0: "io:32"}), 0, 0)
    plan = allocate(root, PC)
    with_io = [f.name for f in plan.bridges() if f.bridge.io is not None]
    assert with_io == [f"br{i}" for i in range(15)]
    assert [f.name for f, _ in plan.unassigned()] == ["td15"]
    check_invariants(root, PC, plan)


def test_root_bus_io_bars_come_before_bridge_windows():
    root = pc_root()
    for i in range(15):
        bridge = named(PciPciBridge(f"br{i}", chassis_nr=i + 1), "pci-bridge")
        root.attach(bridge, 2 + i, 0)
        bridge.secondary.attach(make_testdev(f"td{i}", {0: "io:32"}), 0, 0)
    root.attach(make_testdev("onroot", {0: "io:32"}), 0x1E, 0)  # last in scan order
    plan = allocate(root, PC)
    assert plan.function("00:1e.0").bars[0].assigned
    assert [f.name for f, _ in plan.unassigned()] == ["td14"]
    assert plan.function("00:10.0").bridge.io is None
    check_invariants(root, PC, plan)


# -- q35 root ports ---------------------------------------------------------------------


@pytest.mark.parametrize("count", [4, 14, 15, 16, 24])
def test_q35_root_ports_get_io_windows_until_the_space_ends(count):
    root, ports, devices = q35_with_ports(count)
    plan = allocate(root, Q35)
    fitted = min(count, 15)  # 0x1000-0xffff: fifteen 4 KiB windows
    windows = [p for p in ports if p.io_window() is not None]
    assert windows == ports[:fitted]
    left = [f.name for f, b in plan.unassigned()]
    assert left == [d.name for d in devices[fitted:]]
    assert all(b.index == 0 and b.kind == IO for _, b in plan.unassigned())
    # Devices without IO still have their memory BAR and decode memory, not IO.
    for dev in devices[fitted:]:
        command = dev.config.get(R.PCI_COMMAND, 2)
        assert not command & R.PCI_COMMAND_IO and command & R.PCI_COMMAND_MEMORY
        assert dev.bar_address(dev.bars[0]) == 0
    if count > 15:
        (warning,) = plan.warnings
        assert warning.startswith("IO space exhausted: no IO window for")
        assert f"{count - 15} BAR" in warning and "BAR0 (pci-testdev td16)" in warning
    else:
        assert plan.warnings == []
    check_invariants(root, Q35, plan)


def test_plan_is_deterministic():
    first = allocate(q35_with_ports(24)[0], Q35).to_json()
    second = allocate(q35_with_ports(24)[0], Q35).to_json()
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def test_allocating_twice_gives_the_same_plan():
    root, _, _ = q35_with_ports(16)
    assert allocate(root, Q35).to_json() == allocate(root, Q35).to_json()


def test_empty_hotplug_root_port_gets_memory_windows_but_no_io():
    root = q35_root()
    (port,) = add_root_ports(root, 1)
    plan = allocate(root, Q35)
    bp = plan.function("00:01.0").bridge
    assert bp.io is None and port.io_window() is None
    assert bp.mem.size == 1 * MiB
    assert bp.pref.size == 1 * MiB and bp.pref.base >= FOUR_GIB
    assert plan.warnings == []
    check_invariants(root, Q35, plan)


def test_empty_conventional_bridge_gets_no_windows():
    root = pc_root()
    root.attach(named(PciPciBridge("br", chassis_nr=1), "pci-bridge"), 3, 0)
    bp = allocate(root, PC).function("00:03.0").bridge
    assert (bp.io, bp.mem, bp.pref) == (None, None, None)


def test_reserves_are_honoured():
    root = q35_root()
    reserve = Reserve(bus=5, io=0x2000, mem=64 * MiB, pref64=1 * GiB)
    port = named(PcieRootPort("rp1", chassis=1, slot=1, reserve=reserve), "pcie-root-port")
    root.attach(port, 1, 0)
    port.secondary.attach(make_testdev("td", {0: "io:32", 1: "mem32:4K"}), 0, 0)
    (second,) = add_root_ports(root, 1, first_slot=2)
    plan = allocate(root, Q35)
    bp = plan.function("00:01.0").bridge
    assert (bp.secondary, bp.subordinate) == (1, 6)
    assert plan.function("00:02.0").bridge.secondary == 7
    assert bp.io.size == 0x2000 and bp.io.base % 0x1000 == 0
    assert bp.mem.size == 64 * MiB
    assert bp.pref.size == 1 * GiB and bp.pref.base >= FOUR_GIB
    check_invariants(root, Q35, plan)


def test_bus_reserve_counts_from_the_secondary_bus():
    root = q35_root()
    port = named(PcieRootPort("rp1", reserve=Reserve(bus=2)), "pcie-root-port")
    root.attach(port, 1, 0)
    up = named(X3130Upstream("up"), "x3130-upstream")
    port.secondary.attach(up, 0, 0)
    for i in range(3):
        up.secondary.attach(named(Xio3130Downstream(f"d{i}"), "xio3130-downstream"), i, 0)
    plan = allocate(root, Q35)
    # The switch below needs buses 1-5, more than the reserve asks: its own count wins.
    assert (
        plan.function("00:01.0").bridge.secondary,
        plan.function("00:01.0").bridge.subordinate,
    ) == (1, 5)


def test_switch_with_four_downstream_ports():
    root = q35_root()
    (port,) = add_root_ports(root, 1)
    up = named(X3130Upstream("up"), "x3130-upstream")
    port.secondary.attach(up, 0, 0)
    downs = []
    for i in range(4):
        down = named(Xio3130Downstream(f"d{i}", chassis=2, slot=i, port=i), "xio3130-downstream")
        up.secondary.attach(down, i, 0)
        down.secondary.attach(make_testdev(f"td{i}", {0: "io:32", 1: "mem32:4K"}), 0, 0)
        downs.append(down)
    plan = allocate(root, Q35)
    assert plan.warnings == []
    rp, upp = plan.function("00:01.0").bridge, plan.function("01:00.0").bridge
    assert (rp.secondary, rp.subordinate) == (1, 6)
    assert (upp.secondary, upp.subordinate) == (2, 6)
    assert [plan.function(f"02:{i:02x}.0").bridge.secondary for i in range(4)] == [3, 4, 5, 6]
    assert rp.io.size == upp.io.size == 0x4000
    for down in downs:
        assert upp.io.contains(down.io_window().base, 0x1000)
    check_invariants(root, Q35, plan)


def test_switch_past_the_io_space_loses_its_last_downstream_ports_first():
    root, ports, devices = q35_with_ports(12)  # 48 KiB of IO windows
    (port,) = add_root_ports(root, 1, first_slot=0x10)
    up = named(X3130Upstream("up"), "x3130-upstream")
    port.secondary.attach(up, 0, 0)
    for i in range(4):
        down = named(Xio3130Downstream(f"d{i}"), "xio3130-downstream")
        up.secondary.attach(down, i, 0)
        down.secondary.attach(make_testdev(f"sw{i}", {0: "io:32"}), 0, 0)
    plan = allocate(root, Q35)
    # 12 root-port windows + 3 of the 4 downstream ports' windows fill the 60 KiB.
    assert [f.name for f, _ in plan.unassigned()] == ["sw3"]
    assert plan.function("00:10.0").bridge.io.size == 0x3000
    check_invariants(root, Q35, plan)


def test_pcie_pci_bridge_behind_a_root_port_shares_one_io_window():
    root = q35_root()
    (port,) = add_root_ports(root, 1)
    bridge = named(PciePciBridge("pb"), "pcie-pci-bridge")
    port.secondary.attach(bridge, 0, 0)
    for slot in range(6):
        bridge.secondary.attach(make_testdev(f"td{slot}", {0: "io:32"}), slot, 0)
    plan = allocate(root, Q35)
    assert plan.function("00:01.0").bridge.io.size == 0x1000
    assert plan.function("01:00.0").bridge.io.size == 0x1000
    assert plan.unassigned() == []
    check_invariants(root, Q35, plan)


# -- memory -----------------------------------------------------------------------------


def test_64bit_prefetchable_bars_land_above_4_gib():
    root = q35_root()
    root.attach(make_testdev("onroot", {2: "mem64-pref:16M", 4: "mem64:1M"}), 2, 0)
    (port,) = add_root_ports(root, 1, first_slot=3)
    port.secondary.attach(make_testdev("below", {2: "mem64-pref:256M"}), 0, 0)
    plan = allocate(root, Q35)
    onroot, below = plan.function("00:02.0"), plan.function("01:00.0")
    assert onroot.bars[0].address >= FOUR_GIB  # prefetchable 64-bit
    assert onroot.bars[1].address < FOUR_GIB  # non-prefetchable 64-bit: 32-bit space
    assert below.bars[0].address >= FOUR_GIB
    pref = plan.function("00:03.0").bridge.pref
    assert pref.base >= FOUR_GIB and pref.size == 256 * MiB
    check_invariants(root, Q35, plan)


def test_a_32bit_prefetchable_bar_pulls_the_whole_pref_window_below_4_gib():
    root = q35_root()
    (port,) = add_root_ports(root, 1)
    bridge = named(PciePciBridge("pb"), "pcie-pci-bridge")
    port.secondary.attach(bridge, 0, 0)
    bridge.secondary.attach(make_testdev("p64", {0: "mem64-pref:1M"}), 1, 0)
    bridge.secondary.attach(make_testdev("p32", {0: "mem32-pref:1M"}), 2, 0)
    plan = allocate(root, Q35)
    for bdf in ("00:01.0", "01:00.0"):
        pref = plan.function(bdf).bridge.pref
        assert pref.limit < FOUR_GIB and Q35.mem32.contains(pref.base, pref.size)
    check_invariants(root, Q35, plan)


def test_large_bars_are_aligned_and_windows_grow_to_hold_them():
    root = q35_root()
    (port,) = add_root_ports(root, 1)
    port.secondary.attach(
        make_testdev("big", {0: "mem32:256M", 1: "mem32:1M", 2: "mem64-pref:2G"}), 0, 0
    )
    plan = allocate(root, Q35)
    bp = plan.function("00:01.0").bridge
    assert bp.mem.size == 257 * MiB and bp.mem.base % (256 * MiB) == 0
    assert bp.pref.size == 2 * GiB and bp.pref.base % (2 * GiB) == 0
    check_invariants(root, Q35, plan)


def test_32bit_memory_exhaustion_leaves_the_last_bars_unassigned():
    layout = AddressLayout("q35", Q35.io, Window(0xFE000000, 0xFEBFFFFF), Q35.mem64)  # 12 MiB
    root, ports, devices = q35_with_ports(8, {0: "mem32:2M"})
    plan = allocate(root, layout)
    # Each port's mem window is 2 MiB and each port has a 4 KiB MSI-X BAR of its own on
    # the root bus: the eight BARs and five windows fit in 12 MiB, a sixth window does not.
    assert [f.name for f, _ in plan.unassigned()] == ["td6", "td7", "td8"]
    assert any(w.startswith("32-bit MMIO space exhausted") for w in plan.warnings)
    # A port left without its 32-bit memory window still forwards its prefetchable one.
    assert ports[7].mem_window() is None and ports[7].pref_window() is not None
    check_invariants(root, layout, plan)


def test_without_a_64bit_window_prefetchable_bars_go_below_4_gib():
    layout = AddressLayout("pc", PC.io, PC.mem32, None)
    root = pc_root()
    root.attach(make_testdev("td", {0: "mem64-pref:1M"}), 2, 0)
    plan = allocate(root, layout)
    assert plan.function("00:02.0").bars[0].address < FOUR_GIB
    check_invariants(root, layout, plan)


def test_io_reserved_ranges_are_avoided():
    layout = AddressLayout(
        "q35", Q35.io, Q35.mem32, Q35.mem64, io_reserved=(Window(0x8000, 0x8FFF),)
    )
    root, ports, _ = q35_with_ports(15)
    plan = allocate(root, layout)
    assert len(plan.unassigned()) == 1  # 14 windows around the hole
    assert all(not (p.io_window() and p.io_window().base == 0x8000) for p in ports)
    check_invariants(root, layout, plan)


def test_bus_numbers_exhausted_leave_the_rest_unreachable_not_crashed():
    root = q35_root()
    first = named(PcieRootPort("rp1", reserve=Reserve(bus=254)), "pcie-root-port")
    root.attach(first, 1, 0)
    second = named(PcieRootPort("rp2"), "pcie-root-port")
    root.attach(second, 2, 0)
    second.secondary.attach(make_testdev("td"), 0, 0)
    plan = allocate(root, Q35)
    assert first.subordinate_bus_number == 255
    assert second.secondary_bus_number == 0
    assert [f.name for f in plan.functions] == ["q35-host", "rp1", "ich9-lpc"]
    assert any("bus numbers exhausted" in w for w in plan.warnings)


def test_programming_through_a_host_remaps_once_with_the_final_state():
    root, _, devices = q35_with_ports(16)
    host = PciHost(root, AddressSpace("io"), AddressSpace("mmio"), lambda gsi, level: None)
    calls = []
    original = host.wanted_mappings
    host.wanted_mappings = lambda scope=None: calls.append(1) or original(scope)
    allocate(root, Q35, host)
    assert len(calls) == 1
    assert devices[0].bars[0].mapped_at == devices[0].bar_address(devices[0].bars[0])
    assert devices[15].bars[0].mapped_at is None  # no IO window above it
    assert devices[15].bars[1].mapped_at is not None


# -- random trees -----------------------------------------------------------------------

BAR_CHOICES = st.sampled_from(
    ["io:4", "io:32", "io:256", "mem32:16", "mem32:4K", "mem32:1M", "mem32:64M",
     "mem32-pref:1M", "mem64:8K", "mem64-pref:4K", "mem64-pref:2M", "mem64-pref:1G"]
)  # fmt: skip


@st.composite
def device_bars(draw):
    chosen = {}
    index = 0
    for spec in draw(st.lists(BAR_CHOICES, max_size=4)):
        if index > 5 or (spec.startswith("mem64") and index > 4):
            break
        chosen[index] = spec
        index += 2 if spec.startswith("mem64") else 1
    return chosen or {0: "io:32"}


@st.composite
def trees(draw):
    machine = draw(st.sampled_from(["pc", "q35"]))
    root = q35_root() if machine == "q35" else pc_root()
    counter = [0]

    def name(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}{counter[0]}"

    def fill(bus: PciBus, depth: int, slots: list[int]) -> None:
        for slot in slots:
            express_port = bus.parent is not None and bus.parent.has_link_below
            kinds = ["dev"] * 3
            if depth < 3:
                if machine == "q35" and bus.is_root:
                    kinds += ["rp", "rp", "rp", "pcie-pci"]
                elif express_port:
                    kinds += ["switch", "pcie-pci"]
                else:
                    kinds += ["pci-bridge"]
            kind = draw(st.sampled_from(kinds))
            if kind == "dev":
                bus.attach(make_testdev(name("td"), draw(device_bars())), slot, 0)
                continue
            if kind == "rp":
                io = draw(st.sampled_from([0, 0, 0x1000, 0x3000]))
                mem = draw(st.sampled_from([0, 0, 2 * MiB]))
                bridge = PcieRootPort(
                    name("rp"), reserve=Reserve(bus=draw(st.integers(0, 3)), io=io, mem=mem)
                )
            elif kind == "pcie-pci":
                bridge = PciePciBridge(name("pb"))
            elif kind == "pci-bridge":
                bridge = PciPciBridge(name("br"), chassis_nr=1)
            else:
                bridge = X3130Upstream(name("up"))
                bus.attach(bridge, slot, 0)
                for i in range(draw(st.integers(1, 4))):
                    down = Xio3130Downstream(name("d"))
                    bridge.secondary.attach(down, i, 0)
                    if draw(st.booleans()):
                        fill(down.secondary, depth + 2, [0])
                continue
            bus.attach(bridge, slot, 0)
            below = (
                [0]
                if bridge.has_link_below
                else draw(st.lists(st.integers(0, 31), unique=True, max_size=4))
            )
            fill(bridge.secondary, depth + 1, below)

    free = [s for s in range(2, 0x1F)]
    slots = draw(st.lists(st.sampled_from(free), unique=True, min_size=1, max_size=24))
    fill(root, 0, slots)
    base = machine_layout(machine, 1 * GiB, 1 * GiB)
    small = draw(st.booleans())
    if small:  # squeeze every space so that exhaustion happens often
        io_end = draw(st.sampled_from([0x1FFF, 0x4FFF, 0x8FFF]))
        mem32 = Window(0xFE000000 - draw(st.sampled_from([0, 16, 128])) * MiB, 0xFEBFFFFF)
        mem64 = draw(st.sampled_from([None, Window(32 * GiB, 32 * GiB + 2 * GiB - 1), base.mem64]))
        layout = AddressLayout(machine, Window(0x1000, io_end), mem32, mem64)
    else:
        layout = base
    return root, layout


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees())
def test_random_trees_never_overlap_and_stay_inside_their_windows(tree):
    root, layout = tree
    plan = allocate(root, layout)
    check_invariants(root, layout, plan)
    # Every unassigned BAR is named in a warning.
    text = "\n".join(plan.warnings)
    for f, b in plan.unassigned():
        assert f"{f.short_bdf} BAR{b.index}" in text
