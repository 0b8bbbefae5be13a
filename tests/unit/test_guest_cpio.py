"""The newc writer: what Linux and the cpio tool read back."""

import shutil
import stat
import subprocess

import pytest

from pcivm.guest import cpio

MEMBERS = [
    cpio.directory("bin"),
    cpio.regular("bin/busybox", b"\x7fELF" + bytes(range(256)) * 3, 0o755),
    cpio.symlink("bin/sh", "busybox"),
    cpio.char_device("dev/console", 5, 1),
    cpio.regular("init", b"#!/bin/sh\n", 0o755),
    cpio.regular("empty", b""),
    cpio.regular("odd-length-name-x", b"abc"),
]


def test_round_trip_keeps_names_modes_data_and_devices():
    assert cpio.unpack(cpio.pack(MEMBERS)) == MEMBERS


def test_every_header_and_data_start_is_four_byte_aligned():
    archive = cpio.pack(MEMBERS)
    assert len(archive) % 4 == 0
    offsets = [i for i in range(0, len(archive), 4) if archive[i : i + 6] == cpio.NEWC_MAGIC]
    # one header per member plus the trailer, all found at aligned offsets
    assert len(offsets) == len(MEMBERS) + 1


def test_archive_ends_with_the_trailer():
    assert b"TRAILER!!!\0" in cpio.pack([])[-16:]


def test_equal_inputs_give_equal_archives():
    assert cpio.pack(MEMBERS) == cpio.pack(list(MEMBERS))


def test_absolute_names_are_refused():
    with pytest.raises(ValueError, match="relative"):
        cpio.pack([cpio.regular("/init", b"")])


def test_device_with_data_is_refused():
    with pytest.raises(ValueError, match="carry data"):
        cpio.pack([cpio.Entry("dev/x", stat.S_IFCHR | 0o600, b"data")])


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio tool not installed")
def test_the_cpio_tool_lists_the_same_members():
    listing = subprocess.run(
        ["cpio", "-itv", "--quiet"], input=cpio.pack(MEMBERS), capture_output=True, check=True
    ).stdout.decode()
    lines = listing.splitlines()
    assert [line.split()[-1] if "->" not in line else line.split()[-3] for line in lines] == [
        m.name for m in MEMBERS
    ]
    console = next(line for line in lines if line.endswith("dev/console"))
    assert console.startswith("crw-------") and "5,   1" in console
    assert next(line for line in lines if "bin/sh" in line).endswith("bin/sh -> busybox")
