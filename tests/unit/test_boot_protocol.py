"""The Linux x86 boot protocol: setup header parsing, ELF loading, zero page and layout."""

import struct

import pytest

from pcivm.boot.kernel_image import (
    HDRS_MAGIC,
    KernelImageError,
    load_kernel_image,
    parse_setup_header,
)
from pcivm.boot.zero_page import (
    BP_ACPI_RSDP_ADDR,
    BP_E820_ENTRIES,
    BP_E820_TABLE,
    CMDLINE_ADDR,
    HDR_CMD_LINE_PTR,
    HDR_RAMDISK_IMAGE,
    HDR_RAMDISK_SIZE,
    HDR_TYPE_OF_LOADER,
    ZERO_PAGE_ADDR,
    BootLayoutError,
    load_kernel,
)
from pcivm.errors import PcivmError
from pcivm.memory import E820Type, GuestMemory, MiB


def make_bzimage(
    version=0x020F, xloadflags=0x7F, payload=b"\x90" * 4096, setup_sects=1, init_size=8 * MiB
):
    image = bytearray((setup_sects + 1) * 512)
    image[0x1F1] = setup_sects
    struct.pack_into("<H", image, 0x1FE, 0xAA55)
    image[0x200] = 0xEB  # jmp
    image[0x201] = 0x6A  # header ends at 0x26c
    struct.pack_into("<I", image, 0x202, HDRS_MAGIC)
    struct.pack_into("<H", image, 0x206, version)
    image[0x211] = 0x01  # LOADED_HIGH
    struct.pack_into("<I", image, 0x22C, 0x7FFFFFFF)
    struct.pack_into("<IBBHI", image, 0x230, 0x200000, 1, 21, xloadflags, 2047)
    struct.pack_into("<QI", image, 0x258, 0x1000000, init_size)
    return bytes(image) + payload


def make_elf(paddr=0x1000000, entry=0x1000000, data=b"\xf4" * 64, memsz=4096):
    ehdr = bytearray(64)
    ehdr[:4] = b"\x7fELF"
    ehdr[4], ehdr[5], ehdr[6] = 2, 1, 1
    struct.pack_into("<HHIQQQIHHH", ehdr, 16, 2, 62, 1, entry, 64, 0, 0, 64, 56, 1)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 120, 0xFFFFFFFF81000000, paddr, len(data), memsz, 4096)
    return bytes(ehdr) + phdr + data


def test_setup_header_fields_are_read_from_their_offsets():
    setup = parse_setup_header(make_bzimage())
    assert setup.version == 0x020F
    assert setup.pref_address == 0x1000000
    assert setup.cmdline_size == 2047
    assert setup.init_size == 8 * MiB
    assert setup.relocatable
    assert len(setup.raw) == 0x26C - 0x1F1


def test_a_file_without_the_hdrs_magic_is_refused(tmp_path):
    path = tmp_path / "notakernel"
    path.write_bytes(b"hello" * 200)
    with pytest.raises(KernelImageError, match="not a bzImage"):
        load_kernel_image(path)


def test_an_old_boot_protocol_is_refused():
    with pytest.raises(KernelImageError, match="too old"):
        parse_setup_header(make_bzimage(version=0x0206))


def test_a_bzimage_without_64_bit_entry_is_refused(tmp_path):
    path = tmp_path / "bz"
    path.write_bytes(make_bzimage(xloadflags=0))
    with pytest.raises(KernelImageError, match="64-bit entry"):
        load_kernel_image(path)


def test_missing_kernel_names_the_file(tmp_path):
    with pytest.raises(KernelImageError, match="nope"):
        load_kernel_image(tmp_path / "nope")


def test_bzimage_loads_at_preferred_address_and_enters_at_plus_0x200(tmp_path):
    path = tmp_path / "bz"
    path.write_bytes(make_bzimage())
    kernel = load_kernel_image(path)
    assert kernel.load_addr == 0x1000000
    assert kernel.entry == 0x1000200
    (segment,) = kernel.segments
    # The protected-mode kernel after the setup sectors, read from the file at load time.
    assert (segment.file_offset, segment.file_size) == (len(make_bzimage()) - 4096, 4096)
    assert kernel.footprint == segment.mem_size == 8 * MiB
    memory = GuestMemory(64 * MiB)
    load_kernel(memory, kernel, None, "")
    assert memory.read(0x1000000, 4096) == b"\x90" * 4096


