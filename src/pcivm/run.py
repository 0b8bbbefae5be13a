"""Run a virtual machine from QEMU-style options."""

from __future__ import annotations

from pcivm.options import parse_options


def run_vm(argv: list[str]) -> int:
    spec = parse_options(argv)
    from pcivm.vmm import run_spec

    return run_spec(spec)
