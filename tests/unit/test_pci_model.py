"""The PCI model as a guest drives it through config space: sizing, decoding, bridges,
conf1 and ECAM."""

import pytest

from pcivm.bus import AddressSpace
from pcivm.pci import regs as R
from pcivm.pci.bridge import Window
from pcivm.pci.host import Conf1, Ecam, PciHost
from pcivm.pci.testdev import SIGNATURE, PciTestDev
from pcivm.pci.topology import build_topology


def dev(text):
    from pcivm.options import parse_device

    return parse_device(text)


def make_host(machine="pc", devices=()):
    topology = build_topology(machine, [dev(d) for d in devices])
    io, mmio = AddressSpace("io"), AddressSpace("mmio")
    irqs = []
    host = PciHost(topology.root, io, mmio, lambda gsi, level: irqs.append((gsi, level)))
    for function in topology.functions():
        host.adopt(function)
    return topology, host, io, mmio, irqs


def test_bar_sizing_reads_back_the_size_mask_and_flags():
    d = PciTestDev("t", {0: "mem64-pref:1G", 2: "io:32", 3: "mem32:64K"})
    for offset in (0x10, 0x14, 0x18, 0x1C):
        d.write_config(offset, 4, 0xFFFFFFFF)
    assert d.read_config(0x10, 4) == 0xC000000C  # 1 GiB, 64-bit, prefetchable
    assert d.read_config(0x14, 4) == 0xFFFFFFFF  # upper half of a 1 GiB BAR
    assert d.read_config(0x18, 4) == 0xFFFFFFE1  # 32 IO ports
    assert d.read_config(0x1C, 4) == 0xFFFF0000
    assert d.read_config(0x20, 4) == 0  # no BAR4: not writable


def test_read_only_and_write_1_to_clear_bits():
    d = PciTestDev("t")
    d.write_config(R.PCI_VENDOR_ID, 4, 0)
    assert d.read_config(R.PCI_VENDOR_ID, 2) == 0x1B36
    d.config.set(R.PCI_STATUS, 2, 0x8000 | R.PCI_STATUS_CAP_LIST)
    d.write_config(R.PCI_STATUS, 2, 0x8000)
    assert d.read_config(R.PCI_STATUS, 2) == R.PCI_STATUS_CAP_LIST


def test_command_register_turns_bar_decoding_on_and_off():
    topology, host, io, mmio, _ = make_host("pc", ["pci-testdev,id=t,addr=3"])
    t = topology.by_id["t"]
    t.set_bar_address(t.bars[1], 0x2000)
    t.set_bar_address(t.bars[0], 0xC0000000)
    assert io.read(0x2000, 1) == 0xFF  # decoding still off
    t.write_config(R.PCI_COMMAND, 2, R.PCI_COMMAND_IO | R.PCI_COMMAND_MEMORY)
    assert io.read(0x2000, 4) == int.from_bytes(SIGNATURE[:4], "little")
    assert mmio.read(0xC0000000, 8) == int.from_bytes(SIGNATURE, "little")
    t.write_config(R.PCI_COMMAND, 2, R.PCI_COMMAND_MEMORY)
    assert io.read(0x2000, 4) == 0xFFFFFFFF  # IO bit cleared: the BAR is silent
    assert mmio.read(0xC0000000, 1) == ord("P")


def test_a_bridge_forwards_only_inside_its_windows():
    topology, host, io, mmio, _ = make_host(
        "pc", ["pci-bridge,id=b,chassis_nr=1,addr=5", "pci-testdev,id=t,bus=b,addr=2"]
    )
    bridge, t = topology.by_id["b"], topology.by_id["t"]
    bridge.set_bus_numbers(0, 1, 1)
    t.set_bar_address(t.bars[1], 0x3000)
    t.write_config(R.PCI_COMMAND, 2, R.PCI_COMMAND_IO)
    assert io.read(0x3000, 1) == 0xFF  # the bridge has no IO window yet
    bridge.set_io_window(Window(0x3000, 0x3FFF))
    bridge.write_config(R.PCI_COMMAND, 2, R.PCI_COMMAND_IO)
    assert io.read(0x3000, 1) == ord("P")
    bridge.write_config(R.PCI_IO_BASE, 1, 0x40)  # base 0x4000 > limit: window closed
    assert io.read(0x3000, 1) == 0xFF


