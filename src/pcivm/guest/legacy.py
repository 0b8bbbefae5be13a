"""The old guest's virtio_pci.ko: Linux's own legacy virtio-pci driver without its modern half.

Built from the linux-source package of the image kernel's exact version, against that
kernel's own headers (another flavour's headers give another vermagic and the module is
refused), with legacy_stub.c in place of virtio_pci_modern.c.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from importlib import resources
from pathlib import Path

from pcivm.errors import GuestImageError
from pcivm.guest import debs, hosttools
from pcivm.guest.cache import debs_dir

log = logging.getLogger(__name__)

# What the stock Makefile compiles into virtio_pci.ko, less virtio_pci_modern.c.
# virtio_pci_common.h is in no headers package, so it comes from the sources too.
SOURCE_DIR = "drivers/virtio"
SOURCE_FILES = ("virtio_pci_common.c", "virtio_pci_legacy.c", "virtio_pci_common.h")
# The project's own part, shipped as package data beside this module.
STUB_FILES = ("legacy_stub.c", "Kbuild")
MODULE_FILE = "virtio_pci.ko"


def stub_sources() -> dict[str, bytes]:
    """The project's files of the build, by name (also hashed into the image manifest)."""
    package = resources.files(__package__)
    return {name: package.joinpath(name).read_bytes() for name in STUB_FILES}


def source_package(release: str) -> str:
    """`6.1.0-56-cloud-amd64` -> `linux-source-6.1`."""
    match = re.match(r"(\d+\.\d+)\.", release)
    if not match:
        raise GuestImageError(f"cannot tell the kernel series of release {release}")
    return f"linux-source-{match.group(1)}"


def fetch_sources(release: str, version: str, dest: Path) -> None:
    """Put the driver's three source files from Debian's linux-source tarball in `dest`."""
    package = source_package(release)
    deb = debs.download(package, debs_dir(), version)
    unpacked = dest / "unpacked"
    tarball = debs.extract_member(deb, f"./usr/src/{package}.tar.xz", unpacked)
    top = package  # the tarball's top directory is named like the package
    members = [f"{top}/{SOURCE_DIR}/{name}" for name in SOURCE_FILES]
    log.info("extracting %s from %s", ", ".join(SOURCE_FILES), tarball.name)
    # --occurrence=1 stops reading once every file is found; xz -T0 unpacks in parallel.
    # Together that is seconds instead of a minute for the whole tarball.
    hosttools.find_tool("xz", "xz-utils")
    hosttools.run(
        ["tar", "-I", "xz -T0", "-x", "--occurrence=1", "-f", str(tarball), "-C", str(dest)]
        + members
    )
    for name in SOURCE_FILES:
        (dest / top / SOURCE_DIR / name).replace(dest / name)
    shutil.rmtree(unpacked)
    shutil.rmtree(dest / top)
    # The 130 MiB package is needed again only for another kernel version.
    deb.unlink()


def fetch_headers(release: str, version: str, root: Path) -> None:
    """Unpack linux-headers-<release> and the packages it needs (the -common headers,
    linux-kbuild) into one private root: their symlinks are relative to that root."""
    package = f"linux-headers-{release}"
    wanted = {package: version}
    wanted.update(debs.dependency_versions(package, version, ("linux-headers-", "linux-kbuild-")))
    for name, name_version in wanted.items():
        debs.extract(debs.download(name, debs_dir(), name_version), root)


def headers_dir(root: Path, release: str) -> Path:
    return root / "usr" / "src" / f"linux-headers-{release}"


def point_makefile_at(root: Path, release: str) -> None:
    """The flavour's Makefile includes the -common one by its installed absolute path
    (/usr/src/...): make it name the copy under `root` instead (done before each build,
    since the cache may have moved)."""
    makefile = headers_dir(root, release) / "Makefile"
    text = re.sub(
        r"^include\s+\S*?(/usr/src/linux-headers-[^/\s]+/Makefile)[ \t]*$",
        lambda m: f"include {root}{m.group(1)}",
        makefile.read_text(),
        flags=re.M,
    )
    makefile.write_text(text)


def _check_compiler(headers: Path) -> None:
    # The headers name the compiler the kernel was built with (CC = ... gcc-12).
    variables = (headers / ".kernelvariables").read_text()
    match = re.search(r"^CC\s*=.*?\)\s*\$\(CROSS_COMPILE\)(\S+)", variables, re.M)
    compiler = match.group(1) if match else "gcc"
    hosttools.find_tool(compiler, compiler)
    hosttools.find_tool("make", "make")


def build_module(sources: Path, headers_root: Path, release: str, build: Path) -> Path:
    """Compile the legacy-only virtio_pci.ko in `build` and return its path."""
    headers = headers_dir(headers_root, release)
    point_makefile_at(headers_root, release)
    _check_compiler(headers)
    build.mkdir(parents=True, exist_ok=True)
    for name in SOURCE_FILES:
        shutil.copyfile(sources / name, build / name)
    for name, data in stub_sources().items():
        (build / name).write_bytes(data)
    log.info("building the legacy-only %s", MODULE_FILE)
    env = dict(os.environ, LC_ALL="C")
    hosttools.run(["make", "-C", str(headers), f"M={build}", "modules"], env=env)
    module = build / MODULE_FILE
    if not module.is_file():
        raise GuestImageError(f"the old guest's build made no {MODULE_FILE}")
    return module


def check_vermagic(module: Path, stock: Path) -> None:
    """The kernel refuses a module whose vermagic differs from its own."""
    built = hosttools.modinfo_field(module, "vermagic")
    wanted = hosttools.modinfo_field(stock, "vermagic")
    if built != wanted:
        raise GuestImageError(
            f"the old guest's virtio_pci has vermagic '{built}', the kernel wants '{wanted}'"
        )
