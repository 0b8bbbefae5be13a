"""What a built guest image was made from, to tell when it must be built again.

The manifest records the Debian package versions and a digest of the project's own
inputs (init scripts, the legacy stub, the module list). An image whose manifest differs
from the wanted one in any field is stale.
"""

from __future__ import annotations

import hashlib

# Bump when the build itself changes in a way the inputs below do not show.
MANIFEST_FORMAT = 1


def inputs_digest(files: dict[str, bytes], settings: tuple[str, ...] = ()) -> str:
    """A SHA-256 over named files and settings, independent of the dict's order."""
    digest = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    for setting in settings:
        digest.update(f"setting\0{setting}\0".encode())
    return digest.hexdigest()


def wanted_manifest(
    kernel_package: str, kernel_version: str, busybox_version: str, inputs: str
) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "kernel_package": kernel_package,
        "kernel_version": kernel_version,
        "busybox_version": busybox_version,
        "inputs_sha256": inputs,
    }


def is_stale(manifest: dict | None, wanted: dict) -> bool:
    """True when the image recorded by `manifest` (None: none built) is not `wanted`."""
    return manifest is None or manifest != wanted
