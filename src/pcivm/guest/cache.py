"""Where pcivm keeps what it builds or fetches: the user's cache folder, never the repo."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$XDG_CACHE_HOME/pcivm`, or `~/.cache/pcivm` when that is unset or not absolute
    (the XDG Base Directory spec says relative values are to be ignored)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    return root / "pcivm"


def debs_dir() -> Path:
    """Downloaded .deb files, shared by the guest image and the box."""
    return cache_dir() / "debs"