def test_conf1_and_ecam_see_the_same_bytes():
    topology, host, *_ = make_host("q35", ["pcie-root-port,id=rp,chassis=1", "pci-testdev,bus=rp"])
    rp = topology.by_id["rp"]
    rp.set_bus_numbers(0, 1, 1)
    conf1, ecam = Conf1(host), Ecam(host)
    for bus, slot, fn in ((0, 0, 0), (0, 1, 0), (1, 0, 0), (0, 0x1F, 0)):
        for reg in range(0, 0x40, 4):
            conf1.write(0, 4, 0x80000000 | bus << 16 | slot << 11 | fn << 8 | reg)
            via_conf1 = conf1.read(4, 4)
            via_ecam = ecam.read(bus << 20 | slot << 15 | fn << 12 | reg, 4)
            assert via_conf1 == via_ecam
        conf1.write(0, 4, 0x80000000 | bus << 16 | slot << 11 | fn << 8)
        assert conf1.read(6, 2) == ecam.read(bus << 20 | slot << 15 | fn << 12 | 2, 2)
    # Nothing at 02.0 or on bus 2: all-ones.
    assert ecam.read(2 << 15, 4) == 0xFFFFFFFF
    assert ecam.read(2 << 20, 4) == 0xFFFFFFFF


def test_conf1_needs_the_enable_bit_and_dword_address_writes():
    _, host, *_ = make_host("pc")
    reset = []

    class Reset:
        def read(self, offset, size):
            return 0

        def write(self, offset, size, value):
            reset.append((offset, value))

    conf1 = Conf1(host, other=Reset())
    conf1.write(0, 4, 0x00000000)
    assert conf1.read(4, 4) == 0xFFFFFFFF
    conf1.write(0, 4, 0x80000000)
    assert conf1.read(4, 4) == 0x12378086  # the i440FX host bridge
    conf1.write(1, 1, 0x06)  # a byte at 0xcf9 is the reset control register
    assert reset == [(1, 0x06)]


@pytest.mark.parametrize(
    "machine,devices,message",
    [
        ("pc", ["nosuch"], "'nosuch' is not a valid device model name"),
        ("pc", ["pci-testdev,frob=1"], "property 'pci-testdev.frob' not found"),
        ("pc", ["pci-testdev,id=a", "pci-testdev,id=a"], "duplicate ID 'a'"),
        ("pc", ["pci-testdev,bus=nowhere"], "Bus 'nowhere' not found"),
        ("pc", ["pci-testdev,addr=3", "pci-testdev,addr=3"], "slot 3 function 0 not available"),
        ("pc", ["pci-testdev,addr=20"], "out of range"),
        ("pc", ["pci-testdev,addr=3.9"], "out of range"),
        ("pc", ["pci-testdev,addr=x"], "expects SLOT"),
        ("pc", ["pcie-root-port,chassis=1"], "cannot plug into 'pci.0'"),
        ("q35", ["pcie-root-port,id=r", "pci-testdev,bus=r,addr=1"], "slot 1 is not available"),
        ("q35", ["pcie-root-port,id=r", "xio3130-downstream,bus=r"], "cannot plug"),
        ("pc", ["pci-bridge,id=b"], "chassis_nr"),
        ("pc", ["pci-bridge,id=b,chassis_nr=1,bus=b"], "Bus 'b' not found"),
        ("pc", ["pci-testdev,addr=4", "pci-testdev,addr=4.1"], "single function device"),
        ("pc", ["pci-testdev,addr=4.1", "pci-testdev,addr=4"], "indicates single function"),
        ("pc", ["pci-testdev,bar0=mem32:3K"], "power of two"),
        ("pc", ["pci-testdev,multifunction=maybe"], "expects on or off"),
    ],
)
def test_bad_device_options_are_one_line_errors(machine, devices, message):
    from pcivm.errors import UsageError

    with pytest.raises(UsageError, match=message):
        build_topology(machine, [dev(d) for d in devices])


