"""Builds the platform a spec describes: RAM, the port-IO and MMIO address spaces, the
platform devices on them, the PCI hierarchy with every BAR and window assigned, and the
ACPI tables that describe it all. It knows nothing of KVM: interrupts leave through an
`IrqLines` object the caller supplies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pcivm.bus import AddressSpace
from pcivm.memory import E820Entry, E820Type, GiB, GuestMemory
from pcivm.pci.allocator import Plan, allocate
from pcivm.pci.host import CONF1_ADDRESS_PORT, CONF1_PORTS, Conf1, Ecam, PciHost
from pcivm.pci.layout import AddressLayout, machine_layout
from pcivm.pci.msix import message_capabilities
from pcivm.pci.topology import Topology, build_topology
from pcivm.platform.acpi.pci import ecam_motherboard_resource, pci_host_bridge
from pcivm.platform.acpi.tables import (
    AcpiBlob,
    AcpiPlatform,
    PlatformPorts,
    build_acpi,
    build_mcfg,
)
from pcivm.platform.power import I8042, AcpiPm1, PowerEvents, ResetControl
from pcivm.platform.rtc import CmosRtc
from pcivm.platform.uart import Uart16550
from pcivm.spec import VmSpec

# Fixed platform resources (as on QEMU's PC machines).
COM1_PORT, COM1_IRQ = 0x3F8, 4
RTC_PORT = 0x70
I8042_PORT = 0x60
RESET_CONTROL_PORT = 0xCF9
RESET_CONTROL_VALUE = 0x06  # hard reset | reset CPU
PM_BASE = 0x600  # PM1a event block at +0, control block at +4 (ICH9's layout)
SCI_IRQ = 9
POST_PORT = 0x80  # written by io_delay(); never read
IOAPIC_ADDR = 0xFEC00000
LAPIC_ADDR = 0xFEE00000
IOAPIC_ID = 0
# q35's MMCONFIG window, as QEMU places it: 256 buses x 1 MiB.
ECAM_BASE = 0xB0000000
ECAM_SIZE = 256 << 20


def lowmem_limit(machine: str, ram_size: int) -> int:
    """Where RAM below 4 GiB ends, by QEMU's rules: pc keeps up to 3.5 GiB low and splits
    at 3 GiB beyond that; q35 keeps up to 2.75 GiB low (below ECAM), else splits at 2 GiB."""
    if machine == "q35":
        return ECAM_BASE if ram_size < ECAM_BASE else 2 * GiB
    return 0xE0000000 if ram_size < 0xE0000000 else 3 * GiB


def pci_layout(spec: VmSpec) -> AddressLayout:
    """Where PCI may place BARs and windows on this spec's machine: one function for both
    `pcivm plan` and a run, so that the two never disagree."""
    lowmem_end = min(spec.memory, lowmem_limit(spec.machine, spec.memory))
    high_end = 4 * GiB + spec.memory - lowmem_end if spec.memory > lowmem_end else None
    return machine_layout(spec.machine, spec.memory, lowmem_end, high_end)


class IrqLines(Protocol):
    """How devices interrupt: a line of the interrupt controllers, or a message (MSI)."""

    def set_irq(self, irq: int, level: int) -> None: ...

    def signal_msi(self, address: int, data: int) -> None: ...


class _Sink:
    """A write-only port that ignores what it is given (the POST code port)."""

    def read(self, offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        pass


class _ByteAt:
    """Passes on byte accesses at one offset of a shared range (0xcf9 inside conf1's
    0xcf8-0xcfb); anything else there reads all-ones and is ignored."""

    def __init__(self, device, offset: int):
        self._device = device
        self._offset = offset

    def read(self, offset: int, size: int) -> int:
        if offset == self._offset and size == 1:
            return self._device.read(0, 1)
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == self._offset and size == 1:
            self._device.write(0, 1, value)


@dataclass
class Platform:
    spec: VmSpec
    memory: GuestMemory
    io: AddressSpace
    mmio: AddressSpace
    uart: Uart16550
    acpi: AcpiBlob
    topology: Topology
    pci: PciHost
    layout: AddressLayout
    plan: Plan


def build_pci(spec: VmSpec, io: AddressSpace, mmio: AddressSpace, irqs: IrqLines, reset):
    """The PCI hierarchy of the spec, reachable through conf1 (and ECAM on q35)."""
    topology = build_topology(spec.machine, spec.devices, spec.drives)
    host = PciHost(topology.root, io, mmio, irqs.set_irq)
    for function in topology.functions():
        host.adopt(function)
    conf1 = Conf1(host, other=_ByteAt(reset, RESET_CONTROL_PORT - CONF1_ADDRESS_PORT))
    io.register(CONF1_ADDRESS_PORT, CONF1_PORTS, conf1, "PCI conf1")
    if spec.machine == "q35":
        mmio.register(ECAM_BASE, ECAM_SIZE, Ecam(host), "PCI ECAM")
    return topology, host


def build_platform(
    spec: VmSpec,
    irqs: IrqLines,
    power: PowerEvents,
    serial_output: Callable[[bytes], None],
) -> Platform:
    memory = GuestMemory(spec.memory, lowmem_limit(spec.machine, spec.memory))
    io = AddressSpace("port IO")
    mmio = AddressSpace("MMIO")

    uart = Uart16550(serial_output, lambda level: irqs.set_irq(COM1_IRQ, level))
    io.register(COM1_PORT, 8, uart, "serial (COM1)")
    io.register(RTC_PORT, 2, CmosRtc(), "CMOS RTC")
    # 0x60 data and 0x64 status/command; 0x61 (the PIT's speaker port) is KVM's own.
    io.register(I8042_PORT, 5, I8042(power), "i8042")
    io.register(PM_BASE, 6, AcpiPm1(power), "ACPI PM1")
    io.register(POST_PORT, 1, _Sink(), "POST port")
    topology, host = build_pci(spec, io, mmio, irqs, ResetControl(power))
    # The firmware's part: every BAR, window and bus number assigned before the guest runs.
    layout = pci_layout(spec)
    plan = allocate(topology.root, layout, host=host)
    # Devices with a backend (virtio) come to life on guest RAM; `pcivm plan` never does this.
    for function in topology.functions():
        for capability in message_capabilities(function):
            if capability.sink is None:  # a port's own interrupts (PME, hot-plug) leave here
                capability.sink = irqs
        realize = getattr(function, "realize", None)
        if realize is not None:
            realize(memory, irqs)

    acpi = build_acpi(
        AcpiPlatform(
            vcpu_count=spec.smp,
            ioapic_id=IOAPIC_ID,
            ioapic_addr=IOAPIC_ADDR,
            lapic_addr=LAPIC_ADDR,
            ports=PlatformPorts(
                pm1a_evt=PM_BASE,
                pm1a_cnt=PM_BASE + 4,
                reset_port=RESET_CONTROL_PORT,
                reset_value=RESET_CONTROL_VALUE,
                sci_irq=SCI_IRQ,
            ),
            dsdt_devices=_pci_aml(spec, layout, _last_bus(topology)),
        ),
        extra_tables=[build_mcfg(ECAM_BASE, end_bus=_last_bus(topology))]
        if spec.machine == "q35"
        else [],
    )
    memory.write(acpi.base, acpi.data)
    return Platform(spec, memory, io, mmio, uart, acpi, topology, host, layout, plan)


def _last_bus(topology: Topology) -> int:
    """The highest bus number the allocator gave out.

    The MCFG covers buses 0 to this one, not all 256: Linux probes every bus up to the
    MCFG's last one for peer host bridges (pcibios_fixup_peer_bridges), 32 config reads a
    bus, each two exits through conf1 -- about 16,000 exits for a 256-bus MCFG.
    """
    buses = [f.subordinate_bus_number for f in topology.functions() if hasattr(f, "secondary")]
    return max(buses, default=0)


def _pci_aml(spec: VmSpec, layout: AddressLayout, last_bus: int) -> bytes:
    """The host bridge as the DSDT describes it, with the windows the allocator used."""
    express = spec.machine == "q35"
    mem64 = (layout.mem64.base, layout.mem64.limit) if layout.mem64 else None
    aml = pci_host_bridge(
        express,
        (layout.io.base, layout.io.limit),
        (layout.mem32.base, layout.mem32.limit),
        mem64,
        ECAM_BASE if express else None,
        # On q35 the root's bus range is the MCFG's (see _last_bus); pc has no MCFG.
        last_bus if express else 0xFF,
    )
    if express:
        aml += ecam_motherboard_resource(ECAM_BASE)
    return aml


def e820_reserved(spec: VmSpec) -> list[E820Entry]:
    """Ranges the guest must not take for RAM or PCI: the ECAM window on q35 (Linux also
    accepts MMCONFIG only when firmware reserves it)."""
    if spec.machine == "q35":
        return [E820Entry(ECAM_BASE, ECAM_SIZE, E820Type.RESERVED)]
    return []
