"""The PCI host bridge in the DSDT, its AML building blocks, and the MCFG table.

Expected bytes below were produced by ACPICA's iasl 20200925 (`iasl -oa`, no
optimizations) from the ASL named in each case, so the encoder is checked against the
reference compiler without needing it at test time.
"""

import shutil
import struct
import subprocess

import pytest

from pcivm.pci.host import root_intx_gsi
from pcivm.platform.acpi import aml
from pcivm.platform.acpi.pci import (
    ecam_motherboard_resource,
    host_bridge_crs,
    pci_dsdt_devices,
    pci_host_bridge,
)
from pcivm.platform.acpi.tables import (
    AcpiPlatform,
    PlatformPorts,
    build_acpi,
    build_dsdt,
    build_mcfg,
)

IO = (0x1000, 0xFFFF)
MEM32 = (0xC0000000, 0xFEBFFFFF)
MEM64 = (0x80_0000_0000, 0xFF_FFFF_FFFF)
ECAM = 0xB0000000

PLATFORM = dict(
    vcpu_count=2,
    ioapic_id=0,
    ioapic_addr=0xFEC00000,
    lapic_addr=0xFEE00000,
    ports=PlatformPorts(0x600, 0x604, 0xCF9, 0x06, 9),
)


# -- a minimal AML reader for the data objects the tests look at --------------------------


def _pkg_length(data: bytes, i: int) -> tuple[int, int]:
    """(length, offset after the PkgLength bytes); the length counts itself."""
    lead = data[i]
    extra = lead >> 6
    if not extra:
        return lead & 0x3F, i + 1
    value = lead & 0x0F
    for k in range(extra):
        value |= data[i + 1 + k] << (4 + 8 * k)
    return value, i + 1 + extra


def parse_data(data: bytes, i: int = 0):
    """Decode one integer/package/buffer object at `i`; returns (value, next offset)."""
    op = data[i]
    if op in (0x00, 0x01):
        return op, i + 1
    if op == 0xFF:
        return 0xFFFFFFFFFFFFFFFF, i + 1
    widths = {0x0A: 1, 0x0B: 2, 0x0C: 4, 0x0E: 8}
    if op in widths:
        w = widths[op]
        return int.from_bytes(data[i + 1 : i + 1 + w], "little"), i + 1 + w
    if op in (0x11, 0x12):
        length, j = _pkg_length(data, i + 1)
        end = i + 1 + length
        if op == 0x12:
            count, j = data[j], j + 1
            items = []
            for _ in range(count):
                item, j = parse_data(data, j)
                items.append(item)
            assert j == end
            return items, end
        size, j = parse_data(data, j)
        assert j + size == end
        return bytes(data[j:end]), end
    raise AssertionError(f"unexpected AML opcode {op:#x} at {i}")


def named_object(aml_bytes: bytes, name: str):
    """The data object of the first Name (name, ...) found in `aml_bytes`."""
    marker = b"\x08" + name.encode().ljust(4, b"_")
    at = aml_bytes.find(marker)
    assert at >= 0, name
    value, _ = parse_data(aml_bytes, at + len(marker))
    return value


def resources(template: bytes) -> list[bytes]:
    """Split a resource template's descriptors (ending with the End Tag)."""
    out, i = [], 0
    while True:
        tag = template[i]
        large = tag & 0x80  # large items have a 16-bit length (ACPI 6.4, 6.4.3)
        length = 3 + int.from_bytes(template[i + 1 : i + 3], "little") if large else 1 + (tag & 7)
        out.append(template[i : i + length])
        if tag == 0x79:
            assert i + length == len(template)
            return out
        i += length


def address_range(descriptor: bytes) -> tuple[int, int, int]:
    """(resource type, minimum, maximum) of a Word/DWord/QWord address descriptor."""
    width = {0x88: 2, 0x87: 4, 0x8A: 8}[descriptor[0]]
    fields = [
        int.from_bytes(descriptor[6 + k * width : 6 + (k + 1) * width], "little") for k in range(5)
    ]
    granularity, minimum, maximum, translation, length = fields
    assert length == maximum - minimum + 1 and translation == 0 and granularity == 0
    return descriptor[3], minimum, maximum


# -- encodings checked against iasl ------------------------------------------------------

END = "7900"


