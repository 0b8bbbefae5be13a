"""A writer for the "newc" cpio format, the one the Linux kernel unpacks as an initramfs.

Only what an initramfs needs: directories, regular files, symlinks and device nodes,
each written once with explicit ownership (root) so the archive does not depend on who
builds it. Uncompressed: the kernel accepts it as is and loading it is not the slow part.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field

NEWC_MAGIC = b"070701"
TRAILER_NAME = "TRAILER!!!"


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


@dataclass
class CpioWriter:
    """Collects entries and renders them as one newc archive (`getvalue`)."""

    mtime: int = 0
    _chunks: list[bytes] = field(default_factory=list)
    _next_ino: int = 1
    _names: set[str] = field(default_factory=set)

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | mode, b"")

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | mode, b"", rdev=(major, minor))

    def getvalue(self) -> bytes:
        trailer = self._header(TRAILER_NAME, 0, 0, 0, (0, 0), ino=0)
        return b"".join([*self._chunks, trailer])

    def _entry(self, name: str, mode: int, data: bytes, rdev: tuple[int, int] = (0, 0)) -> None:
        name = name.strip("/")
        if not name or name in self._names:
            raise ValueError(f"cpio entry name empty or repeated: {name!r}")
        self._names.add(name)
        nlink = 2 if stat.S_ISDIR(mode) else 1
        self._chunks.append(self._header(name, mode, len(data), nlink, rdev, ino=self._next_ino))
        self._chunks.append(data + _pad4(len(data)))
        self._next_ino += 1

    def _header(
        self, name: str, mode: int, size: int, nlink: int, rdev: tuple[int, int], ino: int
    ) -> bytes:
        encoded = name.encode() + b"\0"
        fields = (
            ino,
            mode,
            0,  # uid
            0,  # gid
            nlink,
            self.mtime,
            size,
            0,  # devmajor
            0,  # devminor
            rdev[0],
            rdev[1],
            len(encoded),
            0,  # check (only used by the "crc" variant)
        )
        header = NEWC_MAGIC + b"".join(b"%08X" % value for value in fields)
        # The name is padded so that header + name ends on a 4-byte boundary.
        return header + encoded + _pad4(len(header) + len(encoded))


def read_newc(archive: bytes) -> list[tuple[str, int, bytes]]:
    """(name, mode, data) of each entry up to the trailer; the inverse of `CpioWriter`."""
    entries = []
    offset = 0
    while True:
        if archive[offset : offset + 6] != NEWC_MAGIC:
            raise ValueError(f"bad newc magic at offset {offset}")
        values = [int(archive[offset + 6 + 8 * i : offset + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = values[1], values[6], values[11]
        name_start = offset + 110
        name = archive[name_start : name_start + namesize - 1].decode()
        data_start = name_start + namesize
        data_start += -data_start % 4
        if name == TRAILER_NAME:
            return entries
        entries.append((name, mode, archive[data_start : data_start + size]))
        offset = data_start + size
        offset += -offset % 4
