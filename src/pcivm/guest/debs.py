"""Debian packages fetched with `apt-get download` and unpacked without installing them.

The guest image and the box are built only from Debian packages: their versions decide
when a cached build is stale, so resolving a version is separate from fetching it.
"""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

from pcivm.errors import GuestImageError

log = logging.getLogger(__name__)

# The metapackage whose dependency names the kernel the guest and the box run.
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise GuestImageError(f"{argv[0]}: not found (a Debian host with apt is needed)") from exc
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise GuestImageError(f"{' '.join(argv[:3])}: {detail}")
    return proc.stdout


def candidate_version(package: str) -> str:
    """The version apt would download for `package` (needs `apt-get update` first)."""
    out = _run(["apt-cache", "policy", package])
    match = re.search(r"^\s*Candidate:\s*(\S+)", out, re.M)
    if not match or match.group(1) == "(none)":
        raise GuestImageError(
            f"package {package} is not known to apt (run 'apt-get update' first)"
        )
    return match.group(1)


def kernel_package() -> str:
    """The versioned kernel package `linux-image-cloud-amd64` depends on."""
    out = _run(["apt-cache", "depends", KERNEL_METAPACKAGE])
    for line in out.splitlines():
        match = re.match(r"\s*Depends:\s*(linux-image-\S+)", line)
        if match:
            return match.group(1)
    raise GuestImageError(f"{KERNEL_METAPACKAGE} names no kernel package")


def kernel_release(kernel_pkg: str) -> str:
    """`linux-image-6.1.0-56-cloud-amd64` -> `6.1.0-56-cloud-amd64` (uname -r)."""
    return kernel_pkg.removeprefix("linux-image-")


def download(package: str, dest: Path) -> Path:
    """Fetch the candidate .deb of `package` into `dest` (once) and return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    version = candidate_version(package)
    existing = _find_deb(dest, package, version)
    if existing:
        return existing
    log.info("downloading %s %s", package, version)
    try:
        _run(["apt-get", "download", "-q", f"{package}={version}"], cwd=dest)
    except GuestImageError as exc:
        raise GuestImageError(
            f"cannot download {package} from the Debian archive: {exc}"
        ) from exc
    found = _find_deb(dest, package, version)
    if not found:
        raise GuestImageError(f"apt-get download {package} left no .deb in {dest}")
    return found


def _find_deb(dest: Path, package: str, version: str) -> Path | None:
    # apt-get names files package_version_arch.deb with ':' in an epoch quoted as %3a.
    quoted = version.replace(":", "%3a")
    for path in dest.glob(f"{package}_*.deb"):
        if path.name.startswith(f"{package}_{quoted}_"):
            return path
    return None


def extract(deb: Path, root: Path) -> None:
    """Unpack a .deb's files under `root` (no maintainer scripts run)."""
    root.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(root)])
