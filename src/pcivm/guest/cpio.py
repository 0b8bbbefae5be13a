"""The "newc" cpio format Linux unpacks as an initramfs (Documentation/driver-api/
early-userspace/buffer-format.rst), written here so that building the image needs
neither the cpio tool nor root (device nodes are just header fields).
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass

NEWC_MAGIC = b"070701"
TRAILER_NAME = "TRAILER!!!"
# 13 fields of 8 hex digits follow the magic: ino, mode, uid, gid, nlink, mtime,
# filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check.
_FIELD_COUNT = 13
_HEADER_SIZE = len(NEWC_MAGIC) + 8 * _FIELD_COUNT
_ALIGN = 4  # names and file data are each padded to a multiple of 4 bytes


@dataclass(frozen=True)
class Entry:
    """One archive member. `mode` carries the file type bits (stat.S_IFREG, ...)."""

    name: str
    mode: int
    data: bytes = b""
    rdev_major: int = 0
    rdev_minor: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


def directory(name: str, perm: int = 0o755) -> Entry:
    return Entry(name, stat.S_IFDIR | perm)


def regular(name: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(name, stat.S_IFREG | perm, data)


def symlink(name: str, target: str) -> Entry:
    # A symlink's target is stored as its data.
    return Entry(name, stat.S_IFLNK | 0o777, target.encode())


def char_device(name: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(name, stat.S_IFCHR | perm, rdev_major=major, rdev_minor=minor)


def _pad(length: int) -> bytes:
    return b"\0" * (-length % _ALIGN)


def _header(ino: int, entry: Entry, name: bytes) -> bytes:
    nlink = 2 if entry.is_dir else 1
    fields = (
        ino,
        entry.mode,
        0,  # uid: root
        0,  # gid: root
        nlink,
        0,  # mtime: fixed, so that equal inputs give equal archives
        len(entry.data),
        0,  # devmajor
        0,  # devminor
        entry.rdev_major,
        entry.rdev_minor,
        len(name),
        0,  # check: only used by the "070702" CRC format
    )
    return NEWC_MAGIC + b"".join(b"%08X" % value for value in fields)


def pack(entries: Iterable[Entry]) -> bytes:
    """The archive holding `entries` in order, ended by the trailer."""
    out = bytearray()
    for ino, entry in enumerate([*entries, Entry(TRAILER_NAME, 0)], start=1):
        if entry.name.startswith("/"):
            raise ValueError(f"cpio names are relative: {entry.name!r}")
        if entry.data and not (stat.S_ISREG(entry.mode) or stat.S_ISLNK(entry.mode)):
            raise ValueError(f"only files and symlinks carry data: {entry.name!r}")
        name = entry.name.encode() + b"\0"
        ino = 0 if entry.name == TRAILER_NAME else ino
        out += _header(ino, entry, name)
        out += name + _pad(_HEADER_SIZE + len(name))
        out += entry.data + _pad(len(entry.data))
    return bytes(out)


def unpack(archive: bytes) -> list[Entry]:
    """The entries of a newc archive up to its trailer (for checks and tests)."""
    entries: list[Entry] = []
    pos = 0
    while True:
        if archive[pos : pos + len(NEWC_MAGIC)] != NEWC_MAGIC:
            raise ValueError(f"no newc header at offset {pos}")
        fields = [int(archive[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(_FIELD_COUNT)]
        mode, filesize = fields[1], fields[6]
        rdev_major, rdev_minor, namesize = fields[9], fields[10], fields[11]
        pos += _HEADER_SIZE
        name = archive[pos : pos + namesize - 1].decode()
        pos += namesize + len(_pad(_HEADER_SIZE + namesize))
        if name == TRAILER_NAME:
            return entries
        data = archive[pos : pos + filesize]
        if len(data) != filesize:
            raise ValueError(f"{name}: archive ends inside its data")
        pos += filesize + len(_pad(filesize))
        entries.append(Entry(name, mode, data, rdev_major, rdev_minor))