def test_a_full_bus_is_reported():
    from pcivm.errors import UsageError

    devices = [dev("pci-testdev") for _ in range(30)]  # slots 2-31 of pci.0
    build_topology("pc", devices)
    with pytest.raises(UsageError, match="no slot/function available"):
        build_topology("pc", devices + [dev("pci-testdev")])


def test_automatic_placement_follows_qemu():
    topology = build_topology("pc", [dev("pci-testdev,id=a"), dev("pci-testdev,id=b")])
    assert [topology.by_id[i].bdf for i in "ab"] == ["0000:00:02.0", "0000:00:03.0"]
    q35 = build_topology("q35", [dev("pci-testdev,id=a")])
    assert q35.by_id["a"].bdf == "0000:00:01.0"


def test_multifunction_functions_are_visible_only_with_function_0_multifunction():
    topology = build_topology(
        "pc", [dev("pci-testdev,id=a,addr=4,multifunction=on"), dev("pci-testdev,id=b,addr=4.3")]
    )
    bus = topology.root
    assert bus.function(4, 3) is topology.by_id["b"]
    assert topology.by_id["a"].read_config(R.PCI_HEADER_TYPE, 1) & 0x80


def test_intx_is_swizzled_through_bridges_and_shared_lines_are_ored():
    topology, host, _, _, irqs = make_host(
        "pc",
        ["pci-bridge,id=b,chassis_nr=1,addr=5", "pci-testdev,id=t,bus=b,addr=2",
         "pci-testdev,id=u,addr=2"],
    )  # fmt: skip
    t, u = topology.by_id["t"], topology.by_id["u"]
    t.config.set(R.PCI_INTERRUPT_PIN, 1, 1)
    u.config.set(R.PCI_INTERRUPT_PIN, 1, 1)
    # t: INTA at slot 2 behind a bridge in slot 5 -> INTC at the bridge -> GSI 16+(5+2)%8
    assert host.intx_gsi(t) == 16 + 7
    assert host.intx_gsi(u) == 16 + 2
    t.set_intx(1)
    assert irqs == [(23, 1)]
    t.set_intx(0)
    assert irqs == [(23, 1), (23, 0)]
    t.set_intx(1)
    t.write_config(R.PCI_COMMAND, 2, R.PCI_COMMAND_INTX_DISABLE)
    assert irqs[-1] == (23, 0)  # INTx disabled: the line drops, the status bit stays
    assert t.read_config(R.PCI_STATUS, 2) & R.PCI_STATUS_INTERRUPT
    t.write_config(R.PCI_COMMAND, 2, 0)
    assert irqs[-1] == (23, 1)


def test_a_config_write_remaps_only_what_it_can_move():
    topology, host, io, mmio, _ = make_host(
        "pc",
        [f"pci-testdev,id=t{i}" for i in range(8)]
        + ["pci-bridge,id=b,chassis_nr=1", "pci-testdev,id=u,bus=b,addr=1"],
    )
    from pcivm.pci.allocator import allocate
    from pcivm.pci.layout import machine_layout

    allocate(topology.root, machine_layout("pc", 1 << 30, 1 << 30), host=host)
    full = host.wanted_mappings()
    scopes = []
    original = host.wanted_mappings
    host.wanted_mappings = lambda scope=None: scopes.append(scope) or original(scope)
    t3, bridge, u = topology.by_id["t3"], topology.by_id["b"], topology.by_id["u"]
    t3.write_config(R.PCI_COMMAND, 2, 0)  # off: only t3 changes
    assert scopes == [t3]
    assert t3.bars[0].mapped_at is None and topology.by_id["t4"].bars[0].mapped_at is not None
    bridge.write_config(R.PCI_COMMAND, 2, R.PCI_COMMAND_MEMORY)  # the bridge stops IO below
    assert scopes[-1] is bridge
    assert u.bars[1].mapped_at is None and u.bars[0].mapped_at is not None
    bridge.write_config(R.PCI_COMMAND, 2, R.PCI_COMMAND_IO | R.PCI_COMMAND_MEMORY)
    t3.write_config(R.PCI_COMMAND, 2, R.PCI_COMMAND_IO | R.PCI_COMMAND_MEMORY)
    # Scoped updates end where a full recomputation would.
    assert set(host._mapped) == set(full) == set(original())