@pytest.mark.parametrize(
    "encoded,asl_bytes",
    [
        # WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, 0, 0xFF, 0, 0x100)
        (aml.word_bus_number(0, 0xFF), "880d00020c0000000000ff0000000001"),
        # IO (Decode16, 0x0CF8, 0x0CF8, 0x01, 0x08)
        (aml.io_port(0xCF8, 0xCF8, 1, 8), "4701f80cf80c0108"),
        # WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0, 0x0D00,
        #         0xFFFF, 0, 0xF300)
        (aml.word_io(0x0D00, 0xFFFF), "880d00010c030000000dffff000000f3"),
        # DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable,
        #              ReadWrite, 0, 0xC0000000, 0xFEBFFFFF, 0, 0x3EC00000)
        (
            aml.dword_memory(0xC0000000, 0xFEBFFFFF),
            "871700000c0100000000000000c0ffffbffe000000000000c03e",
        ),
        # DWordMemory (..., Cacheable, ReadWrite, 0, 0xA0000, 0xBFFFF, 0, 0x20000)
        (
            aml.dword_memory(0xA0000, 0xBFFFF, aml.MEM_CACHEABLE),
            "871700000c030000000000000a00ffff0b000000000000000200",
        ),
        # QWordMemory (ResourceProducer, ..., Cacheable, ReadWrite, 0, 0x8000000000,
        #              0xFFFFFFFFFF, 0, 0x8000000000)
        (
            aml.qword_memory(0x80_0000_0000, 0xFF_FFFF_FFFF, aml.MEM_CACHEABLE),
            "8a2b00000c0300000000000000000000000080000000ff"
            "ffffffff00000000000000000000000000000080000000",
        ),
        # QWordMemory (ResourceConsumer, ..., NonCacheable, ReadWrite, 0, 0x100000000,
        #              0x10FFFFFFF, 0, 0x10000000)
        (
            aml.qword_memory(0x1_0000_0000, 0x1_0FFF_FFFF, consumer=True),
            "8a2b00000d0100000000000000000000000001000000ff"
            "ffff0f0100000000000000000000000000001000000000",
        ),
        # Memory32Fixed (ReadWrite, 0xB0000000, 0x10000000)
        (aml.memory32_fixed(0xB0000000, 0x10000000), "86090001000000b000000010"),
    ],
)
def test_resource_descriptors_encode_as_iasl_does(encoded, asl_bytes):
    assert encoded.hex() == asl_bytes


def test_resource_template_is_a_buffer_ending_with_an_end_tag_of_checksum_zero():
    # ResourceTemplate () { IO (Decode16, 0x0CF8, 0x0CF8, 0x01, 0x08) }
    assert aml.resource_template(aml.io_port(0xCF8, 0xCF8, 1, 8)).hex() == (
        "110d0a0a" + "4701f80cf80c0108" + END
    )


def test_to_uuid_uses_the_acpi_mixed_endian_order():
    # ToUUID ("E5C937D0-3553-4D7A-9117-EA4D19C3434D")
    assert aml.to_uuid("E5C937D0-3553-4D7A-9117-EA4D19C3434D").hex() == (
        "11130a10d037c9e553357a4d9117ea4d19c3434d"
    )


def test_method_opcodes_encode_as_iasl_does():
    # Method (MTHD, 4, Serialized) {
    #     If (LEqual (Arg2, 5)) { Return (Arg3) }
    #     Else { CreateDWordField (Arg3, Zero, CDW1)  Or (CDW1, 4, CDW1) }
    #     Return (Arg1)
    # }
    encoded = aml.method(
        "MTHD",
        4,
        aml.if_(aml.lequal(aml.arg(2), aml.integer(5)), aml.return_(aml.arg(3))),
        aml.else_(
            aml.create_dword_field(aml.arg(3), aml.integer(0), "CDW1"),
            aml.or_(aml.name_ref("CDW1"), aml.integer(4), aml.name_ref("CDW1")),
        ),
        aml.return_(aml.arg(1)),
        serialized=True,
    )
    assert encoded.hex() == (
        "14244d5448440ca007936a0a05a46ba1138a6b00434457317d434457310a0443445731a469"
    )


def test_or_without_a_target_stores_nowhere():
    assert aml.or_(aml.arg(0), aml.integer(1)) == bytes((0x7D, 0x68, 0x01, 0x00))


def test_args_beyond_arg6_do_not_exist():
    assert aml.arg(6) == b"\x6e"
    with pytest.raises(ValueError):
        aml.arg(7)


# -- the host bridge ---------------------------------------------------------------------


