"""The DSDT's description of the PCI host bridge: `Device (PCI0)` under \\_SB, and the
motherboard-resource device that reserves the ECAM window.

What Linux takes from it (drivers/acpi/pci_root.c, arch/x86/pci/acpi.c):
- _HID/_CID: PNP0A08 (PCI Express, q35) or PNP0A03 (conventional PCI, pc);
- _SEG/_BBN/_CRS: the segment, the bus range and the windows the bridge forwards; only
  BARs inside a window are accepted as they are;
- _PRT: the GSI of every root-bus slot's INTx pins (pcivm.pci.host.root_intx_gsi);
- _DSM function 5 returning 0 (PCI Firmware 3.3, 4.6.5): keep the firmware's BARs and
  windows (pcivm assigned them; the host bridge gets `preserve_config`);
- _OSC (PCI Firmware 3.3, 4.5): on q35, grant the OS every native PCIe service it asks for.
"""

from __future__ import annotations

from pcivm.pci.host import root_intx_gsi
from pcivm.pci.regs import PCI_SLOTS_PER_BUS
from pcivm.platform.acpi import aml

# PCI Firmware 3.3, 4.6: the _DSM UUID of PCI devices and host bridges.
PCI_DSM_UUID = "E5C937D0-3553-4D7A-9117-EA4D19C3434D"
DSM_FN_QUERY = 0  # function 0: bitmap of the supported functions
DSM_FN_PRESERVE_BOOT_CONFIG = 5  # "Ignore PCI Boot Configuration" (4.6.5)
DSM_SUPPORTED = (1 << DSM_FN_QUERY) | (1 << DSM_FN_PRESERVE_BOOT_CONFIG)  # 0x21
# PCI Firmware 3.3, 4.5.1: the _OSC UUID of PCI host bridges.
PCI_OSC_UUID = "33DB4D5B-1FF7-401C-9657-7441C03DD766"
OSC_UNRECOGNIZED_UUID = 1 << 2  # capabilities DWORD 1, bit 2 (ACPI 6.4, 6.2.11)

# The conf1 ports 0xcf8-0xcff: consumed by the bridge, never part of an IO window.
CONF1_FIRST, CONF1_LAST = 0xCF8, 0xCFF
IO_LOW_LAST = CONF1_FIRST - 1  # 0x0cf7
IO_HIGH_FIRST = 0x0D00
# The legacy VGA window the host bridge forwards (A0000-BFFFF).
VGA_MEM_FIRST, VGA_MEM_LAST = 0xA0000, 0xBFFFF
PCI_PINS = 4  # INTA-INTD
PRT_ALL_FUNCTIONS = 0xFFFF  # _PRT address: slot << 16 | 0xffff = any function (6.2.13)

HOST_BRIDGE_NAME = "PCI0"
ECAM_RESOURCE_NAME = "ECAM"


def prt() -> bytes:
    """Name (_PRT, Package { Package {slot << 16 | 0xffff, pin, 0, gsi}, ... }) for every
    root-bus slot and pin: a Source of 0 means the last field is a GSI (6.2.13), which Linux
    registers level-triggered and active-low."""
    entries = [
        aml.package(
            aml.integer(slot << 16 | PRT_ALL_FUNCTIONS),
            aml.integer(pin),
            aml.integer(0),
            aml.integer(root_intx_gsi(slot, pin)),
        )
        for slot in range(PCI_SLOTS_PER_BUS)
        for pin in range(PCI_PINS)
    ]
    return aml.name("_PRT", aml.package(*entries))


def dsm() -> bytes:
    """Method (_DSM, 4): for the PCI UUID, function 0 returns Buffer {0x21} and function 5
    returns 0 ("the OS must not ignore the firmware's configuration"); anything else gets
    Buffer {0}, which says "no functions" (ACPI 6.4, 9.1.1)."""
    return aml.method(
        "_DSM",
        4,
        aml.if_(
            aml.lequal(aml.arg(0), aml.to_uuid(PCI_DSM_UUID)),
            aml.if_(
                aml.lequal(aml.arg(2), aml.integer(DSM_FN_QUERY)),
                aml.return_(aml.buffer(bytes((DSM_SUPPORTED,)))),
            ),
            aml.if_(
                aml.lequal(aml.arg(2), aml.integer(DSM_FN_PRESERVE_BOOT_CONFIG)),
                aml.return_(aml.integer(0)),
            ),
        ),
        aml.return_(aml.buffer(b"\x00")),
    )


def osc() -> bytes:
    """Method (_OSC, 4): for the PCI host bridge UUID, return the capabilities buffer
    unchanged, which grants every control the OS asked for and reports no error (Linux's
    acpi_run_osc checks the first DWORD for error bits and takes the returned control
    DWORD as granted). Another UUID gets "unrecognized UUID" in DWORD 1.

    Serialized because the Else branch creates a named field."""
    return aml.method(
        "_OSC",
        4,
        aml.if_(aml.lequal(aml.arg(0), aml.to_uuid(PCI_OSC_UUID)), aml.return_(aml.arg(3))),
        aml.else_(
            aml.create_dword_field(aml.arg(3), aml.integer(0), "CDW1"),
            aml.or_(aml.name_ref("CDW1"), aml.integer(OSC_UNRECOGNIZED_UUID), aml.name_ref("CDW1")),
        ),
        aml.return_(aml.arg(3)),
        serialized=True,
    )


