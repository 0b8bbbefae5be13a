"""virtio over PCI without KVM: the test driver drives real devices through the legacy
and the modern interface of a VirtioPciFunction, as Linux's drivers do."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcivm.memory import GuestMemory, MiB
from pcivm.options import parse_options
from pcivm.pci import regs as R
from pcivm.pci.topology import build_topology
from pcivm.virtio.pci_testing import LegacyPciTransport, ModernPciTransport
from pcivm.virtio.pci_transport import (
    VIRTIO_PCI_CAP_COMMON_CFG,
    VIRTIO_PCI_CAP_DEVICE_CFG,
    VIRTIO_PCI_CAP_ISR_CFG,
    VIRTIO_PCI_CAP_NOTIFY_CFG,
    VIRTIO_PCI_CAP_PCI_CFG,
)
from pcivm.virtio.testing import BlkDriver, DriverError, RngDriver, VirtioDriver


def function(machine, device, extra=(), drive=None):
    argv = ["-M", machine, "-kernel", "k"]
    if machine == "q35":
        argv += ["-device", "pcie-root-port,id=rp,chassis=1"]
    if drive:
        argv += ["-drive", f"if=none,id=d0,file={drive}"]
    argv += ["-device", device, *extra]
    spec = parse_options(argv)
    topology = build_topology(spec.machine, spec.devices, spec.drives)
    return topology.by_id["dev"]


@pytest.fixture
def memory():
    return GuestMemory(16 * MiB)


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(4 * MiB)
        f.seek(8 * 512)
        f.write(b"host wrote this!")
    return path


@pytest.mark.parametrize(
    "machine,props,ids,bars",
    [
        # pc: transitional by default (disable-legacy=auto)
        ("pc", "", (0x1005, 0, 4), {0: "io", 1: "mem", 4: "mem"}),
        ("pc", ",disable-legacy=on", (0x1044, 1, 4), {1: "mem", 4: "mem"}),
        ("pc", ",disable-modern=on", (0x1005, 0, 4), {0: "io", 1: "mem"}),
        # q35 behind a root port: modern only unless asked otherwise
        ("q35", ",bus=rp", (0x1044, 1, 4), {1: "mem", 4: "mem"}),
        ("q35", ",bus=rp,disable-legacy=off", (0x1005, 0, 4), {0: "io", 1: "mem", 4: "mem"}),
        # on pcie.0 itself it stays transitional
        ("q35", "", (0x1005, 0, 4), {0: "io", 1: "mem", 4: "mem"}),
    ],
)
def test_ids_and_bars_follow_qemus_rules(machine, props, ids, bars):
    f = function(machine, f"virtio-rng-pci,id=dev{props}")
    assert (f.device_id, f.config.get(R.PCI_REVISION_ID, 1), f.config.get(0x2E, 2)) == ids
    assert f.vendor_id == 0x1AF4 and f.config.get(0x2C, 2) == 0x1AF4
    assert {i: b.kind for i, b in f.bars.items()} == bars
    if 4 in f.bars:
        assert f.bars[4].mem64 and f.bars[4].prefetch
    express = dict(f.config.capabilities()).get(R.PCI_CAP_ID_EXP) is not None
    assert express == ("bus=rp" in props)


def test_neither_interface_is_a_one_line_error():
    from pcivm.errors import UsageError

    with pytest.raises(UsageError, match="neither modern nor legacy"):
        function("pc", "virtio-rng-pci,id=dev,disable-legacy=on,disable-modern=on")


def test_modern_capabilities_as_a_guest_reads_them():
    f = function("pc", "virtio-rng-pci,id=dev")
    vendor = [off for cap, off in f.config.capabilities() if cap == R.PCI_CAP_ID_VNDR]
    types = [f.read_config(off + 3, 1) for off in vendor]
    assert types == [
        VIRTIO_PCI_CAP_COMMON_CFG,
        VIRTIO_PCI_CAP_ISR_CFG,
        VIRTIO_PCI_CAP_DEVICE_CFG,
        VIRTIO_PCI_CAP_NOTIFY_CFG,
        VIRTIO_PCI_CAP_PCI_CFG,
    ]
    notify = vendor[3]
    assert f.read_config(notify + 4, 1) == 4  # BAR4
    assert f.read_config(notify + 16, 4) == 4  # notify_off_multiplier


@pytest.mark.parametrize("transport", [LegacyPciTransport, ModernPciTransport])
@pytest.mark.parametrize("msix", [True, False])
def test_rng_round_trip_through_each_interface(memory, transport, msix):
    f = function("pc", "virtio-rng-pci,id=dev")
    driver = VirtioDriver(transport(f, memory, msix=msix), memory)
    driver.init()
    data = RngDriver(driver).read(64)
    assert len(data) == 64 and len(set(data)) > 8
    assert f.device.legacy == (transport is LegacyPciTransport)


def test_old_driver_cannot_use_a_modern_only_device(memory):
    f = function("pc", "virtio-rng-pci,id=dev,disable-legacy=on")
    with pytest.raises(DriverError, match="no IO BAR0"):
        LegacyPciTransport(f, memory)


def test_modern_driver_cannot_use_a_legacy_only_device(memory):
    f = function("pc", "virtio-rng-pci,id=dev,disable-modern=on")
    with pytest.raises(DriverError, match="not a modern device"):
        ModernPciTransport(f, memory)


@pytest.mark.parametrize("transport", [LegacyPciTransport, ModernPciTransport])
def test_blk_reads_and_writes_the_image(memory, disk, transport):
    f = function("pc", "virtio-blk-pci,id=dev,drive=d0,serial=SN123", drive=disk)
    driver = VirtioDriver(transport(f, memory), memory)
    driver.init()
    blk = BlkDriver(driver)
    assert blk.read(8, 1).data[:16] == b"host wrote this!"
    assert blk.write(16, b"guest wrote that" + bytes(496)).status == 0
    assert blk.flush().status == 0
    assert blk.get_id().data.rstrip(b"\0") == b"SN123"
    f.device.close()
    with open(disk, "rb") as image:
        image.seek(16 * 512)
        assert image.read(16) == b"guest wrote that"
    # capacity in the device config, as the guest reads it
    assert int.from_bytes(driver.transport.read_config(0, 8), "little") == 4 * MiB // 512


def test_reset_then_drive_again(memory):
    f = function("pc", "virtio-rng-pci,id=dev")
    transport = ModernPciTransport(f, memory)
    driver = VirtioDriver(transport, memory)
    driver.init()
    assert len(RngDriver(driver).read(16)) == 16
    transport.set_status(0)
    assert transport.get_status() == 0
    driver = VirtioDriver(transport, memory, arena=(0x300000, 0x400000), data=(0x400000, 0x800000))
    driver.init()
    assert len(RngDriver(driver).read(16)) == 16


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["legacy", "bar4", "msix"]),
            st.integers(0, 0x4100),
            st.sampled_from([1, 2, 4, 8]),
            st.integers(0, 2**64 - 1),
            st.booleans(),
        ),
        max_size=60,
    )
)
def test_hostile_register_accesses_never_escape(accesses):
    memory = GuestMemory(4 * MiB)
    f = function("pc", "virtio-rng-pci,id=dev")
    f.realize(memory, type("Sink", (), {"signal_msi": lambda *a: None})())
    handlers = {"legacy": f.bars[0].handler, "bar4": f.bars[4].handler, "msix": f.bars[1].handler}
    for where, offset, size, value, is_write in accesses:
        handler = handlers[where]
        if is_write:
            handler.write(offset, size, value & ((1 << (8 * size)) - 1))
        else:
            assert 0 <= handler.read(offset, size) < 1 << (8 * size)
    f.device.notify(0)
    # Whatever the guest did, the device is in a state a reset recovers from.
    f.legacy_write(18, 1, 0)
    assert f.device.get_status() == 0 and not f.device.broken
