"""The ACPI tables pcivm writes below 1 MiB: RSDP, XSDT, FADT, FACS, DSDT, MADT and, for
PCI Express, MCFG.

They describe the platform as built: the vCPUs and the IOAPIC (MADT), the power-management
and reset ports (FADT), and the soft-off state (DSDT \\_S5). Linux finds the RSDP through the
zero page, or by its legacy scan of 0xe0000-0xfffff.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pcivm.platform.acpi import aml

OEM_ID = b"PCIVM "
OEM_TABLE_ID = b"PCIVMTBL"
CREATOR_ID = b"PCVM"

# Where the tables go (the e820 map reserves 0xe0000-0xfffff).
ACPI_BASE = 0xE0000
ACPI_REGION_SIZE = 0x20000

# FADT (ACPI 6.4, 5.2.9): flags and IA-PC boot architecture flags.
FADT_REVISION = 6
FADT_MINOR = 4
FADT_F_WBINVD = 1 << 0
FADT_F_PROC_C1 = 1 << 2
FADT_F_PWR_BUTTON = 1 << 4
FADT_F_SLP_BUTTON = 1 << 5
FADT_F_RESET_REG_SUP = 1 << 10
# IAPC_BOOT_ARCH: 0 = no LEGACY_DEVICES bit and no 8042 bit, i.e. no PS/2 controller to probe.
IAPC_BOOT_ARCH = 0
ACPI_SPACE_SYSTEM_IO = 1
ACPI_ACCESS_BYTE, ACPI_ACCESS_WORD, ACPI_ACCESS_DWORD = 1, 2, 3
PM_PROFILE_UNSPECIFIED = 0

# MADT (5.2.12)
MADT_PCAT_COMPAT = 1
MADT_LOCAL_APIC, MADT_IO_APIC, MADT_INT_SRC_OVERRIDE, MADT_LOCAL_APIC_NMI = 0, 1, 2, 4
LAPIC_ENABLED = 1
MPS_INTI_POLARITY_HIGH = 0x1
MPS_INTI_TRIGGER_LEVEL = 0xC
MPS_INTI_TRIGGER_EDGE = 0x4


@dataclass(frozen=True)
class PlatformPorts:
    """The fixed IO ports of the platform that the FADT points at."""

    pm1a_evt: int
    pm1a_cnt: int
    reset_port: int
    reset_value: int
    sci_irq: int


@dataclass(frozen=True)
class AcpiPlatform:
    vcpu_count: int
    ioapic_id: int
    ioapic_addr: int
    lapic_addr: int
    ports: PlatformPorts
    dsdt_devices: bytes = b""  # AML for \_SB devices (the PCI host bridge, ...)


def checksum(data: bytes) -> int:
    return (-sum(data)) & 0xFF


def _header(signature: bytes, length: int, revision: int) -> bytes:
    return struct.pack(
        "<4sIBB6s8sI4sI",
        signature,
        length,
        revision,
        0,  # checksum, patched by _table
        OEM_ID,
        OEM_TABLE_ID,
        1,
        CREATOR_ID,
        1,
    )


def _table(signature: bytes, revision: int, body: bytes) -> bytes:
    raw = bytearray(_header(signature, 36 + len(body), revision) + body)
    raw[9] = checksum(raw)
    return bytes(raw)


def _gas(space: int, bit_width: int, access: int, address: int) -> bytes:
    """Generic Address Structure (5.2.3.2)."""
    return struct.pack("<BBBBQ", space, bit_width, 0, access, address)


def build_dsdt(platform: AcpiPlatform) -> bytes:
    s5 = aml.name(
        "_S5", aml.package(aml.integer(0), aml.integer(0), aml.integer(0), aml.integer(0))
    )
    body = s5
    if platform.dsdt_devices:
        body += aml.scope("\\_SB", platform.dsdt_devices)
    return _table(b"DSDT", 2, body)


def build_facs() -> bytes:
    # FACS has no checksum and no standard header (5.2.10): signature, length, hw signature.
    return struct.pack("<4sII", b"FACS", 64, 0) + bytes(52)


def build_fadt(platform: AcpiPlatform, facs_addr: int, dsdt_addr: int) -> bytes:
    p = platform.ports
    flags = (
        FADT_F_WBINVD
        | FADT_F_PROC_C1
        | FADT_F_PWR_BUTTON
        | FADT_F_SLP_BUTTON
        | FADT_F_RESET_REG_SUP
    )
    body = bytearray(276 - 36)

    def put(offset: int, fmt: str, *values) -> None:
        struct.pack_into(fmt, body, offset - 36, *values)

    # Only the 64-bit FACS pointer: ACPI forbids giving both.
    put(40, "<I", dsdt_addr)
    put(45, "<B", PM_PROFILE_UNSPECIFIED)
    put(46, "<H", p.sci_irq)
    put(48, "<I", 0)  # no SMI command port: the platform is in ACPI mode from the start
    put(56, "<I", p.pm1a_evt)
    put(64, "<I", p.pm1a_cnt)
    put(88, "<BB", 4, 2)  # PM1_EVT_LEN, PM1_CNT_LEN
    put(96, "<HH", 101, 1001)  # C2/C3 latencies above the limits: no C2/C3
    put(109, "<H", IAPC_BOOT_ARCH)
    put(112, "<I", flags)
    put(116, "<12s", _gas(ACPI_SPACE_SYSTEM_IO, 8, ACPI_ACCESS_BYTE, p.reset_port))
    put(128, "<B", p.reset_value)
    put(131, "<B", FADT_MINOR)
    put(132, "<Q", facs_addr)
    put(140, "<Q", dsdt_addr)
    put(148, "<12s", _gas(ACPI_SPACE_SYSTEM_IO, 32, ACPI_ACCESS_WORD, p.pm1a_evt))
    put(172, "<12s", _gas(ACPI_SPACE_SYSTEM_IO, 16, ACPI_ACCESS_WORD, p.pm1a_cnt))
    return _table(b"FACP", FADT_REVISION, bytes(body))


def build_madt(platform: AcpiPlatform) -> bytes:
    body = struct.pack("<II", platform.lapic_addr, MADT_PCAT_COMPAT)
    for cpu in range(platform.vcpu_count):
        body += struct.pack("<BBBBI", MADT_LOCAL_APIC, 8, cpu, cpu, LAPIC_ENABLED)
    body += struct.pack("<BBBBII", MADT_IO_APIC, 12, platform.ioapic_id, 0, platform.ioapic_addr, 0)
    # The SCI is level-triggered, active high, as on the PIIX4/ICH9 QEMU models.
    body += struct.pack(
        "<BBBBIH",
        MADT_INT_SRC_OVERRIDE,
        10,
        0,
        platform.ports.sci_irq,
        platform.ports.sci_irq,
        MPS_INTI_POLARITY_HIGH | MPS_INTI_TRIGGER_LEVEL,
    )
    body += struct.pack("<BBBHB", MADT_LOCAL_APIC_NMI, 6, 0xFF, 0, 1)  # all CPUs, LINT1
    return _table(b"APIC", 5, body)


def build_mcfg(ecam_base: int, segment: int = 0, start_bus: int = 0, end_bus: int = 255) -> bytes:
    """MCFG (PCI Firmware 3.3, 4.1.2): 8 reserved bytes, then one allocation entry: the
    ECAM base address (that of bus 0, even when start_bus is not 0), the segment group and
    the bus range it decodes."""
    if not 0 <= start_bus <= end_bus <= 255:
        raise ValueError(f"bad MCFG bus range {start_bus}-{end_bus}")
    entry = struct.pack("<QHBBI", ecam_base, segment, start_bus, end_bus, 0)
    return _table(b"MCFG", 1, bytes(8) + entry)


def build_xsdt(entries: list[int]) -> bytes:
    return _table(b"XSDT", 1, b"".join(struct.pack("<Q", a) for a in entries))


def build_rsdp(xsdt_addr: int) -> bytes:
    raw = bytearray(
        struct.pack("<8sB6sBIIQB3s", b"RSD PTR ", 0, OEM_ID, 2, 0, 36, xsdt_addr, 0, b"")
    )
    raw[8] = checksum(raw[:20])
    raw[32] = checksum(raw)
    return bytes(raw)


@dataclass(frozen=True)
class AcpiBlob:
    base: int
    data: bytes
    rsdp_addr: int


def build_acpi(
    platform: AcpiPlatform, extra_tables: list[bytes] = (), base: int = ACPI_BASE
) -> AcpiBlob:
    """Lay out all tables from `base`; the RSDP goes first (16-byte aligned, in the scan range)."""
    out = bytearray()

    def place(table: bytes, align: int = 16) -> int:
        out.extend(bytes(-len(out) % align))
        addr = base + len(out)
        out.extend(table)
        return addr

    rsdp_placeholder = place(bytes(36))
    facs_addr = place(build_facs(), 64)
    dsdt_addr = place(build_dsdt(platform))
    fadt_addr = place(build_fadt(platform, facs_addr, dsdt_addr))
    madt_addr = place(build_madt(platform))
    others = [place(t) for t in extra_tables]
    xsdt_addr = place(build_xsdt([fadt_addr, madt_addr, *others]))
    rsdp = build_rsdp(xsdt_addr)
    out[rsdp_placeholder - base : rsdp_placeholder - base + 36] = rsdp
    if len(out) > ACPI_REGION_SIZE:
        raise ValueError("ACPI tables do not fit their region")
    return AcpiBlob(base, bytes(out), rsdp_placeholder)
