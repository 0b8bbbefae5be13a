"""Kernel images pcivm can boot: a bzImage (Linux x86 boot protocol) or an ELF vmlinux.

See Documentation/arch/x86/boot.rst: the real-mode setup header sits at offset 0x1f1 of the
bzImage; the protected-mode kernel follows the (setup_sects + 1) 512-byte sectors of setup.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Segment:
    phys_addr: int
    data: bytes
    mem_size: int  # bytes to reserve; the tail beyond len(data) is zeroed


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


def _load_bzimage(path: Path, image: bytes) -> KernelImage:
    setup = parse_setup_header(image)
    if not setup.xloadflags & XLF_KERNEL_64:
        raise KernelImageError("this bzImage has no 64-bit entry point")
    payload = image[(setup.setup_sects + 1) * 512 :]
    # Load at the kernel's preferred address: a relocatable kernel placed there decompresses
    # without first moving itself.
    load_addr = setup.pref_address or 0x100000
    return KernelImage(
        path=path,
        kind="bzImage",
        segments=[Segment(load_addr, payload, max(len(payload), setup.init_size))],
        entry=load_addr + ENTRY_64_OFFSET,
        setup=setup,
        footprint=max(len(payload), setup.init_size),
    )


def _load_elf(path: Path, image: bytes) -> KernelImage:
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
        if p_offset + p_filesz > len(image) or p_filesz > p_memsz:
            raise KernelImageError("ELF segment lies outside the file")
        segments.append(Segment(p_paddr, image[p_offset : p_offset + p_filesz], p_memsz))
    if not segments:
        raise KernelImageError("ELF file has no loadable segments")
    segments.sort(key=lambda s: s.phys_addr)
    start = segments[0].phys_addr
    end = max(s.phys_addr + s.mem_size for s in segments)
    # vmlinux's entry is physical: the x86-64 linker script says ENTRY(phys_startup_64).
    return KernelImage(path, "elf", segments, e_entry, None, end - start)


def load_kernel_image(path: Path) -> KernelImage:
    try:
        image = path.read_bytes()
    except FileNotFoundError as exc:
        raise KernelImageError(f"could not open kernel file '{path}': no such file") from exc
    except OSError as exc:
        raise KernelImageError(f"could not open kernel file '{path}': {exc.strerror}") from exc
    try:
        if image[:4] == ELF_MAGIC:
            return _load_elf(path, image)
        return _load_bzimage(path, image)
    except KernelImageError as exc:
        raise KernelImageError(f"{path}: {exc}") from None
