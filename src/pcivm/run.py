"""Run a virtual machine from QEMU-style options."""

from __future__ import annotations

from pcivm.options import parse_options


def run_vm(argv: list[str]) -> int:
    spec = parse_options(argv)
    # The -device list is checked before any file is read or /dev/kvm is opened, as QEMU
    # checks its devices first: a bad device is the error the user sees.
    from pcivm.pci.topology import build_topology

    build_topology(spec.machine, spec.devices, spec.drives)
    from pcivm.vmm import run_spec

    return run_spec(spec)
