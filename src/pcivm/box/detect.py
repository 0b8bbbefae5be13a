"""What kind of KVM the host offers: hardware-assisted, PVM, or none at all.

A PVM /dev/kvm (the kvm_pvm module) runs guest kernel code by emulation, so an
unmodified kernel cannot boot on it; only a host whose CPU shows vmx or svm and whose
/dev/kvm opens gives pcivm what it needs. Paths are parameters so tests can fake a host.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HARDWARE = "hardware"
PVM = "pvm"
ABSENT = "absent"


@dataclass(frozen=True)
class KvmKind:
    kind: str  # HARDWARE, PVM or ABSENT
    reason: str  # one human sentence saying why

    @property
    def hardware_assisted(self) -> bool:
        return self.kind == HARDWARE

    def __str__(self) -> str:
        return f"{self.kind} ({self.reason})"


def cpu_virt_flags(cpuinfo_text: str) -> set[str]:
    """The hardware virtualization flags (vmx, svm) named on any `flags` line."""
    found: set[str] = set()
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            found |= {"vmx", "svm"} & set(value.split())
    return found


def host_kvm_kind(
    cpuinfo: Path = Path("/proc/cpuinfo"),
    sys_module: Path = Path("/sys/module"),
    dev_kvm: Path = Path("/dev/kvm"),
) -> KvmKind:
    if (sys_module / "kvm_pvm").exists():
        return KvmKind(PVM, "the kvm_pvm module provides /dev/kvm (guest kernel code is emulated)")
    try:
        flags = cpu_virt_flags(cpuinfo.read_text())
    except OSError as exc:
        return KvmKind(ABSENT, f"cannot read {cpuinfo}: {exc.strerror}")
    if not flags:
        return KvmKind(ABSENT, "the CPU shows neither vmx nor svm")
    if not dev_kvm.exists():
        return KvmKind(ABSENT, f"the CPU has {_names(flags)} but {dev_kvm} does not exist")
    try:
        fd = os.open(dev_kvm, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return KvmKind(ABSENT, f"{dev_kvm} cannot be opened: {exc.strerror}")
    os.close(fd)
    return KvmKind(HARDWARE, f"the CPU has {_names(flags)} and {dev_kvm} opens")


def _names(flags: set[str]) -> str:
    return "/".join(sorted(flags))
