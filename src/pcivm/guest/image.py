"""The guest image in the user's cache: Debian's cloud kernel, a busybox initramfs with the
virtio modules and the old guest's virtio_pci, and the kernel as an ELF vmlinux.

Layout under `<cache>/guest/`:
    <release>/kernel/        the kernel package, unpacked, with modules.dep made by depmod
    <release>/legacy-src/    the driver sources taken from linux-source
    <release>/headers/       the kernel's headers package and what it needs, unpacked
    <release>/legacy-build/  the old guest's virtio_pci.ko and its build files
    <release>/initrd.gz, <release>/vmlinux, <release>/manifest.json
Each is rebuilt only when a package version or one of the project's inputs changes.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pcivm.errors import GuestImageError
from pcivm.guest import debs, hosttools, initramfs, legacy, manifest, store, vmlinux
from pcivm.guest.cache import cache_dir, debs_dir
from pcivm.guest.modules import parse_modules_dep

log = logging.getLogger(__name__)

BUSYBOX_PACKAGE = "busybox-static"
MANIFEST_NAME = "manifest.json"
# What was built last, so that a host that cannot reach apt right now still finds it.
LAST_KERNEL = "last-kernel.json"
LAST_IMAGE = "last-image.json"


@dataclass(frozen=True)
class KernelTree:
    release: str  # uname -r, e.g. "6.1.0-56-cloud-amd64"
    bzimage: Path  # the kernel image from the package
    modules_dir: Path  # .../lib/modules/<release>, with modules.dep


@dataclass(frozen=True)
class GuestImage:
    kernel: KernelTree
    initrd: Path  # gzip newc cpio
    vmlinux: Path  # uncompressed ELF kernel


def guest_dir() -> Path:
    return cache_dir() / "guest"


def ensure_kernel() -> KernelTree:
    """The image's kernel, unpacked (downloaded and unpacked first if needed)."""
    with store.locked(guest_dir() / ".lock"):
        try:
            package, version = _resolve_kernel(debs.candidate_records([debs.KERNEL_METAPACKAGE]))
        except GuestImageError as exc:
            last = _last_built(LAST_KERNEL, exc)
            package, version = last["kernel_package"], last["kernel_version"]
        return _ensure_kernel(package, version)


def ensure_image() -> GuestImage:
    """The complete guest image, built first if it is missing or stale."""
    with store.locked(guest_dir() / ".lock"):
        try:
            wanted = _wanted_manifest()
        except GuestImageError as exc:
            wanted = _last_built(LAST_IMAGE, exc)
        kernel = _ensure_kernel(wanted["kernel_package"], wanted["kernel_version"])
        image = _image_paths(kernel)
        built = store.read_json(image.initrd.parent / MANIFEST_NAME)
        if manifest.is_stale(built, wanted) or not (
            image.initrd.exists() and image.vmlinux.exists()
        ):
            _build_image(kernel, image, wanted)
        return image


def _wanted_manifest() -> dict:
    records = debs.candidate_records([debs.KERNEL_METAPACKAGE, BUSYBOX_PACKAGE])
    package, version = _resolve_kernel(records)
    return manifest.wanted_manifest(
        package, version, records[BUSYBOX_PACKAGE]["Version"], _inputs_digest()
    )


def _inputs_digest() -> str:
    files = {**initramfs.init_sources(), **legacy.stub_sources()}
    return manifest.inputs_digest(files, initramfs.GUEST_MODULES)


def _resolve_kernel(records: dict[str, dict[str, str]]) -> tuple[str, str]:
    return debs.pinned_dependency(records[debs.KERNEL_METAPACKAGE], "linux-image-")


def _last_built(name: str, exc: GuestImageError) -> dict:
    """What was built last, when apt cannot tell what is current; else the error."""
    last = store.read_json(guest_dir() / name)
    if last is None:
        raise exc
    log.warning("%s; using the guest image built before", exc)
    return last


def _kernel_tree(root: Path, release: str) -> KernelTree:
    return KernelTree(
        release=release,
        bzimage=root / "boot" / f"vmlinuz-{release}",
        modules_dir=root / "lib" / "modules" / release,
    )


def _ensure_kernel(package: str, version: str) -> KernelTree:
    release = debs.kernel_release(package)
    key = {"package": package, "version": version}

    def build(root: Path) -> None:
        log.info("unpacking %s %s", package, version)
        debs.extract(debs.download(package, debs_dir(), version), root)
        # The package ships no modules.dep: dpkg's postinst would run depmod.
        depmod = hosttools.find_tool("depmod", "kmod")
        hosttools.run([depmod, "-b", str(root), release])

    root = store.build_step(guest_dir() / release / "kernel", key, build)
    store.write_json(
        guest_dir() / LAST_KERNEL, {"kernel_package": package, "kernel_version": version}
    )
    return _kernel_tree(root, release)


def _image_paths(kernel: KernelTree) -> GuestImage:
    base = guest_dir() / kernel.release
    return GuestImage(kernel=kernel, initrd=base / "initrd.gz", vmlinux=base / "vmlinux")


def _build_image(kernel: KernelTree, image: GuestImage, wanted: dict) -> None:
    started = time.monotonic()
    base = image.initrd.parent
    version = wanted["kernel_version"]
    (base / MANIFEST_NAME).unlink(missing_ok=True)

    busybox = _busybox(wanted["busybox_version"], base)
    module = _legacy_module(kernel, version, base)
    graph = parse_modules_dep((kernel.modules_dir / "modules.dep").read_text())
    depends = tuple(
        d.replace("-", "_") for d in hosttools.modinfo_field(module, "depends").split(",") if d
    )
    members = initramfs.entries(busybox, kernel.modules_dir, graph, module.read_bytes(), depends)
    initramfs.write(image.initrd, members)
    vmlinux.extract_vmlinux(kernel.bzimage, image.vmlinux)

    store.write_json(base / MANIFEST_NAME, wanted)
    store.write_json(guest_dir() / LAST_IMAGE, wanted)
    log.info("guest image built in %.1f s", time.monotonic() - started)


def _busybox(version: str, base: Path) -> bytes:
    deb = debs.download(BUSYBOX_PACKAGE, debs_dir(), version)
    scratch = base / "busybox.tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    binary = debs.extract_member(deb, "./bin/busybox", scratch)
    data = binary.read_bytes()
    shutil.rmtree(scratch)
    return data


def _legacy_module(kernel: KernelTree, version: str, base: Path) -> Path:
    """Build the old guest's virtio_pci.ko (sources and headers are cached per version)."""
    release = kernel.release
    sources = store.build_step(
        base / "legacy-src",
        {"package": legacy.source_package(release), "version": version},
        lambda dest: legacy.fetch_sources(release, version, dest),
    )
    headers_root = store.build_step(
        base / "headers",
        {"release": release, "version": version},
        lambda dest: legacy.fetch_headers(release, version, dest),
    )
    build = base / "legacy-build"
    shutil.rmtree(build, ignore_errors=True)
    module = legacy.build_module(sources, headers_root, release, build)
    stock = kernel.modules_dir / "kernel" / "drivers" / "virtio" / legacy.MODULE_FILE
    legacy.check_vermagic(module, stock)
    return module
