"""Run a virtual machine from QEMU-style options."""

from __future__ import annotations

from pcivm.errors import UsageError


def run_vm(argv: list[str]) -> int:
    raise UsageError("running a VM is not implemented yet")
