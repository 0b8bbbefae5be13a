"""MSI-X and MSI as a guest programs them: capability registers through config space,
the vector table and PBA through the BAR, delivery, masking, pending bits, listeners, and
hostile accesses."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcivm.pci import regs as R
from pcivm.pci.function import IO, MEM, Bar, PciFunction
from pcivm.pci.msi import MsiCapability
from pcivm.pci.msix import MsixCapability, exclusive_bar_layout

MSI_ADDR = 0xFEE0_0000


class RecordingSink:
    def __init__(self, check=None):
        self.sent: list[tuple[int, int]] = []
        self._check = check

    def signal_msi(self, address: int, data: int) -> None:
        if self._check:
            self._check(address, data)
        self.sent.append((address, data))


def make_function(bar_size: int = 0x1000) -> PciFunction:
    function = PciFunction("dev0", 0x1AF4, 0x1000, 0x020000)
    function.add_bar(Bar(1, MEM, bar_size, name="msix"))
    return function


def make_msix(vectors: int = 4, sink=None):
    function = make_function()
    msix = MsixCapability(function, vectors, 1, 0, 1, 0x800, sink=sink or RecordingSink())
    return function, msix, msix.bar_handler(1)


def program(bar, vector: int, address: int, data: int, masked: bool = False) -> None:
    base = 16 * vector
    bar.write(base + 0, 4, address & 0xFFFFFFFF)
    bar.write(base + 4, 4, address >> 32)
    bar.write(base + 8, 4, data)
    bar.write(base + 12, 4, 1 if masked else 0)


def msix_control(function, msix) -> int:
    return function.read_config(msix.offset + 2, 2)


def set_msix_control(function, msix, enable: bool, maskall: bool = False) -> None:
    function.write_config(
        msix.offset + 2, 2, (0x8000 if enable else 0) | (0x4000 if maskall else 0)
    )


# -- the capability as the guest reads it ------------------------------------------------


def test_msix_capability_is_in_the_list_with_size_and_locations():
    function, msix, _ = make_msix(vectors=5)
    assert function.read_config(R.PCI_STATUS, 2) & R.PCI_STATUS_CAP_LIST
    cap = function.read_config(R.PCI_CAPABILITY_LIST, 1)
    assert cap == msix.offset
    assert function.read_config(cap, 1) == R.PCI_CAP_ID_MSIX
    assert function.read_config(cap + 1, 1) == 0  # last in the list
    assert function.read_config(cap + 2, 2) == 4  # table size - 1, disabled, unmasked
    assert function.read_config(cap + 4, 4) == 0x000 | 1  # table at BAR1 + 0
    assert function.read_config(cap + 8, 4) == 0x800 | 1  # PBA at BAR1 + 0x800


def test_only_enable_and_function_mask_are_writable_in_message_control():
    function, msix, _ = make_msix(vectors=5)
    function.write_config(msix.offset + 2, 2, 0xFFFF)
    assert msix_control(function, msix) == 0xC000 | 4
    function.write_config(msix.offset + 4, 4, 0xFFFFFFFF)
    function.write_config(msix.offset + 8, 4, 0xFFFFFFFF)
    assert function.read_config(msix.offset + 4, 4) == 1
    assert function.read_config(msix.offset + 8, 4) == 0x801


def test_msi_and_msix_capabilities_chain_as_a_guest_walks_them():
    function = make_function()
    msi = MsiCapability(function, vectors=1)
    msix = MsixCapability(function, 2, 1, 0, 1, 0x800)
    first = function.read_config(R.PCI_CAPABILITY_LIST, 1)
    assert (first, function.read_config(first, 1)) == (msi.offset, R.PCI_CAP_ID_MSI)
    second = function.read_config(first + 1, 1)
    assert (second, function.read_config(second, 1)) == (msix.offset, R.PCI_CAP_ID_MSIX)
    assert function.read_config(second + 1, 1) == 0


def test_table_entries_start_masked_and_zeroed():
    _, _, bar = make_msix(vectors=3)
    for vector in range(3):
        assert bar.read(16 * vector, 8) == 0
        assert bar.read(16 * vector + 8, 4) == 0
        assert bar.read(16 * vector + 12, 4) == 1


# -- delivery ----------------------------------------------------------------------------


def test_an_enabled_unmasked_vector_delivers_its_message():
    function, msix, bar = make_msix()
    program(bar, 2, MSI_ADDR | 0x1000, 0x4041)
    set_msix_control(function, msix, enable=True)
    assert msix.notify(2) is True
    assert msix.sink.sent == [(MSI_ADDR | 0x1000, 0x4041)]


def test_nothing_is_sent_or_left_pending_while_msix_is_disabled():
    _, msix, bar = make_msix()
    program(bar, 0, MSI_ADDR, 0x30)
    assert msix.notify(0) is False
    assert msix.sink.sent == [] and not msix.pending(0)


def test_a_masked_vector_becomes_pending_and_is_sent_when_unmasked():
    function, msix, bar = make_msix()
    set_msix_control(function, msix, enable=True)
    program(bar, 1, MSI_ADDR, 0x31, masked=True)
    assert msix.notify(1) is False
    assert bar.read(0x800, 8) == 0b10  # the PBA shows it
    assert msix.sink.sent == []
    bar.write(16 * 1 + 12, 4, 0)  # unmask
    assert msix.sink.sent == [(MSI_ADDR, 0x31)]
    assert bar.read(0x800, 8) == 0


def test_the_function_mask_holds_every_vector_until_cleared():
    function, msix, bar = make_msix()
    program(bar, 0, MSI_ADDR, 0x30)
    program(bar, 3, MSI_ADDR, 0x33)
    set_msix_control(function, msix, enable=True, maskall=True)
    msix.notify(0)
    msix.notify(3)
    assert msix.sink.sent == [] and bar.read(0x800, 1) == 0b1001
    set_msix_control(function, msix, enable=True, maskall=False)
    assert msix.sink.sent == [(MSI_ADDR, 0x30), (MSI_ADDR, 0x33)]
    assert bar.read(0x800, 1) == 0


def test_clearing_the_function_mask_leaves_still_masked_vectors_pending():
    function, msix, bar = make_msix()
    program(bar, 0, MSI_ADDR, 0x30, masked=True)
    set_msix_control(function, msix, enable=True, maskall=True)
    msix.notify(0)
    set_msix_control(function, msix, enable=True)
    assert msix.sink.sent == [] and msix.pending(0)
    msix.clear_pending(0)
    bar.write(12, 4, 0)
    assert msix.sink.sent == []


def test_notifying_a_vector_the_table_lacks_is_ignored():
    function, msix, _ = make_msix(vectors=2)
    set_msix_control(function, msix, enable=True)
    assert msix.notify(2) is False and msix.notify(-1) is False


def test_listener_follows_programming_enable_and_masks():
    function, msix, bar = make_msix(vectors=2)
    changes = []
    msix.on_vector_change = lambda *change: changes.append(change)
    program(bar, 1, MSI_ADDR, 0x51)
    assert changes[-1] == (1, MSI_ADDR, 0x51, True)  # still disabled
    changes.clear()
    set_msix_control(function, msix, enable=True)
    assert changes == [(1, MSI_ADDR, 0x51, False)]  # vector 0 stays masked: no change
    changes.clear()
    bar.write(16 + 12, 4, 1)
    assert changes == [(1, MSI_ADDR, 0x51, True)]
    changes.clear()
    bar.write(16 + 12, 4, 1)  # no change, no call
    assert changes == []


def test_reset_masks_and_disables_everything():
    function, msix, bar = make_msix()
    program(bar, 0, MSI_ADDR, 0x30)
    set_msix_control(function, msix, enable=True, maskall=True)
    msix.notify(0)
    msix.reset()
    assert msix_control(function, msix) == 3
    assert bar.read(12, 4) == 1 and bar.read(0, 4) == 0
    assert bar.read(0x800, 8) == 0


# -- table access widths -----------------------------------------------------------------


def test_qword_writes_program_address_and_data_at_once():
    function, msix, bar = make_msix()
    bar.write(16, 8, (0x1 << 32) | MSI_ADDR)
    bar.write(24, 8, 0x42)  # data 0x42, vector control 0: unmasked
    assert msix.message(1) == ((1 << 32) | MSI_ADDR, 0x42)
    assert not msix.vector_masked(1)
    assert bar.read(16, 8) == (1 << 32) | MSI_ADDR


def test_byte_word_and_unaligned_table_writes_are_ignored():
    _, msix, bar = make_msix()
    bar.write(0, 1, 0xFF)
    bar.write(0, 2, 0xFFFF)
    bar.write(2, 4, 0xFFFFFFFF)
    bar.write(4, 8, 0xFFFFFFFFFFFFFFFF)
    assert bar.read(0, 8) == 0


def test_reserved_vector_control_bits_read_zero():
    _, _, bar = make_msix()
    bar.write(12, 4, 0xFFFFFFFE)
    assert bar.read(12, 4) == 0


def test_the_pba_is_read_only():
    function, msix, bar = make_msix()
    set_msix_control(function, msix, enable=True)
    bar.write(0x800, 8, 0xFF)
    assert bar.read(0x800, 8) == 0


def test_accesses_between_and_after_the_structures_read_zero():
    _, _, bar = make_msix()
    assert bar.read(0x400, 4) == 0
    assert bar.read(0xFFC, 4) == 0
    assert bar.read(0x808, 4) == 0
    bar.write(0x400, 4, 1)


# -- placement ---------------------------------------------------------------------------


def test_exclusive_bar_layout_matches_a_page_with_the_pba_in_its_upper_half():
    assert exclusive_bar_layout(1) == (0x1000, 0, 0x800)
    assert exclusive_bar_layout(128) == (0x1000, 0, 0x800)
    assert exclusive_bar_layout(129) == (0x2000, 0, 0x1000)
    assert exclusive_bar_layout(2048) == (0x10000, 0, 0x8000)


def test_table_and_pba_may_live_in_different_bars():
    function = make_function()
    function.add_bar(Bar(2, MEM, 0x1000))
    msix = MsixCapability(function, 3, 1, 0x100, 2, 0x8, sink=RecordingSink())
    table, pba = msix.bar_handler(1), msix.bar_handler(2)
    program(msix.table_handler, 0, MSI_ADDR, 0x60, masked=True)  # relative to the table
    assert table.read(0x100 + 8, 4) == 0x60  # relative to the BAR
    set_msix_control(function, msix, enable=True)
    msix.notify(0)
    assert pba.read(0x8, 8) == 1
    assert table.read(0x800, 8) == 0 and pba.read(0, 4) == 0


@pytest.mark.parametrize(
    "args",
    [
        (4, 1, 0, 1, 0x20),  # the PBA overlaps the table
        (4, 1, 0x4, 1, 0x800),  # not QWORD aligned
        (4, 1, 0xFF8, 1, 0x800),  # the table does not fit the BAR
        (4, 0, 0, 0, 0x800),  # BAR0 is an IO BAR
        (0, 1, 0, 1, 0x800),
        (2049, 1, 0, 1, 0x800),
        (4, 6, 0, 1, 0x800),
    ],
)
def test_impossible_placements_are_refused(args):
    function = make_function()
    function.add_bar(Bar(0, IO, 0x100))
    with pytest.raises(ValueError):
        MsixCapability(function, *args)


# -- hostile guest -----------------------------------------------------------------------

accesses = st.lists(
    st.tuples(
        st.sampled_from(["read", "write", "control", "notify", "config"]),
        st.integers(-16, 0x1010),
        st.integers(0, 9),
        st.integers(0, (1 << 64) - 1),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(accesses)
def test_hostile_accesses_never_raise_and_never_deliver_while_masked(ops):
    holder = {}

    def check(address, data):
        msix = holder["msix"]
        assert msix.enabled and not msix.function_masked
        assert any(msix.vector_state(v) == (address, data, False) for v in range(msix.vectors))

    function, msix, bar = make_msix(vectors=6, sink=RecordingSink(check))
    holder["msix"] = msix
    for kind, offset, size, value in ops:
        if kind == "read":
            result = bar.read(offset, size)
            assert 0 <= result < 1 << (8 * max(size, 1))
        elif kind == "write":
            bar.write(offset, size, value)
        elif kind == "control":
            function.write_config(msix.offset + 2, 2, value & 0xFFFF)
        elif kind == "config":
            function.write_config(offset & 0xFF, max(1, min(size, 4)), value & 0xFFFFFFFF)
        else:
            msix.notify(offset % 8)
        assert msix_control(function, msix) & 0x3FFF == 5
        assert msix.table_handler.read(offset, size) >= 0
        assert msix.pba_handler.read(offset, size) >= 0


# -- MSI ---------------------------------------------------------------------------------


def make_msi(**kwargs):
    function = make_function()
    msi = MsiCapability(function, sink=RecordingSink(), **kwargs)
    return function, msi


def test_msi_capability_layout_with_64_bit_address_and_masking():
    function, msi = make_msi(vectors=4, addr64=True, per_vector_mask=True)
    cap = function.read_config(R.PCI_CAPABILITY_LIST, 1)
    assert cap == msi.offset and function.read_config(cap, 1) == R.PCI_CAP_ID_MSI
    flags = function.read_config(cap + 2, 2)
    assert flags == 0x0100 | 0x0080 | (2 << 1)  # mask capable, 64-bit, 4 vectors wanted
    function.write_config(cap + 2, 2, 0xFFFF)
    assert function.read_config(cap + 2, 2) == flags | 0x0070 | 0x0001
    function.write_config(cap + 4, 4, 0xFFFFFFFF)
    assert function.read_config(cap + 4, 4) == 0xFFFFFFFC
    function.write_config(cap + 0x10, 4, 0xFFFFFFFF)
    assert function.read_config(cap + 0x10, 4) == 0xF  # one mask bit per vector
    function.write_config(cap + 0x14, 4, 0xFFFFFFFF)
    assert function.read_config(cap + 0x14, 4) == 0  # pending bits are read-only


def enable_msi(function, msi, address, data, log2_vectors=0, data_at=0xC):
    cap = msi.offset
    function.write_config(cap + 4, 4, address & 0xFFFFFFFF)
    if msi.addr64:
        function.write_config(cap + 8, 4, address >> 32)
    function.write_config(cap + data_at, 2, data)
    flags = function.read_config(cap + 2, 2)
    function.write_config(cap + 2, 2, flags | (log2_vectors << 4) | 1)


def test_msi_delivers_with_the_vector_in_the_low_data_bits():
    function, msi = make_msi(vectors=4)
    assert msi.notify(0) is False  # disabled
    enable_msi(function, msi, MSI_ADDR | 0x3000, 0x4060, log2_vectors=2)
    msi.notify(0)
    msi.notify(3)
    assert msi.sink.sent == [(MSI_ADDR | 0x3000, 0x4060), (MSI_ADDR | 0x3000, 0x4063)]


def test_msi_vectors_beyond_those_granted_share_them():
    function, msi = make_msi(vectors=4)
    enable_msi(function, msi, MSI_ADDR, 0x4060, log2_vectors=1)
    msi.notify(3)
    assert msi.sink.sent == [(MSI_ADDR, 0x4061)]


def test_msi_32_bit_keeps_its_data_at_offset_8():
    function, msi = make_msi(addr64=False)
    assert not function.read_config(msi.offset + 2, 2) & 0x80
    enable_msi(function, msi, MSI_ADDR, 0x41, data_at=0x8)
    msi.notify()
    assert msi.sink.sent == [(MSI_ADDR, 0x41)]


def test_msi_masked_vector_is_pending_until_unmasked():
    function, msi = make_msi(vectors=2, per_vector_mask=True)
    enable_msi(function, msi, MSI_ADDR, 0x50, log2_vectors=1)
    function.write_config(msi.offset + 0x10, 4, 0b10)
    msi.notify(1)
    assert msi.sink.sent == []
    assert function.read_config(msi.offset + 0x14, 4) == 0b10
    function.write_config(msi.offset + 0x10, 4, 0)
    assert msi.sink.sent == [(MSI_ADDR, 0x51)]
    assert function.read_config(msi.offset + 0x14, 4) == 0


def test_msi_listener_sees_enable_and_disable():
    function, msi = make_msi()
    changes = []
    msi.on_vector_change = lambda *change: changes.append(change)
    enable_msi(function, msi, MSI_ADDR, 0x52)
    assert changes[-1] == (0, MSI_ADDR, 0x52, False)
    function.write_config(msi.offset + 2, 2, 0)
    assert changes[-1] == (0, MSI_ADDR, 0x52, True)
    msi.reset()
    assert changes[-1] == (0, 0, 0, True)


@pytest.mark.parametrize("vectors", [0, 3, 64])
def test_msi_vector_counts_must_be_powers_of_two_up_to_32(vectors):
    with pytest.raises(ValueError):
        make_msi(vectors=vectors)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 0xFF), st.integers(1, 4), st.integers(0, 0xFFFFFFFF)),
        max_size=40,
    ),
    st.integers(0, 40),
)
def test_msi_hostile_config_writes_never_raise_or_deliver_while_masked(writes, vector):
    holder = {}

    def check(address, data):
        msi = holder["msi"]
        assert msi.enabled
        assert any(msi.vector_state(v) == (address, data, False) for v in range(msi.vectors))

    function = make_function()
    msi = MsiCapability(function, 8, per_vector_mask=True, sink=RecordingSink(check))
    holder["msi"] = msi
    for offset, size, value in writes:
        function.write_config(offset, size, value)
        msi.notify(vector % 8)


def test_a_root_port_carries_qemus_msix_bar_and_the_guest_can_program_it():
    from pcivm.pci.topology_devices import PcieRootPort

    port = PcieRootPort("rp1", chassis=1, slot=1)
    # Found through the capability list, as a guest finds it.
    caps, at = [], port.read_config(R.PCI_CAPABILITY_LIST, 1)
    while at:
        caps.append(port.read_config(at, 1))
        at = port.read_config(at + 1, 1)
    assert R.PCI_CAP_ID_MSIX in caps and R.PCI_CAP_ID_EXP in caps
    # BAR0 sizes as 4 KiB of 32-bit, non-prefetchable memory.
    port.write_config(R.PCI_BASE_ADDRESS_0, 4, 0xFFFFFFFF)
    assert port.read_config(R.PCI_BASE_ADDRESS_0, 4) == 0xFFFFF000
    changes = []
    port.msix.on_vector_change = lambda *change: changes.append(change)
    port.msix.sink = sink = RecordingSink()
    program(port.msix.bar_handler(0), 0, MSI_ADDR, 0x41)
    set_msix_control(port, port.msix, enable=True)
    assert changes[-1] == (0, MSI_ADDR, 0x41, False)
    assert port.msix.notify(0) and sink.sent == [(MSI_ADDR, 0x41)]


@pytest.mark.parametrize("port_type", ["upstream", "downstream"])
def test_switch_ports_carry_qemus_msi_capability(port_type):
    from pcivm.pci.topology_devices import X3130Upstream, Xio3130Downstream

    port = X3130Upstream("up") if port_type == "upstream" else Xio3130Downstream("down", 1, 1)
    msi = port.msi
    flags = port.read_config(msi.offset + 2, 2)
    assert flags & 0x0080 and not flags & 0x0100  # 64-bit address, no per-vector mask
    assert (flags >> 1) & 0x7 == 0  # one vector
    changes = []
    msi.on_vector_change = lambda *change: changes.append(change)
    msi.sink = sink = RecordingSink()
    port.write_config(msi.offset + 4, 4, MSI_ADDR)
    port.write_config(msi.offset + 8, 4, 0)
    port.write_config(msi.offset + 12, 2, 0x4071)
    port.write_config(msi.offset + 2, 2, 0x0001)  # enable
    assert changes[-1] == (0, MSI_ADDR, 0x4071, False)
    assert msi.notify(0) and sink.sent == [(MSI_ADDR, 0x4071)]