def test_elf_vmlinux_segments_load_at_their_physical_addresses(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(make_elf())
    kernel = load_kernel_image(path)
    assert kernel.kind == "elf"
    assert kernel.entry == 0x1000000
    assert kernel.segments[0].phys_addr == 0x1000000
    assert kernel.segments[0].mem_size == 4096


def test_elf_segment_outside_the_file_is_refused(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(make_elf()[:-10])
    with pytest.raises(KernelImageError, match="outside the file"):
        load_kernel_image(path)


def test_zero_page_carries_cmdline_initrd_e820_and_rsdp(tmp_path):
    path = tmp_path / "bz"
    path.write_bytes(make_bzimage())
    memory = GuestMemory(64 * MiB)
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"I" * 5000)
    layout = load_kernel(
        memory, load_kernel_image(path), initrd, "console=ttyS0", acpi_rsdp_addr=0xE0000
    )
    zp = memory.read(ZERO_PAGE_ADDR, 4096)
    assert zp[HDR_TYPE_OF_LOADER] == 0xFF
    assert struct.unpack_from("<I", zp, HDR_CMD_LINE_PTR)[0] == CMDLINE_ADDR
    assert memory.read(CMDLINE_ADDR, 14) == b"console=ttyS0\0"
    (initrd_addr,) = struct.unpack_from("<I", zp, HDR_RAMDISK_IMAGE)
    (initrd_size,) = struct.unpack_from("<I", zp, HDR_RAMDISK_SIZE)
    assert (initrd_addr, initrd_size) == (layout.initrd_addr, 5000)
    assert initrd_addr % 4096 == 0 and initrd_addr + 5000 <= 64 * MiB
    assert memory.read(initrd_addr, 5000) == b"I" * 5000
    assert struct.unpack_from("<Q", zp, BP_ACPI_RSDP_ADDR)[0] == 0xE0000
    count = zp[BP_E820_ENTRIES]
    entries = [struct.unpack_from("<QQI", zp, BP_E820_TABLE + 20 * i) for i in range(count)]
    assert entries == [(e.addr, e.size, e.type) for e in memory.e820()]
    assert (0x100000, 63 * MiB, E820Type.RAM) in entries


def test_memory_too_small_for_kernel_and_initrd_is_a_clear_error(tmp_path):
    path = tmp_path / "bz"
    path.write_bytes(make_bzimage(init_size=30 * MiB))
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"x" * (8 * MiB))
    with pytest.raises(BootLayoutError, match="raise -m"):
        load_kernel(GuestMemory(32 * MiB), load_kernel_image(path), initrd, "")


def test_elf_segments_are_read_into_ram_and_their_tail_is_left_zero(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(make_elf())
    kernel = load_kernel_image(path)
    memory = GuestMemory(64 * MiB)
    load_kernel(memory, kernel, None, "")
    (segment,) = kernel.segments
    start = segment.phys_addr
    assert (
        memory.read(start, segment.file_size)
        == make_elf()[segment.file_offset :][: segment.file_size]
    )
    assert memory.read(start + segment.file_size, segment.mem_size - segment.file_size) == bytes(
        segment.mem_size - segment.file_size
    )


def test_a_kernel_file_that_shrank_after_parsing_is_an_error(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(make_elf())
    kernel = load_kernel_image(path)
    path.write_bytes(make_elf()[:100])
    with pytest.raises(KernelImageError, match="got shorter"):
        load_kernel(GuestMemory(64 * MiB), kernel, None, "")


def test_a_missing_initrd_names_the_file(tmp_path):
    path = tmp_path / "bz"
    path.write_bytes(make_bzimage())
    with pytest.raises(PcivmError, match="could not load initrd .*nope"):
        load_kernel(GuestMemory(64 * MiB), load_kernel_image(path), tmp_path / "nope", "")


def test_a_directory_as_initrd_is_a_one_line_error(tmp_path):
    path = tmp_path / "bz"
    path.write_bytes(make_bzimage())
    with pytest.raises(PcivmError, match="could not load initrd .*Is a directory"):
        load_kernel(GuestMemory(64 * MiB), load_kernel_image(path), tmp_path, "")


def test_command_line_longer_than_the_kernel_takes_is_refused(tmp_path):
    path = tmp_path / "bz"
    path.write_bytes(make_bzimage())
    with pytest.raises(BootLayoutError, match="command line"):
        load_kernel(GuestMemory(64 * MiB), load_kernel_image(path), None, "x" * 3000)
