"""Kernel images pcivm can boot: a bzImage (Linux x86 boot protocol) or an ELF vmlinux.

See Documentation/arch/x86/boot.rst: the real-mode setup header sits at offset 0x1f1 of the
bzImage; the protected-mode kernel follows the (setup_sects + 1) 512-byte sectors of setup.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from pcivm.errors import PcivmError

SETUP_HEADER_OFFSET = 0x1F1
BOOT_FLAG = 0xAA55
HDRS_MAGIC = 0x53726448  # "HdrS"
# Protocol 2.12 added xloadflags; XLF_KERNEL_64 says the 64-bit entry at +0x200 exists.
MIN_BOOT_PROTOCOL = 0x020C
XLF_KERNEL_64 = 1 << 0
DEFAULT_SETUP_SECTS = 4
ENTRY_64_OFFSET = 0x200
ELF_MAGIC = b"\x7fELF"
PT_LOAD = 1
EM_X86_64 = 62


class KernelImageError(PcivmError):
    """The file given as -kernel is not a kernel pcivm can boot."""


@dataclass(frozen=True)
class SetupHeader:
    """The fields of the setup header the loader reads; `raw` is copied into the zero page."""

    setup_sects: int
    version: int
    loadflags: int
    initrd_addr_max: int
    kernel_alignment: int
    relocatable: bool
    xloadflags: int
    cmdline_size: int
    pref_address: int
    init_size: int
    raw: bytes  # from 0x1f1 to the end of the header as this kernel defines it


# Enough of the file for the setup header or the ELF and program headers: only these are
# read up front; the kernel proper goes from the file straight into guest RAM.
HEADER_READ = 64 * 1024


@dataclass(frozen=True)
class Segment:
    """`file_size` bytes at `file_offset` of the kernel file, loaded at `phys_addr`; the
    kernel may use `mem_size` bytes from there (the tail is zero, as fresh RAM is)."""

    phys_addr: int
    file_offset: int
    file_size: int
    mem_size: int


@dataclass(frozen=True)
class KernelImage:
    path: Path
    kind: str  # "bzImage" or "elf"
    segments: list[Segment]
    entry: int  # guest-physical address of the 64-bit entry point
    setup: SetupHeader | None  # None for an ELF vmlinux
    # Memory the kernel needs from its load address while it boots (decompression included).
    footprint: int

    @property
    def load_addr(self) -> int:
        return self.segments[0].phys_addr


def parse_setup_header(image: bytes) -> SetupHeader:
    if len(image) < 0x268:
        raise KernelImageError("too short to be a bzImage")
    boot_flag, jump, header, version = struct.unpack_from("<H H I H", image, 0x1FE)
    if boot_flag != BOOT_FLAG or header != HDRS_MAGIC:
        raise KernelImageError("not a bzImage (no 'HdrS' setup header)")
    if version < MIN_BOOT_PROTOCOL:
        raise KernelImageError(
            f"boot protocol {version >> 8}.{version & 0xFF} is too old (need 2.12 or later)"
        )
    # The header ends where the jump at 0x200 lands: 0x202 + its signed 8-bit offset.
    header_end = 0x202 + (jump >> 8)
    setup_sects = image[0x1F1] or DEFAULT_SETUP_SECTS
    (loadflags,) = struct.unpack_from("<B", image, 0x211)
    (initrd_addr_max,) = struct.unpack_from("<I", image, 0x22C)
    kernel_alignment, relocatable, _min_align, xloadflags, cmdline_size = struct.unpack_from(
        "<I B B H I", image, 0x230
    )
    (pref_address, init_size) = struct.unpack_from("<Q I", image, 0x258)
    return SetupHeader(
        setup_sects=setup_sects,
        version=version,
        loadflags=loadflags,
        initrd_addr_max=initrd_addr_max,
        kernel_alignment=kernel_alignment,
        relocatable=bool(relocatable),
        xloadflags=xloadflags,
        cmdline_size=cmdline_size,
        pref_address=pref_address,
        init_size=init_size,
        raw=bytes(image[SETUP_HEADER_OFFSET:header_end]),
    )


def _load_bzimage(path: Path, image: bytes, file_size: int) -> KernelImage:
    setup = parse_setup_header(image)
    if not setup.xloadflags & XLF_KERNEL_64:
        raise KernelImageError("this bzImage has no 64-bit entry point")
    payload_offset = (setup.setup_sects + 1) * 512
    if payload_offset >= file_size:
        raise KernelImageError("no protected-mode kernel after the setup sectors")
    payload_size = file_size - payload_offset
    # Load at the kernel's preferred address: a relocatable kernel placed there decompresses
    # without first moving itself.
    load_addr = setup.pref_address or 0x100000
    footprint = max(payload_size, setup.init_size)
    return KernelImage(
        path=path,
        kind="bzImage",
        segments=[Segment(load_addr, payload_offset, payload_size, footprint)],
        entry=load_addr + ENTRY_64_OFFSET,
        setup=setup,
        footprint=footprint,
    )


def _load_elf(path: Path, image: bytes, file_size: int) -> KernelImage:
    if len(image) < 64 or image[4] != 2 or image[5] != 1:
        raise KernelImageError("not a 64-bit little-endian ELF file")
    (e_type, e_machine, _v, e_entry, e_phoff, _sh, _fl, _eh, e_phentsize, e_phnum) = (
        struct.unpack_from("<HHIQQQIHHH", image, 16)
    )
    if e_machine != EM_X86_64:
        raise KernelImageError("ELF file is not for x86-64")
    segments = []
    for i in range(e_phnum):
        off = e_phoff + i * e_phentsize
        if off + 56 > len(image):
            raise KernelImageError("truncated ELF program headers")
        p_type, _flags, p_offset, _vaddr, p_paddr, p_filesz, p_memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", image, off
        )
        if p_type != PT_LOAD:
            continue
        if p_offset + p_filesz > file_size or p_filesz > p_memsz:
            raise KernelImageError("ELF segment lies outside the file")
        segments.append(Segment(p_paddr, p_offset, p_filesz, p_memsz))
    if not segments:
        raise KernelImageError("ELF file has no loadable segments")
    segments.sort(key=lambda s: s.phys_addr)
    start = segments[0].phys_addr
    end = max(s.phys_addr + s.mem_size for s in segments)
    # vmlinux's entry is physical: the x86-64 linker script says ENTRY(phys_startup_64).
    return KernelImage(path, "elf", segments, e_entry, None, end - start)


def open_error(path: Path, exc: OSError) -> KernelImageError:
    if isinstance(exc, FileNotFoundError):
        return KernelImageError(f"could not open kernel file '{path}': no such file")
    return KernelImageError(f"could not open kernel file '{path}': {exc.strerror}")


def load_kernel_image(path: Path) -> KernelImage:
    """Parse the kernel file's headers (the rest is read by `read_segment`, into RAM)."""
    try:
        with open(path, "rb") as f:
            image = f.read(HEADER_READ)
            file_size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise open_error(path, exc) from exc
    try:
        if image[:4] == ELF_MAGIC:
            return _load_elf(path, image, file_size)
        return _load_bzimage(path, image, file_size)
    except KernelImageError as exc:
        raise KernelImageError(f"{path}: {exc}") from None


def read_file_into(fd: int, view: memoryview, offset: int) -> int:
    """Fill `view` from `fd` at `offset` with as few reads as the kernel allows (no copy
    through a Python buffer); the bytes read, short only at the end of the file."""
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            break
        done += n
    return done


def read_segment(kernel: KernelImage, segment: Segment, fd: int, view: memoryview) -> None:
    """Read `segment` of the open kernel file `fd` into `view` (its place in guest RAM)."""
    if read_file_into(fd, view, segment.file_offset) != segment.file_size:
        raise KernelImageError(f"{kernel.path}: the file got shorter while it was loaded")
