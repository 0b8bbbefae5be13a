"""The box's kernel: a bzImage and its module tree, and which modules the box loads."""

from __future__ import annotations

import lzma
from dataclasses import dataclass
from pathlib import Path

from pcivm.box.errors import BoxSetupError

# What the box needs beyond the built-in drivers of Debian's cloud kernel: the PCI
# transport, the control port, the shared filesystem and KVM itself.
BOX_MODULES = ("virtio_pci", "virtio_console", "virtiofs", "kvm_amd")


@dataclass(frozen=True)
class BoxKernel:
    bzimage: Path
    modules_dir: Path  # .../lib/modules/<release>, with modules.dep

    @property
    def release(self) -> str:
        return self.modules_dir.name

    def check(self) -> None:
        if not self.bzimage.is_file():
            raise BoxSetupError(f"the box's kernel {self.bzimage} does not exist")
        if not (self.modules_dir / "modules.dep").is_file():
            raise BoxSetupError(f"{self.modules_dir}/modules.dep does not exist (run depmod)")


def module_name(path: str) -> str:
    """`kernel/arch/x86/kvm/kvm-amd.ko.xz` -> `kvm_amd` (the kernel treats - and _ alike)."""
    base = path.rsplit("/", 1)[-1]
    return base.split(".ko", 1)[0].replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, list[str]]:
    """modules.dep as {module path: [paths of its dependencies, nearest first]}."""
    deps = {}
    for line in text.splitlines():
        target, sep, rest = line.partition(":")
        if sep:
            deps[target.strip()] = rest.split()
    return deps


def load_order(deps: dict[str, list[str]], wanted: tuple[str, ...]) -> list[str]:
    """Module paths to insmod, each after everything it depends on."""
    by_name = {module_name(path): path for path in deps}
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        # modules.dep lists a module's dependencies nearest first: load them farthest first.
        for dependency in reversed(deps.get(path, [])):
            visit(dependency)
        order.append(path)

    for name in wanted:
        if name not in by_name:
            raise BoxSetupError(f"the box's kernel has no module {name}")
        visit(by_name[name])
    return order


def module_bytes(modules_dir: Path, path: str) -> bytes:
    """A module's ELF image; .xz ones are unpacked here since busybox insmod may not."""
    data = (modules_dir / path).read_bytes()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if not path.endswith(".ko"):
        raise BoxSetupError(f"cannot load module {path}: unsupported compression")
    return data
