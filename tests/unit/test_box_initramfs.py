"""The box's initramfs: module load order, busybox, and an /init that chroots the agent."""

import stat
import sys
from pathlib import Path

import pytest

from pcivm.box.busybox import is_static_elf
from pcivm.box.cpio import read_newc
from pcivm.box.errors import BoxSetupError
from pcivm.box.initramfs import AGENT_SCRIPT, build_initramfs
from pcivm.box.kernel import BoxKernel, load_order, module_name, parse_modules_dep

VIRTIO = "kernel/drivers/virtio/virtio.ko"
RING = "kernel/drivers/virtio/virtio_ring.ko"
KVM = "kernel/arch/x86/kvm/kvm.ko"
IRQBYPASS = "kernel/virt/lib/irqbypass.ko"
FUSE = "kernel/fs/fuse/fuse.ko"
DEPS = {
    KVM: [IRQBYPASS],
    "kernel/arch/x86/kvm/kvm-amd.ko": [KVM, IRQBYPASS],
    IRQBYPASS: [],
    VIRTIO: [RING],
    RING: [],
    "kernel/drivers/virtio/virtio_pci.ko": [VIRTIO, RING],
    "kernel/drivers/char/virtio_console.ko": [VIRTIO, RING],
    FUSE: [],
    "kernel/fs/fuse/virtiofs.ko": [VIRTIO, RING, FUSE],
}
MODULES_DEP = "".join(f"{target}: {' '.join(deps)}\n" for target, deps in DEPS.items())


def names(paths):
    return [module_name(path) for path in paths]


def test_module_names_treat_dash_and_underscore_alike():
    assert module_name("kernel/arch/x86/kvm/kvm-amd.ko.xz") == "kvm_amd"


def test_every_module_loads_after_its_dependencies():
    order = load_order(parse_modules_dep(MODULES_DEP), ("virtiofs", "kvm_amd"))
    assert sorted(names(order)) == sorted(
        ["virtio_ring", "virtio", "fuse", "virtiofs", "irqbypass", "kvm", "kvm_amd"]
    )
    for module in order:
        for dependency in DEPS[module]:
            assert order.index(dependency) < order.index(module)


def test_a_missing_module_is_a_setup_error():
    with pytest.raises(BoxSetupError, match="no module kvm_intel"):
        load_order(parse_modules_dep(MODULES_DEP), ("kvm_intel",))


@pytest.fixture
def kernel(tmp_path):
    modules_dir = tmp_path / "lib/modules/6.1.0-test"
    for line in MODULES_DEP.splitlines():
        path = modules_dir / line.split(":")[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x7fELF module " + path.name.encode())
    (modules_dir / "modules.dep").write_text(MODULES_DEP)
    bzimage = tmp_path / "bzImage"
    bzimage.write_bytes(b"kernel")
    return BoxKernel(bzimage, modules_dir)


def test_the_initramfs_holds_busybox_modules_and_init(kernel, tmp_path):
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"busybox binary")
    entries = {
        name: (mode, data)
        for name, mode, data in read_newc(
            build_initramfs(kernel, busybox, "/opt/python/bin/python3", Path("/tmp/b x/syms"))
        )
    }
    assert entries["bin/busybox"] == (stat.S_IFREG | 0o755, b"busybox binary")
    assert stat.S_ISCHR(entries["dev/console"][0])
    assert "lib/modules/kvm-amd.ko" in entries
    assert "lib/modules/virtio_console.ko" in entries
    init = entries["init"][1].decode()
    assert init.index("insmod") < init.index("mount -t virtiofs host /host")
    assert f"chroot /host /opt/python/bin/python3 -E -s -S {AGENT_SCRIPT.resolve()}" in init
    for mount in ("proc proc /host/proc", "sysfs sysfs /host/sys", "devtmpfs devtmpfs /host/dev"):
        assert mount in init
    # The kernel's symbols go to the host path asked for, in the background, before the agent.
    copy = "grep -i ' t ' /proc/kallsyms >'/host/tmp/b x/syms') &"
    assert init.index("mount -t virtiofs") < init.index(copy) < init.index("chroot /host")


def test_the_kernel_check_names_what_is_missing(tmp_path):
    with pytest.raises(BoxSetupError, match="does not exist"):
        BoxKernel(tmp_path / "nope", tmp_path).check()


def test_a_dynamically_linked_program_is_not_a_static_busybox(tmp_path):
    assert not is_static_elf(__import__("pathlib").Path(sys.executable).resolve())
    not_elf = tmp_path / "script"
    not_elf.write_text("#!/bin/sh\n")
    assert not is_static_elf(not_elf)