def test_prt_routes_every_root_slot_and_pin_to_its_gsi():
    prt = named_object(pci_host_bridge(False, IO, MEM32, MEM64), "_PRT")
    assert len(prt) == 128
    seen = set()
    for address, pin, source, gsi in prt:
        slot = address >> 16
        assert address & 0xFFFF == 0xFFFF
        assert source == 0
        assert gsi == root_intx_gsi(slot, pin)
        seen.add((slot, pin))
    assert seen == {(slot, pin) for slot in range(32) for pin in range(4)}


def test_crs_describes_buses_conf1_ports_and_windows():
    template = named_object(pci_host_bridge(True, IO, MEM32, MEM64, ECAM), "_CRS")
    descriptors = resources(template)
    assert descriptors[-1] == b"\x79\x00"
    ranges = [address_range(d) for d in descriptors if d[0] in (0x87, 0x88, 0x8A)]
    assert ranges == [
        (aml.RESOURCE_BUS, 0, 0xFF),
        (aml.RESOURCE_IO, 0x0000, 0x0CF7),
        (aml.RESOURCE_IO, 0x0D00, 0xFFFF),
        (aml.RESOURCE_MEMORY, 0xA0000, 0xBFFFF),
        (aml.RESOURCE_MEMORY, *MEM32),
        (aml.RESOURCE_MEMORY, *MEM64),
    ]
    # Every window is produced by the bridge (bit 0 of the general flags is 0).
    assert all(d[4] & 1 == 0 for d in descriptors if d[0] in (0x87, 0x88, 0x8A))
    assert aml.io_port(0xCF8, 0xCF8, 1, 8) in descriptors
    # No IO window touches the conf1 ports.
    for kind, low, high in ranges:
        if kind == aml.RESOURCE_IO:
            assert high < 0xCF8 or low > 0xCFF


def test_crs_without_a_64_bit_window_has_no_qword_descriptor():
    descriptors = resources(named_object(b"\x08_CRS" + host_bridge_crs(IO, MEM32, None), "_CRS"))
    assert all(d[0] != 0x8A for d in descriptors)


def test_windows_that_pcivm_cannot_describe_are_refused():
    with pytest.raises(ValueError):
        host_bridge_crs((0x0C00, 0xFFFF), MEM32, None)  # would include the conf1 ports
    with pytest.raises(ValueError):
        host_bridge_crs(IO, (0x90000, 0xFFFFF), None)  # overlaps the VGA range
    with pytest.raises(ValueError):
        pci_host_bridge(True, IO, MEM32, MEM64, None)  # PCI Express needs its ECAM


def test_q35_bridge_is_pci_express_with_osc_and_pc_bridge_is_conventional():
    q35 = pci_host_bridge(True, IO, MEM32, MEM64, ECAM)
    pc = pci_host_bridge(False, IO, MEM32, MEM64)
    assert named_object(q35, "_HID") == 0x080AD041  # EisaId ("PNP0A08")
    assert named_object(q35, "_CID") == 0x030AD041  # EisaId ("PNP0A03")
    assert named_object(pc, "_HID") == 0x030AD041
    assert b"\x08_CID" not in pc
    assert b"_OSC" in q35 and b"_OSC" not in pc
    for bridge in (q35, pc):
        assert bridge.startswith(b"\x5b\x82") and b"PCI0" in bridge[:8]
        for name in ("_UID", "_SEG", "_BBN"):
            assert named_object(bridge, name) == 0
        assert b"_DSM" in bridge


def test_dsm_offers_functions_0_and_5_for_the_pci_firmware_uuid():
    bridge = pci_host_bridge(False, IO, MEM32, MEM64)
    uuid = aml.to_uuid("E5C937D0-3553-4D7A-9117-EA4D19C3434D")
    # If (Arg0 == ToUUID (...)) { If (Arg2 == Zero) { Return (Buffer (One) { 0x21 }) }
    #                             If (Arg2 == 5) { Return (Zero) } }
    assert uuid in bridge
    assert bytes.fromhex("936a00a411030121") in bridge
    assert bytes.fromhex("936a0a05a400") in bridge


def test_osc_returns_the_capabilities_unchanged_for_the_pci_host_bridge_uuid():
    bridge = pci_host_bridge(True, IO, MEM32, MEM64, ECAM)
    osc_uuid = aml.to_uuid("33DB4D5B-1FF7-401C-9657-7441C03DD766")
    # If (Arg0 == ToUUID (...)) { Return (Arg3) }
    assert b"\x93\x68" + osc_uuid + b"\xa4\x6b" in bridge
    # Else: DWORD 1 gets "unrecognized UUID" (bit 2).
    assert bytes.fromhex("7d434457310a0443445731") in bridge


