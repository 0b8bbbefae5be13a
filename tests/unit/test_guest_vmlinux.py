"""Unpacking the ELF kernel from a bzImage's payload."""

import gzip
import lzma
import shutil
import struct
import subprocess

import pytest

from pcivm.errors import GuestImageError
from pcivm.guest import vmlinux

ELF = b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 64


def bzimage(payload: bytes, setup_sects: int = 3, protocol: int = 0x020F) -> bytes:
    """A file with just the setup header fields the extractor reads."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[vmlinux.SETUP_SECTS] = setup_sects
    setup[vmlinux.HEADER_MAGIC : vmlinux.HEADER_MAGIC + 4] = b"HdrS"
    struct.pack_into("<H", setup, vmlinux.BOOT_PROTOCOL_VERSION, protocol)
    struct.pack_into("<II", setup, vmlinux.PAYLOAD_OFFSET, 0x40, len(payload))
    return bytes(setup) + b"\xcc" * 0x40 + payload + b"\xcc" * 100


def with_size(stream: bytes, data: bytes = ELF) -> bytes:
    # The kernel's build appends the uncompressed size (size_append).
    return stream + struct.pack("<I", len(data))


def test_payload_is_found_after_the_setup_sectors():
    assert vmlinux.payload(bzimage(b"PAYLOAD!", setup_sects=5)) == b"PAYLOAD!"


def test_gzip_payload(tmp_path):
    (tmp_path / "bz").write_bytes(bzimage(gzip.compress(ELF)))  # gzip carries ISIZE itself
    assert vmlinux.extract_vmlinux(tmp_path / "bz", tmp_path / "vmlinux").read_bytes() == ELF


def test_xz_payload_with_appended_size(tmp_path):
    (tmp_path / "bz").write_bytes(bzimage(with_size(lzma.compress(ELF))))
    assert vmlinux.extract_vmlinux(tmp_path / "bz", tmp_path / "vmlinux").read_bytes() == ELF


@pytest.mark.skipif(shutil.which("lz4") is None, reason="lz4 tool not installed")
def test_lz4_legacy_payload_as_debian_ships_it(tmp_path):
    stream = subprocess.run(["lz4", "-l", "-c"], input=ELF, capture_output=True, check=True).stdout
    assert stream.startswith(b"\x02\x21\x4c\x18")
    (tmp_path / "bz").write_bytes(bzimage(with_size(stream)))
    assert vmlinux.extract_vmlinux(tmp_path / "bz", tmp_path / "vmlinux").read_bytes() == ELF


def test_size_mismatch_is_an_error(tmp_path):
    (tmp_path / "bz").write_bytes(bzimage(with_size(lzma.compress(ELF), ELF + b"x")))
    with pytest.raises(GuestImageError, match="not the expected ELF"):
        vmlinux.extract_vmlinux(tmp_path / "bz", tmp_path / "vmlinux")
    assert not (tmp_path / "vmlinux").exists()


def test_unknown_compression_is_an_error():
    with pytest.raises(GuestImageError, match="unknown kernel compression"):
        vmlinux.decompress(b"\x00\x01\x02\x03rest")


def test_not_a_bzimage():
    with pytest.raises(GuestImageError, match="not a bzImage"):
        vmlinux.payload(bytes(4096))


def test_old_boot_protocol_has_no_payload_fields():
    with pytest.raises(GuestImageError, match="no payload fields"):
        vmlinux.payload(bzimage(b"x", protocol=0x0207))
