"""Build steps whose results live in the cache, each redone only when its key changes.

A step builds into a temporary directory and renames it into place after writing its
key, so an interrupted build never looks finished. One lock serialises builders: the
box and the tests may ask for the image from several processes at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

STAMP_NAME = ".pcivm-stamp.json"


def read_json(path: Path) -> dict | None:
    """A JSON object from `path`, or None when it is missing or unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def is_built(directory: Path, key: dict) -> bool:
    return read_json(directory / STAMP_NAME) == key


def build_step(directory: Path, key: dict, build: Callable[[Path], None]) -> Path:
    """`directory` as `build(tmpdir)` makes it, unless it was already made for `key`."""
    if is_built(directory, key):
        return directory
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build(tmp)
    write_json(tmp / STAMP_NAME, key)
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return directory


@contextlib.contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` (created if needed) for the block."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
