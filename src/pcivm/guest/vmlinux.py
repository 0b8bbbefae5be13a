"""The uncompressed ELF kernel inside a bzImage (for loaders that want vmlinux).

A bzImage carries its compressed kernel as the "payload" the setup header points at
(Documentation/arch/x86/boot.rst, boot protocol 2.08+: payload_offset is counted from the
start of the protected-mode code, which follows the (setup_sects + 1) * 512 bytes of
real-mode code). The kernel's build appends the uncompressed size as a little-endian u32
after the compressed stream, for every compressor.
"""

from __future__ import annotations

import bz2
import lzma
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

from pcivm.errors import GuestImageError

# Setup header fields (offsets into the bzImage file).
SETUP_SECTS = 0x1F1
HEADER_MAGIC = 0x202  # "HdrS"
BOOT_PROTOCOL_VERSION = 0x206
PAYLOAD_OFFSET = 0x248
PAYLOAD_LENGTH = 0x24C
SECTOR_SIZE = 512
MIN_PROTOCOL_WITH_PAYLOAD = 0x0208

ELF_MAGIC = b"\x7fELF"


def payload(bzimage: bytes) -> bytes:
    """The compressed kernel of a bzImage."""
    if bzimage[HEADER_MAGIC : HEADER_MAGIC + 4] != b"HdrS":
        raise GuestImageError("not a bzImage (no HdrS setup header)")
    (version,) = struct.unpack_from("<H", bzimage, BOOT_PROTOCOL_VERSION)
    if version < MIN_PROTOCOL_WITH_PAYLOAD:
        raise GuestImageError(f"boot protocol {version:#x} has no payload fields")
    setup_sects = bzimage[SETUP_SECTS] or 4  # 0 means 4, for ancient kernels
    offset, length = struct.unpack_from("<II", bzimage, PAYLOAD_OFFSET)
    start = (setup_sects + 1) * SECTOR_SIZE + offset
    if start + length > len(bzimage):
        raise GuestImageError("bzImage payload runs past the end of the file")
    return bzimage[start : start + length]


def _tool(argv: list[str], data: bytes, package: str) -> bytes:
    if shutil.which(argv[0]) is None:
        raise GuestImageError(
            f"{argv[0]} is needed to unpack the kernel (apt-get install {package})"
        )
    proc = subprocess.run(argv, input=data, capture_output=True, check=False)
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip() or f"status {proc.returncode}"
        raise GuestImageError(f"{argv[0]} could not unpack the kernel: {detail}")
    return proc.stdout


def decompress(data: bytes) -> bytes:
    """Unpack a payload, choosing the method by its magic bytes."""
    # The stdlib decompressors stop at the end of the stream and leave the appended size
    # unused; the lz4 and zstd tools would take it for a broken next frame.
    body = data[:-4]
    if data.startswith(b"\x1f\x8b"):
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(data)
    if data.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(data)
    if data.startswith(b"\x5d\x00\x00"):
        return lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(data)
    if data.startswith(b"BZh"):
        return bz2.BZ2Decompressor().decompress(data)
    if data.startswith(b"\x02\x21\x4c\x18"):  # LZ4 legacy frame (Debian 12's choice)
        return _tool(["lz4", "-dc"], body, "lz4")
    if data.startswith(b"\x28\xb5\x2f\xfd"):
        return _tool(["zstd", "-dc"], body, "zstd")
    raise GuestImageError(f"unknown kernel compression (magic {data[:4].hex()})")


def extract_vmlinux(bzimage: Path, dest: Path) -> Path:
    """Write the ELF kernel of `bzimage` to `dest`, checked against the appended size."""
    data = payload(bzimage.read_bytes())
    elf = decompress(data)
    (expected,) = struct.unpack("<I", data[-4:])
    if not elf.startswith(ELF_MAGIC) or len(elf) != expected:
        raise GuestImageError(
            f"{bzimage.name}: unpacked kernel is not the expected ELF image "
            f"({len(elf)} bytes, {expected} announced)"
        )
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(elf)
    tmp.replace(dest)
    return dest
