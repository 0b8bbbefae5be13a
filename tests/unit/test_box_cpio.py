"""The box's newc cpio writer produces what the kernel (and cpio(1)) unpacks."""

import shutil
import stat
import subprocess

import pytest

from pcivm.box.cpio import CpioWriter, read_newc


def sample() -> CpioWriter:
    cpio = CpioWriter()
    cpio.directory("bin")
    cpio.file("bin/tool", b"\x7fELF" + b"x" * 5, mode=0o755)
    cpio.symlink("bin/sh", "tool")
    cpio.char_device("console", 5, 1)
    cpio.file("init", b"#!/bin/sh\n", mode=0o755)
    return cpio


def test_entries_read_back_with_their_modes_and_data():
    entries = read_newc(sample().getvalue())
    assert [(name, stat.S_IFMT(mode)) for name, mode, _ in entries] == [
        ("bin", stat.S_IFDIR),
        ("bin/tool", stat.S_IFREG),
        ("bin/sh", stat.S_IFLNK),
        ("console", stat.S_IFCHR),
        ("init", stat.S_IFREG),
    ]
    assert entries[1][2] == b"\x7fELFxxxxx"
    assert stat.S_IMODE(entries[1][1]) == 0o755
    assert entries[2][2] == b"tool"


def test_every_header_starts_on_a_four_byte_boundary():
    archive = sample().getvalue()
    assert len(archive) % 4 == 0
    offset = 0
    for name, _mode, data in read_newc(archive):
        assert archive[offset : offset + 6] == b"070701"
        offset += 110 + len(name) + 1
        offset += -offset % 4
        offset += len(data)
        offset += -offset % 4
    assert archive[offset : offset + 6] == b"070701"  # the trailer


def test_a_name_cannot_appear_twice():
    cpio = CpioWriter()
    cpio.file("init", b"")
    with pytest.raises(ValueError):
        cpio.file("/init", b"")


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio(1) is not installed")
def test_cpio_tool_lists_the_archive(tmp_path):
    listing = subprocess.run(
        ["cpio", "-it", "--quiet"], input=sample().getvalue(), capture_output=True, check=True
    )
    assert listing.stdout.decode().split() == ["bin", "bin/tool", "bin/sh", "console", "init"]