def host_bridge_crs(
    io: tuple[int, int],
    mem32: tuple[int, int],
    mem64: tuple[int, int] | None,
    last_bus: int = 0xFF,
) -> bytes:
    """The resource template of the root bus: buses 0-last_bus, the conf1 ports it consumes,
    the IO windows around them, the VGA range, and the 32- and 64-bit memory windows."""
    io_base, io_limit = io
    if io_base < IO_HIGH_FIRST or io_limit > 0xFFFF or io_base > io_limit:
        raise ValueError(f"PCI IO window {io_base:#x}-{io_limit:#x} is not above 0xd00")
    if mem32[0] <= VGA_MEM_LAST or mem32[1] >= 1 << 32:
        raise ValueError(f"32-bit PCI window {mem32[0]:#x}-{mem32[1]:#x} is out of range")
    descriptors = [
        aml.word_bus_number(0, last_bus),
        aml.io_port(CONF1_FIRST, CONF1_FIRST, 1, CONF1_LAST - CONF1_FIRST + 1),
        # The platform's own ports (UART, PM, ...) sit below 0xcf8 and are forwarded as on
        # a PC; the window above 0xd00 ends where pcivm's allocator ends.
        aml.word_io(0x0000, IO_LOW_LAST),
        aml.word_io(IO_HIGH_FIRST, io_limit),
        aml.dword_memory(VGA_MEM_FIRST, VGA_MEM_LAST, aml.MEM_CACHEABLE),
        aml.dword_memory(*mem32),
    ]
    if mem64 is not None:
        # Cacheable, not prefetchable: Linux puts no non-prefetchable BAR in a
        # prefetchable window, and a 64-bit BAR on the root bus may be either.
        descriptors.append(aml.qword_memory(*mem64, cacheable=aml.MEM_CACHEABLE))
    return aml.resource_template(*descriptors)


def pci_host_bridge(
    express: bool,
    io: tuple[int, int],
    mem32: tuple[int, int],
    mem64: tuple[int, int] | None,
    ecam_base: int | None = None,
    last_bus: int = 0xFF,
) -> bytes:
    """Device (PCI0) for \\_SB: `io`, `mem32` and `mem64` are the allocator's windows as
    (base, inclusive limit); `last_bus` ends its bus range (the MCFG's, on q35).
    `ecam_base` is only checked here (it goes in the MCFG and in
    `ecam_motherboard_resource`); a q35 bridge needs it."""
    if express and ecam_base is None:
        raise ValueError("a PCI Express host bridge needs its ECAM base")
    ids = (
        [aml.name("_HID", aml.eisa_id("PNP0A08")), aml.name("_CID", aml.eisa_id("PNP0A03"))]
        if express
        else [aml.name("_HID", aml.eisa_id("PNP0A03"))]
    )
    terms = [
        *ids,
        aml.name("_UID", aml.integer(0)),
        aml.name("_SEG", aml.integer(0)),
        aml.name("_BBN", aml.integer(0)),
        aml.name("_CRS", host_bridge_crs(io, mem32, mem64, last_bus)),
        prt(),
        dsm(),
    ]
    if express:
        terms.append(osc())
    return aml.device(HOST_BRIDGE_NAME, *terms)


def ecam_motherboard_resource(
    ecam_base: int, start_bus: int = 0, end_bus: int = 0xFF, name: str = ECAM_RESOURCE_NAME
) -> bytes:
    """Device (ECAM) for \\_SB: a PNP0C02 motherboard resource whose _CRS covers the ECAM
    window of buses start_bus-end_bus (PCI Firmware 3.3, 4.1.2 asks for one). Linux checks
    the MCFG region against these (arch/x86/pci/mmconfig-shared.c) and reserves it."""
    first = ecam_base + (start_bus << 20)
    length = (end_bus - start_bus + 1) << 20
    if first + length <= 1 << 32:
        region = aml.memory32_fixed(first, length)
    else:
        region = aml.qword_memory(first, first + length - 1, consumer=True)
    return aml.device(
        name,
        aml.name("_HID", aml.eisa_id("PNP0C02")),
        aml.name("_UID", aml.string("ECAM")),
        aml.name("_CRS", aml.resource_template(region)),
    )


def pci_dsdt_devices(
    express: bool,
    io: tuple[int, int],
    mem32: tuple[int, int],
    mem64: tuple[int, int] | None,
    ecam_base: int | None = None,
) -> bytes:
    """What a machine puts in AcpiPlatform.dsdt_devices: the host bridge, and on PCI
    Express the motherboard resource reserving its ECAM (buses 0-255)."""
    devices = pci_host_bridge(express, io, mem32, mem64, ecam_base)
    if express:
        devices += ecam_motherboard_resource(ecam_base)
    return devices
