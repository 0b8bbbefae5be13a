"""The zero page (struct boot_params, arch/x86/include/uapi/asm/bootparam.h) and the
placement of the kernel, its command line and the initramfs in guest RAM."""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from pcivm.boot.kernel_image import (
    HDRS_MAGIC,
    SETUP_HEADER_OFFSET,
    KernelImage,
    open_error,
    read_file_into,
    read_segment,
)
from pcivm.errors import PcivmError
from pcivm.memory import E820Entry, GuestMemory, MiB

# Guest-physical layout of what the loader writes below 1 MiB (none of it overlaps the
# page tables and GDT, see x86_entry.py).
ZERO_PAGE_ADDR = 0x7000
CMDLINE_ADDR = 0x20000
CMDLINE_MAX = 0x10000

# Offsets inside struct boot_params.
BP_ACPI_RSDP_ADDR = 0x070
BP_EXT_RAMDISK_IMAGE = 0x0C0
BP_EXT_RAMDISK_SIZE = 0x0C4
BP_EXT_CMD_LINE_PTR = 0x0C8
BP_E820_ENTRIES = 0x1E8
BP_E820_TABLE = 0x2D0
E820_MAX_ENTRIES_ZEROPAGE = 128
# Offsets inside the setup header, relative to the start of boot_params.
HDR_BOOT_FLAG = 0x1FE
HDR_HEADER = 0x202
HDR_VERSION = 0x206
HDR_TYPE_OF_LOADER = 0x210
HDR_LOADFLAGS = 0x211
HDR_RAMDISK_IMAGE = 0x218
HDR_RAMDISK_SIZE = 0x21C
HDR_HEAP_END_PTR = 0x224
HDR_CMD_LINE_PTR = 0x228
HDR_KERNEL_ALIGNMENT = 0x230
HDR_CMDLINE_SIZE = 0x238

LOADER_TYPE_UNDEFINED = 0xFF  # "no registered id" (boot.rst)
LOADFLAG_CAN_USE_HEAP = 0x80
LOADFLAG_KEEP_SEGMENTS = 0x40
# The initramfs is placed just below this, at most: clear of 32-bit PCI holes in any layout.
INITRD_ALIGN = 4096


class BootLayoutError(PcivmError):
    """The kernel, initramfs and command line do not fit in guest RAM."""


@dataclass(frozen=True)
class BootLayout:
    kernel_start: int
    kernel_end: int
    initrd_addr: int
    initrd_size: int


