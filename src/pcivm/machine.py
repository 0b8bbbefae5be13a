"""Builds the platform a spec describes: RAM, the port-IO and MMIO address spaces, the
platform devices on them, and the ACPI tables. It knows nothing of KVM: interrupts leave
through an `IrqLines` object the caller supplies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pcivm.bus import AddressSpace
from pcivm.memory import GuestMemory
from pcivm.platform.acpi.tables import AcpiBlob, AcpiPlatform, PlatformPorts, build_acpi
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


class IrqLines(Protocol):
    def set_irq(self, irq: int, level: int) -> None: ...


class _Sink:
    """A write-only port that ignores what it is given (the POST code port)."""

    def read(self, offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        pass


@dataclass
class Platform:
    spec: VmSpec
    memory: GuestMemory
    io: AddressSpace
    mmio: AddressSpace
    uart: Uart16550
    acpi: AcpiBlob


def build_platform(
    spec: VmSpec,
    irqs: IrqLines,
    power: PowerEvents,
    serial_output: Callable[[bytes], None],
) -> Platform:
    memory = GuestMemory(spec.memory)
    io = AddressSpace("port IO")
    mmio = AddressSpace("MMIO")

    uart = Uart16550(serial_output, lambda level: irqs.set_irq(COM1_IRQ, level))
    io.register(COM1_PORT, 8, uart, "serial (COM1)")
    io.register(RTC_PORT, 2, CmosRtc(), "CMOS RTC")
    # 0x60 data and 0x64 status/command; 0x61 (the PIT's speaker port) is KVM's own.
    io.register(I8042_PORT, 5, I8042(power), "i8042")
    io.register(RESET_CONTROL_PORT, 1, ResetControl(power), "reset control")
    io.register(PM_BASE, 6, AcpiPm1(power), "ACPI PM1")
    io.register(POST_PORT, 1, _Sink(), "POST port")

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
        )
    )
    memory.write(acpi.base, acpi.data)
    return Platform(spec, memory, io, mmio, uart, acpi)
