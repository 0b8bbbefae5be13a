"""A statically linked busybox for the box's /init, found on the host or fetched.

The box's initramfs runs before the host's filesystem is mounted, so its tools must not
need a dynamic loader. Debian's busybox-static package provides one; when the host does
not have it installed, `apt-get download` fetches it into the box's cache.
"""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

from pcivm.box.errors import BoxSetupError

HOST_CANDIDATES = (Path("/bin/busybox"), Path("/usr/bin/busybox"))
PACKAGE = "busybox-static"
PT_INTERP = 3


def is_static_elf(path: Path) -> bool:
    """True for a 64-bit little-endian ELF with no program interpreter (PT_INTERP)."""
    try:
        with path.open("rb") as f:
            header = f.read(64)
            if header[:6] != b"\x7fELF\x02\x01":
                return False
            (phoff,) = struct.unpack_from("<Q", header, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    types = (struct.unpack_from("<I", table, i * phentsize)[0] for i in range(phnum))
    return PT_INTERP not in types


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "pcivm" / "box"


def find_busybox(explicit: Path | None = None, cache_dir: Path | None = None) -> Path:
    if explicit is not None:
        if not is_static_elf(explicit):
            raise BoxSetupError(f"{explicit} is not a statically linked busybox")
        return explicit
    for candidate in HOST_CANDIDATES:
        if is_static_elf(candidate):
            return candidate
    return fetch_busybox(cache_dir or default_cache_dir())


def fetch_busybox(cache_dir: Path) -> Path:
    unpacked = cache_dir / PACKAGE
    binary = unpacked / "bin" / "busybox"
    if is_static_elf(binary):
        return binary
    cache_dir.mkdir(parents=True, exist_ok=True)
    _run(["apt-get", "download", "-q", PACKAGE], cache_dir)
    debs = sorted(cache_dir.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        raise BoxSetupError(f"apt-get download {PACKAGE} left no package in {cache_dir}")
    _run(["dpkg-deb", "-x", str(debs[-1]), str(unpacked)], cache_dir)
    if not is_static_elf(binary):
        raise BoxSetupError(f"{PACKAGE} did not provide a static {binary}")
    return binary


def _run(argv: list[str], cwd: Path) -> None:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise BoxSetupError(
            f"no static busybox on this host and no {argv[0]} to fetch one"
        ) from exc
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise BoxSetupError(f"cannot fetch {PACKAGE}: {' '.join(argv[:2])}: {last}")
