"""The box's initramfs: busybox, the kernel modules the box needs, and /init.

/init loads the modules, mounts the host's / (virtiofs) at /host with fresh proc, sysfs,
devtmpfs, devpts and tmpfs mounts inside it, and chroots there to run the agent with the
host's own Python: inside the chroot every host path is where the host has it.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from pcivm.box.cpio import CpioWriter
from pcivm.box.kernel import BOX_MODULES, BoxKernel, load_order, module_bytes, parse_modules_dep
from pcivm.box.qemu import FS_TAG

AGENT_SCRIPT = Path(__file__).with_name("agent.py")

INIT_TEMPLATE = """\
#!/bin/busybox sh
bb=/bin/busybox
fail() {{
    echo "pcivm-box-init: $*" >/dev/console
    $bb poweroff -f
}}
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
# Huge pages only when free ones are at hand: compaction on demand stalled the box's
# kernel for minutes after a series of VM boots (a soft lockup on a 2-core host).
echo never >/sys/kernel/mm/transparent_hugepage/defrag 2>/dev/null
for module in {modules}; do
    $bb insmod "/lib/modules/$module" || fail "cannot load $module"
done
$bb mount -t virtiofs {tag} /host || fail "cannot mount the host's filesystem"
$bb mount -t proc proc /host/proc || fail "cannot mount /host/proc"
$bb mount -t sysfs sysfs /host/sys || fail "cannot mount /host/sys"
$bb mount -t devtmpfs devtmpfs /host/dev || fail "cannot mount /host/dev"
$bb mkdir -p /host/dev/pts /host/dev/shm
$bb mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /host/dev/pts
$bb mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm
# /run holds the host's sockets and pid files, which mean nothing in the box.
[ -d /host/run ] && $bb mount -t tmpfs -o mode=755 tmpfs /host/run
# From here on the console shows the kernel's informational lines too: the stacks of
# hung tasks and soft lockups (printed at KERN_INFO) are what a stuck box leaves behind.
echo 7 >/proc/sys/kernel/printk
# The kernel's text symbols, for naming where the CPUs of a box that stops answering are
# (Debian's System.map is a stub); copied beside the box's logs while the agent starts.
{symbols_line}
[ -e /dev/kvm ] || echo "pcivm-box-init: no /dev/kvm (is SVM missing from the CPU?)" >/dev/console
exec $bb chroot /host {python} -E -s -S {agent}
"""


def _file_name(module_path: str) -> str:
    # Compressed modules are stored unpacked (see kernel.module_bytes).
    return Path(module_path).name.removesuffix(".xz")


def init_script(modules: list[str], python: str, agent: Path, symbols: Path | None = None) -> str:
    symbols_line = ":"
    if symbols is not None:
        target = shlex.quote(f"/host{symbols}")
        symbols_line = f"($bb grep -i ' t ' /proc/kallsyms >{target}) &"
    return INIT_TEMPLATE.format(
        modules=" ".join(shlex.quote(_file_name(m)) for m in modules),
        tag=FS_TAG,
        python=shlex.quote(python),
        agent=shlex.quote(str(agent)),
        symbols_line=symbols_line,
    )


def build_initramfs(
    kernel: BoxKernel, busybox: Path, python: str, symbols: Path | None = None
) -> bytes:
    """The archive for `kernel`; `python` is the host interpreter that runs the agent,
    `symbols` a host path where the box writes its kernel's text symbols."""
    deps = parse_modules_dep((kernel.modules_dir / "modules.dep").read_text())
    modules = load_order(deps, BOX_MODULES)
    cpio = CpioWriter()
    for directory in ("bin", "dev", "proc", "sys", "host", "lib", "lib/modules"):
        cpio.directory(directory)
    # The kernel opens /dev/console for init's stdin/stdout/stderr before devtmpfs exists.
    cpio.char_device("dev/console", 5, 1)
    cpio.char_device("dev/null", 1, 3, mode=0o666)
    cpio.file("bin/busybox", busybox.read_bytes(), mode=0o755)
    cpio.symlink("bin/sh", "busybox")
    for path in modules:
        cpio.file(f"lib/modules/{_file_name(path)}", module_bytes(kernel.modules_dir, path))
    script = init_script(modules, python, AGENT_SCRIPT.resolve(), symbols)
    cpio.file("init", script.encode(), mode=0o755)
    return cpio.getvalue()
