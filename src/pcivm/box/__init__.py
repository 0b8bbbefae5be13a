"""Run commands where a hardware-assisted KVM exists.

On a host whose /dev/kvm is hardware-assisted, commands simply run on the host. Elsewhere
(a PVM-based /dev/kvm, or none) they run in a QEMU TCG machine whose emulated AMD SVM
lets `kvm_amd` provide a real /dev/kvm, with the host's filesystem mounted at the same
paths, so the same Python, venv and files are there.

This package knows nothing of the rest of pcivm: its caller supplies the kernel.
"""

from pcivm.box.api import open_box, start_runner
from pcivm.box.detect import KvmKind, host_kvm_kind
from pcivm.box.errors import (
    BoxDiedError,
    BoxError,
    BoxSetupError,
    BoxStartError,
    BoxTimeoutError,
)
from pcivm.box.kernel import BoxKernel
from pcivm.box.qemu import MachineConfig

__all__ = [
    "BoxDiedError",
    "BoxError",
    "BoxKernel",
    "BoxSetupError",
    "BoxStartError",
    "BoxTimeoutError",
    "KvmKind",
    "MachineConfig",
    "host_kvm_kind",
    "open_box",
    "start_runner",
]