def test_ecam_motherboard_resource_covers_the_whole_ecam_window():
    device = ecam_motherboard_resource(ECAM)
    assert named_object(device, "_HID") == 0x020CD041  # EisaId ("PNP0C02")
    (region, end) = resources(named_object(device, "_CRS"))
    assert region == aml.memory32_fixed(ECAM, 256 << 20)
    high = resources(named_object(ecam_motherboard_resource(0xE_0000_0000, 0, 63), "_CRS"))
    assert high[0] == aml.qword_memory(0xE_0000_0000, 0xE_0000_0000 + (64 << 20) - 1, consumer=True)


def test_dsdt_devices_of_a_machine_add_the_ecam_reservation_only_on_pci_express():
    q35 = pci_dsdt_devices(True, IO, MEM32, MEM64, ECAM)
    assert q35 == pci_host_bridge(True, IO, MEM32, MEM64, ECAM) + ecam_motherboard_resource(ECAM)
    assert pci_dsdt_devices(False, IO, MEM32, None) == pci_host_bridge(False, IO, MEM32, None)


def test_dsdt_keeps_s5_at_the_root_and_the_bridge_inside_sb():
    devices = pci_dsdt_devices(True, IO, MEM32, MEM64, ECAM)
    dsdt = build_dsdt(AcpiPlatform(**PLATFORM, dsdt_devices=devices))
    assert sum(dsdt) % 256 == 0
    body = dsdt[36:]
    assert body.startswith(b"\x08_S5_")
    scope_at = body.index(b"\x10")
    length, after = _pkg_length(body, scope_at + 1)
    assert scope_at + 1 + length == len(body)
    assert body[after : after + 5] == b"\\_SB_"
    assert body[after + 5 :] == devices


# -- MCFG --------------------------------------------------------------------------------


def test_mcfg_has_one_allocation_entry_and_a_valid_checksum():
    mcfg = build_mcfg(ECAM)
    assert mcfg[:4] == b"MCFG"
    assert struct.unpack_from("<I", mcfg, 4)[0] == len(mcfg) == 60
    assert sum(mcfg) % 256 == 0
    assert mcfg[36:44] == bytes(8)
    assert struct.unpack_from("<QHBBI", mcfg, 44) == (ECAM, 0, 0, 255, 0)


def test_mcfg_reached_through_the_xsdt_when_passed_as_an_extra_table():
    blob = build_acpi(AcpiPlatform(**PLATFORM), [build_mcfg(ECAM, end_bus=63)])
    base = blob.base
    (xsdt,) = struct.unpack_from("<Q", blob.data, blob.rsdp_addr - base + 24)
    count = (struct.unpack_from("<I", blob.data, xsdt - base + 4)[0] - 36) // 8
    tables = [
        struct.unpack_from("<Q", blob.data, xsdt - base + 36 + 8 * k)[0] for k in range(count)
    ]
    mcfgs = [a for a in tables if blob.data[a - base : a - base + 4] == b"MCFG"]
    assert len(mcfgs) == 1
    assert blob.data[mcfgs[0] - base + 55] == 63


def test_mcfg_refuses_a_bad_bus_range():
    with pytest.raises(ValueError):
        build_mcfg(ECAM, start_bus=10, end_bus=5)


# -- optional: the real compiler ---------------------------------------------------------


@pytest.mark.skipif(shutil.which("iasl") is None, reason="iasl (acpica-tools) is not installed")
@pytest.mark.parametrize("express", [True, False], ids=["q35", "pc"])
def test_iasl_disassembles_the_tables_and_recompiles_them_to_the_same_bytes(tmp_path, express):
    """Optional cross-check with ACPICA; skipped only when iasl is missing."""
    devices = pci_host_bridge(express, IO, MEM32, MEM64, ECAM if express else None)
    if express:
        devices += ecam_motherboard_resource(ECAM)
    dsdt = build_dsdt(AcpiPlatform(**PLATFORM, dsdt_devices=devices))
    for name, table in (("dsdt", dsdt), ("mcfg", build_mcfg(ECAM))):
        (tmp_path / f"{name}.dat").write_bytes(table)
        run = subprocess.run(
            ["iasl", "-d", f"{name}.dat"], cwd=tmp_path, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stdout + run.stderr
        run = subprocess.run(
            ["iasl", "-oa", "-p", f"{name}-again", f"{name}.dsl"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0 and " 0 Errors" in run.stdout, run.stdout + run.stderr
        again = (tmp_path / f"{name}-again.aml").read_bytes()
        assert again[36:] == table[36:]
