"""The host programs the image build runs, with one-line errors that name the package."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from pcivm.errors import GuestImageError

# Debian keeps kmod's tools in /usr/sbin, which an ordinary user's PATH may lack.
_SBIN_DIRS = ("/usr/sbin", "/sbin")


def find_tool(name: str, package: str) -> str:
    """The path of program `name`, or an error telling which Debian package has it."""
    found = shutil.which(name)
    if found:
        return found
    for directory in _SBIN_DIRS:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    raise GuestImageError(f"{name} is needed to build the guest image (apt-get install {package})")


def run(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a program to completion; its last line of stderr becomes the error."""
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or [f"status {proc.returncode}"]
        raise GuestImageError(f"{os.path.basename(argv[0])} failed: {lines[-1]}")
    return proc.stdout


def modinfo_field(module: Path, field: str) -> str:
    """One field of a kernel module's .modinfo (vermagic, depends, ...)."""
    return run([find_tool("modinfo", "kmod"), "-F", field, str(module)]).strip()
