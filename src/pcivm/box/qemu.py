"""The command lines of the box machine: virtiofsd sharing the host's / and QEMU.

Pure functions of a `MachineConfig` and paths, so the choices are visible and testable:
- TCG with `-cpu max` is what gives the box an (emulated) AMD SVM, hence kvm_amd;
- virtiofs needs guest RAM in a shared memory backend (memfd, share=on) so virtiofsd
  can map it;
- cache=none makes every access go to the host: a file the host writes is what the box
  reads next, and the reverse, at the price of no page cache in the box (see docs/box.md);
- the serial console goes to a file, never to the command's stdout.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

QEMU_BINARY = "qemu-system-x86_64"
VIRTIOFSD_CANDIDATES = ("/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd")
FS_TAG = "host"
CONTROL_PORT_NAME = "pcivm.box"
CACHE_MODES = ("none", "auto")


@dataclass(frozen=True)
class MachineConfig:
    memory_mib: int = 4096
    cpus: int = 2
    cache: str = "none"  # virtiofsd's cache mode, one of CACHE_MODES
    # How long the box may trust a file's attributes and a name lookup. 0: every stat and
    # open asks the host, so a file the host just created, grew or removed is seen as such.
    metadata_timeout: float = 0.0
    sandbox: str = "chroot"  # virtiofsd's sandbox: chroot | namespace
    shared_dir: str = "/"
    qemu: str | None = None  # None: QEMU_BINARY on PATH
    virtiofsd: str | None = None  # None: the first of VIRTIOFSD_CANDIDATES that exists


def kernel_cmdline() -> str:
    return " ".join(
        [
            "console=ttyS0",
            "panic=-1",  # a panic ends QEMU (with -no-reboot) instead of hanging the host
            "rdinit=/init",
            "8250.nr_uarts=1",
            "loglevel=4",
            # The box has no disk and needs no entropy wait; the CPU's RDRAND is enough.
            "random.trust_cpu=on",
        ]
    )


def virtiofsd_argv(virtiofsd: str, socket_path: Path, config: MachineConfig) -> list[str]:
    return [
        virtiofsd,
        f"--socket-path={socket_path}",
        "-o",
        f"source={config.shared_dir}",
        "-o",
        f"cache={config.cache}",
        "-o",
        f"timeout={config.metadata_timeout:g}",
        "-o",
        f"sandbox={config.sandbox}",
        # Host mounts below / (/dev, /proc, /tmp...) get their own device numbers in the
        # box, so inode numbers of different host filesystems never collide.
        "-o",
        "announce_submounts",
        "-o",
        "xattr",
        "-o",
        "log_level=warn",
    ]


def qemu_argv(
    qemu: str,
    kernel: Path,
    initrd: Path,
    console_log: Path,
    fs_socket: Path,
    control_socket: Path,
    config: MachineConfig,
    monitor_socket: Path | None = None,
) -> list[str]:
    memory = f"{config.memory_mib}M"
    return [
        qemu,
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-smp",
        str(config.cpus),
        "-m",
        memory,
        "-object",
        f"memory-backend-memfd,id=mem,size={memory},share=on",
        "-machine",
        "q35,memory-backend=mem",
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display",
        "none",
        "-nic",
        "none",
        "-kernel",
        str(kernel),
        "-initrd",
        str(initrd),
        "-append",
        kernel_cmdline(),
        "-serial",
        f"file:{console_log}",
        "-chardev",
        f"socket,id=fs,path={fs_socket}",
        "-device",
        f"vhost-user-fs-pci,chardev=fs,tag={FS_TAG}",
        "-device",
        "virtio-serial-pci",
        "-chardev",
        f"socket,id=ctl,path={control_socket},server=on,wait=off",
        "-device",
        f"virtserialport,chardev=ctl,name={CONTROL_PORT_NAME}",
    ] + (["-monitor", f"unix:{monitor_socket},server=on,wait=off"] if monitor_socket else [])


def find_qemu(config: MachineConfig) -> str | None:
    return shutil.which(config.qemu or QEMU_BINARY)


def find_virtiofsd(config: MachineConfig) -> str | None:
    candidates = [config.virtiofsd] if config.virtiofsd else list(VIRTIOFSD_CANDIDATES)
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    return None
