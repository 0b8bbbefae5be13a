"""ACPI tables: checksums, pointers and the AML encoding."""

import struct

import pytest

from pcivm.platform.acpi import aml
from pcivm.platform.acpi.tables import AcpiPlatform, PlatformPorts, build_acpi

PLATFORM = AcpiPlatform(
    vcpu_count=4,
    ioapic_id=0,
    ioapic_addr=0xFEC00000,
    lapic_addr=0xFEE00000,
    ports=PlatformPorts(0x600, 0x604, 0xCF9, 0x06, 9),
)


def tables_by_signature(blob):
    def at(addr):
        return blob.data[addr - blob.base :]

    rsdp = at(blob.rsdp_addr)[:36]
    assert rsdp[:8] == b"RSD PTR "
    assert sum(rsdp[:20]) % 256 == 0 and sum(rsdp) % 256 == 0
    (xsdt_addr,) = struct.unpack_from("<Q", rsdp, 24)
    xsdt = at(xsdt_addr)
    (length,) = struct.unpack_from("<I", xsdt, 4)
    found = {}
    for i in range((length - 36) // 8):
        (addr,) = struct.unpack_from("<Q", xsdt, 36 + 8 * i)
        (tlen,) = struct.unpack_from("<I", at(addr), 4)
        table = at(addr)[:tlen]
        assert sum(table) % 256 == 0, table[:4]
        found[table[:4]] = (addr, table)
    return found, at


def test_every_table_is_reachable_from_the_rsdp_with_valid_checksums():
    found, at = tables_by_signature(build_acpi(PLATFORM))
    assert set(found) == {b"FACP", b"APIC"}
    fadt = found[b"FACP"][1]
    (dsdt_addr,) = struct.unpack_from("<Q", fadt, 140)
    dsdt = at(dsdt_addr)
    assert dsdt[:4] == b"DSDT"
    assert sum(dsdt[: struct.unpack_from("<I", dsdt, 4)[0]]) % 256 == 0
    (facs_addr,) = struct.unpack_from("<Q", fadt, 132)
    assert at(facs_addr)[:4] == b"FACS" and facs_addr % 64 == 0


def test_fadt_points_at_the_platform_ports():
    found, _ = tables_by_signature(build_acpi(PLATFORM))
    fadt = found[b"FACP"][1]
    assert struct.unpack_from("<H", fadt, 46)[0] == 9
    assert struct.unpack_from("<II", fadt, 56)[0] == 0x600
    assert struct.unpack_from("<I", fadt, 64)[0] == 0x604
    assert struct.unpack_from("<Q", fadt, 116 + 4)[0] == 0xCF9
    assert fadt[128] == 0x06
    assert struct.unpack_from("<H", fadt, 109)[0] & 0x2 == 0  # no 8042 to probe


def test_madt_lists_every_vcpu_and_the_ioapic():
    found, _ = tables_by_signature(build_acpi(PLATFORM))
    madt = found[b"APIC"][1]
    entries, offset = [], 44
    while offset < len(madt):
        kind, length = madt[offset], madt[offset + 1]
        entries.append((kind, madt[offset : offset + length]))
        offset += length
    lapics = [e for k, e in entries if k == 0]
    assert [e[3] for e in lapics] == [0, 1, 2, 3]
    ioapics = [e for k, e in entries if k == 1]
    assert struct.unpack_from("<I", ioapics[0], 4)[0] == 0xFEC00000


@pytest.mark.parametrize(
    "body_len,encoded",
    [(0, b"\x01"), (62, b"\x3f"), (63, b"\x41\x04"), (4093, b"\x4f\xff"), (4094, b"\x81\x00\x01")],
)
def test_pkg_length_encodings(body_len, encoded):
    assert aml.pkg_length(body_len) == encoded


def test_s5_package_encodes_as_acpica_expects():
    raw = aml.name("_S5", aml.package(*(aml.integer(0) for _ in range(4))))
    assert raw == bytes.fromhex("085f53355f1206040000000000"[:-2])


def test_name_strings_and_integers():
    assert aml.name_string("\\_SB.PCI0") == b"\\\x2e_SB_PCI0"
    assert aml.integer(0x12345) == b"\x0c\x45\x23\x01\x00"
    assert aml.eisa_id("PNP0A03") == b"\x0c\x41\xd0\x0a\x03"
