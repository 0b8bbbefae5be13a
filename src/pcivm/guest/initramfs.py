"""The guest's initramfs: busybox, the virtio modules, and the project's /init."""

from __future__ import annotations

import gzip
import lzma
from importlib import resources
from pathlib import Path

from pcivm.errors import GuestImageError
from pcivm.guest import cpio
from pcivm.guest.modules import Module, load_order

# The virtio drivers the guest loads; their dependencies come from modules.dep.
GUEST_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_rng",
    "virtio_balloon",
    "virtio_console",
)
LEGACY_MODULE = "virtio_pci"  # the module the old guest replaces with its own build
INIT_FILES = ("init.sh", "functions.sh")

# Where things go inside the image (read by init.sh).
MODULES_DIR = "lib/pcivm/modules"
LEGACY_DIR = "lib/pcivm/legacy"
FUNCTIONS_PATH = "lib/pcivm/functions.sh"
LOAD_LIST = "lib/pcivm/modules.{guest}"  # "<name> <path>" lines in load order

# /dev/console (char 5:1) must exist before /init runs: the kernel opens it for init's
# stdin/stdout before anything could mount devtmpfs.
CONSOLE_MAJOR, CONSOLE_MINOR = 5, 1
# busybox --install needs the directories of its applet links.
DIRECTORIES = (
    "bin",
    "sbin",
    "usr",
    "usr/bin",
    "usr/sbin",
    "dev",
    "proc",
    "sys",
    "tmp",
    "root",
    "etc",
    "lib",
    "lib/pcivm",
    MODULES_DIR,
    LEGACY_DIR,
)


def init_sources() -> dict[str, bytes]:
    """The project's shell files, by name (also hashed into the image manifest)."""
    package = resources.files(__package__)
    return {name: package.joinpath(name).read_bytes() for name in INIT_FILES}


def module_bytes(path: Path) -> bytes:
    """A module file as plain .ko: busybox insmod cannot unpack compressed modules.
    (Debian 12 ships them uncompressed; later kernels' packages use .ko.xz.)"""
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if not path.name.endswith(".ko"):
        raise GuestImageError(f"cannot unpack module {path.name}")
    return data


def _load_list(order: list[str], paths: dict[str, str]) -> bytes:
    return "".join(f"{name} /{paths[name]}\n" for name in order).encode()


def entries(
    busybox: bytes,
    modules_dir: Path,
    graph: dict[str, Module],
    legacy_module: bytes,
    legacy_depends: tuple[str, ...],
) -> list[cpio.Entry]:
    """Everything in the image, in archive order (directories before their contents)."""
    modern = load_order(graph, list(GUEST_MODULES))
    # The old guest: the same drivers, but virtio_pci is the legacy build with its own
    # (smaller) dependencies, and the stock one is never loaded beside it.
    legacy_graph = dict(graph)
    legacy_graph[LEGACY_MODULE] = Module(LEGACY_MODULE, "", legacy_depends)
    legacy = load_order(legacy_graph, list(GUEST_MODULES))

    paths = {name: f"{MODULES_DIR}/{name}.ko" for name in set(modern) | set(legacy)}
    legacy_paths = dict(paths, **{LEGACY_MODULE: f"{LEGACY_DIR}/{LEGACY_MODULE}.ko"})

    scripts = init_sources()
    out = [cpio.directory(d) for d in DIRECTORIES]
    out.append(cpio.char_device("dev/console", CONSOLE_MAJOR, CONSOLE_MINOR))
    out.append(cpio.regular("bin/busybox", busybox, 0o755))
    out.append(cpio.regular("init", scripts["init.sh"], 0o755))
    out.append(cpio.regular(FUNCTIONS_PATH, scripts["functions.sh"]))
    for name in sorted(paths):
        data = module_bytes(modules_dir / graph[name].path)
        out.append(cpio.regular(paths[name], data))
    out.append(cpio.regular(legacy_paths[LEGACY_MODULE], legacy_module))
    out.append(cpio.regular(LOAD_LIST.format(guest="modern"), _load_list(modern, paths)))
    out.append(cpio.regular(LOAD_LIST.format(guest="legacy"), _load_list(legacy, legacy_paths)))
    return out


def write(path: Path, members: list[cpio.Entry]) -> None:
    """Write the gzip-compressed newc archive (gzip: the one compression the guest kernel
    is sure to have, CONFIG_RD_GZIP)."""
    tmp = path.with_name(path.name + ".tmp")
    # mtime=0 keeps equal inputs byte-identical.
    tmp.write_bytes(gzip.compress(cpio.pack(members), compresslevel=9, mtime=0))
    tmp.replace(path)