def open_initrd(path: Path) -> int:
    """A read-only descriptor of the initramfs file, or the one-line error naming it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise PcivmError(f"could not load initrd '{path}': {exc.strerror}") from None
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)  # a directory opens, but does not read
        raise PcivmError(f"could not load initrd '{path}': Is a directory")
    return fd


def load_kernel(
    memory: GuestMemory,
    kernel: KernelImage,
    initrd: Path | None,
    cmdline: str,
    acpi_rsdp_addr: int | None = None,
    e820_reserved: list[E820Entry] = (),
) -> BootLayout:
    """Read the kernel and the initramfs from their files straight into RAM, write the
    command line and the zero page; return where they went.

    RAM must be fresh (zero): the kernel's memory beyond its file data (bss, room to
    decompress) is left as it is, untouched pages cost nothing."""
    kernel_end = kernel.load_addr + kernel.footprint
    if kernel_end > memory.lowmem_end():
        raise BootLayoutError(
            f"kernel needs {kernel_end // MiB} MiB of RAM to boot; "
            f"guest has {memory.lowmem_end() // MiB} MiB below 4 GiB (raise -m)"
        )
    cmdline_bytes = cmdline.encode() + b"\0"
    max_cmdline = kernel.setup.cmdline_size + 1 if kernel.setup else CMDLINE_MAX
    if len(cmdline_bytes) > min(max_cmdline, CMDLINE_MAX):
        raise BootLayoutError(
            f"kernel command line is {len(cmdline_bytes) - 1} bytes; "
            f"this kernel takes at most {min(max_cmdline, CMDLINE_MAX) - 1}"
        )
    try:
        kernel_fd = os.open(kernel.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise open_error(kernel.path, exc) from None
    try:
        for seg in kernel.segments:
            read_segment(kernel, seg, kernel_fd, memory.view(seg.phys_addr, seg.file_size))
    finally:
        os.close(kernel_fd)
    memory.write(CMDLINE_ADDR, cmdline_bytes)

    initrd_addr, initrd_size = 0, 0
    if initrd is not None:
        initrd_fd = open_initrd(initrd)
        try:
            initrd_size = os.fstat(initrd_fd).st_size
            limit = memory.lowmem_end()
            if kernel.setup and kernel.setup.initrd_addr_max:
                limit = min(limit, kernel.setup.initrd_addr_max + 1)
            initrd_addr = (limit - initrd_size) & ~(INITRD_ALIGN - 1)
            if initrd_addr < kernel_end:
                raise BootLayoutError(
                    f"kernel and initramfs need {(kernel_end + initrd_size) // MiB + 1} MiB "
                    f"of RAM; guest has {memory.lowmem_end() // MiB} MiB (raise -m)"
                )
            view = memory.view(initrd_addr, initrd_size)
            if read_file_into(initrd_fd, view, 0) != initrd_size:
                raise PcivmError(f"could not load initrd '{initrd}': it got shorter")
        finally:
            os.close(initrd_fd)

    zero_page = build_zero_page(
        kernel,
        memory.e820(list(e820_reserved)),
        initrd_addr,
        initrd_size,
        len(cmdline_bytes),
        acpi_rsdp_addr,
    )
    memory.write(ZERO_PAGE_ADDR, zero_page)
    return BootLayout(kernel.load_addr, kernel_end, initrd_addr, initrd_size)


def build_zero_page(
    kernel: KernelImage,
    e820: list[E820Entry],
    initrd_addr: int,
    initrd_size: int,
    cmdline_len: int,
    acpi_rsdp_addr: int | None,
) -> bytes:
    bp = bytearray(4096)
    if kernel.setup:
        raw = kernel.setup.raw
        bp[SETUP_HEADER_OFFSET : SETUP_HEADER_OFFSET + len(raw)] = raw
    else:
        # An ELF vmlinux has no setup header: write the fields the kernel checks.
        struct.pack_into("<H", bp, HDR_BOOT_FLAG, 0xAA55)
        struct.pack_into("<I", bp, HDR_HEADER, HDRS_MAGIC)
        struct.pack_into("<I", bp, HDR_KERNEL_ALIGNMENT, 0x1000000)
        struct.pack_into("<I", bp, HDR_CMDLINE_SIZE, CMDLINE_MAX - 1)
    bp[HDR_TYPE_OF_LOADER] = LOADER_TYPE_UNDEFINED
    bp[HDR_LOADFLAGS] |= LOADFLAG_CAN_USE_HEAP
    struct.pack_into("<H", bp, HDR_HEAP_END_PTR, 0xFE00)
    struct.pack_into("<I", bp, HDR_CMD_LINE_PTR, CMDLINE_ADDR)
    struct.pack_into("<I", bp, HDR_RAMDISK_IMAGE, initrd_addr & 0xFFFFFFFF)
    struct.pack_into("<I", bp, HDR_RAMDISK_SIZE, initrd_size & 0xFFFFFFFF)
    struct.pack_into("<I", bp, BP_EXT_RAMDISK_IMAGE, initrd_addr >> 32)
    struct.pack_into("<I", bp, BP_EXT_RAMDISK_SIZE, initrd_size >> 32)
    if acpi_rsdp_addr is not None:
        struct.pack_into("<Q", bp, BP_ACPI_RSDP_ADDR, acpi_rsdp_addr)
    if len(e820) > E820_MAX_ENTRIES_ZEROPAGE:
        raise BootLayoutError("too many e820 entries for the zero page")
    bp[BP_E820_ENTRIES] = len(e820)
    for i, entry in enumerate(e820):
        struct.pack_into("<QQI", bp, BP_E820_TABLE + 20 * i, entry.addr, entry.size, entry.type)
    return bytes(bp)
