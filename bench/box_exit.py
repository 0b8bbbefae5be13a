"""The cost of one KVM IO exit seen from Python: KVM_RUN -> `out` -> back in Python.

A one-vCPU VM in real mode runs `out dx, al; jmp $-3` forever; every KVM_RUN returns
with KVM_EXIT_IO at once, so the time per KVM_RUN is the round trip of an IO exit
through the kernel and the Python VMM loop (fcntl.ioctl), with nothing else in it.

    pcivm box -- .venv/bin/python bench/box_exit.py          # where pcivm's tests run
    .venv/bin/python bench/box_exit.py                       # this host's own /dev/kvm

Standard library only (ctypes, fcntl, mmap): it runs with any Python, in or out of the box.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import mmap
import os
import statistics
import struct
import time

KVMIO = 0xAE


def _io(nr: int) -> int:
    return (KVMIO << 8) | nr


def _iow(nr: int, size: int) -> int:
    return (1 << 30) | (size << 16) | (KVMIO << 8) | nr


def _ior(nr: int, size: int) -> int:
    return (2 << 30) | (size << 16) | (KVMIO << 8) | nr


KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_CREATE_VCPU = _io(0x41)
KVM_RUN = _io(0x80)
USERSPACE_MEMORY_REGION = struct.Struct("=IIQQQ")  # slot, flags, gpa, size, host address
KVM_SET_USER_MEMORY_REGION = _iow(0x46, USERSPACE_MEMORY_REGION.size)
REGS_SIZE = 18 * 8  # struct kvm_regs: 16 GPRs, rip, rflags
KVM_SET_REGS = _iow(0x82, REGS_SIZE)
SREGS_SIZE = 312  # struct kvm_sregs
KVM_GET_SREGS = _ior(0x83, SREGS_SIZE)
KVM_SET_SREGS = _iow(0x84, SREGS_SIZE)
KVM_EXIT_IO = 2
KVM_API_VERSION = 12

GUEST_MEMORY = 0x10000
CODE_ADDRESS = 0x1000
PORT = 0x80
LOOP_CODE = bytes([0xEE, 0xEB, 0xFD])  # out dx, al ; jmp short back to the out


class IoExitVm:
    def __init__(self) -> None:
        self.kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        version = fcntl.ioctl(self.kvm, KVM_GET_API_VERSION, 0)
        if version != KVM_API_VERSION:
            raise SystemExit(f"unexpected KVM API version {version}")
        self.vm = fcntl.ioctl(self.kvm, KVM_CREATE_VM, 0)
        self.memory = mmap.mmap(-1, GUEST_MEMORY)
        self.memory[CODE_ADDRESS : CODE_ADDRESS + len(LOOP_CODE)] = LOOP_CODE
        address = ctypes.addressof(ctypes.c_char.from_buffer(self.memory))
        region = USERSPACE_MEMORY_REGION.pack(0, 0, 0, GUEST_MEMORY, address)
        fcntl.ioctl(self.vm, KVM_SET_USER_MEMORY_REGION, region)
        self.vcpu = fcntl.ioctl(self.vm, KVM_CREATE_VCPU, 0)
        run_size = fcntl.ioctl(self.kvm, KVM_GET_VCPU_MMAP_SIZE, 0)
        self.run_page = mmap.mmap(self.vcpu, run_size, mmap.MAP_SHARED, mmap.PROT_READ)
        self._enter_real_mode_at(CODE_ADDRESS)

    def _enter_real_mode_at(self, address: int) -> None:
        sregs = bytearray(fcntl.ioctl(self.vcpu, KVM_GET_SREGS, bytes(SREGS_SIZE)))
        # sregs starts with cs: u64 base, u32 limit, u16 selector. Flat segment at 0.
        struct.pack_into("=QIH", sregs, 0, 0, 0xFFFF, 0)
        fcntl.ioctl(self.vcpu, KVM_SET_SREGS, bytes(sregs))
        regs = [0] * 18
        regs[3] = PORT  # rdx
        regs[16] = address  # rip
        regs[17] = 0x2  # rflags: the always-one bit
        fcntl.ioctl(self.vcpu, KVM_SET_REGS, struct.pack("=18Q", *regs))

    def run(self, exits: int) -> float:
        """Seconds per KVM_RUN over `exits` IO exits."""
        vcpu = self.vcpu
        run_page = self.run_page
        ioctl = fcntl.ioctl
        started = time.perf_counter()
        for _ in range(exits):
            ioctl(vcpu, KVM_RUN, 0)
        elapsed = time.perf_counter() - started
        reason = struct.unpack_from("=I", run_page, 8)[0]  # kvm_run.exit_reason
        if reason != KVM_EXIT_IO:
            raise SystemExit(f"the VM exited with reason {reason}, not KVM_EXIT_IO")
        return elapsed / exits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exits", type=int, default=5000, help="IO exits per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    vm = IoExitVm()
    vm.run(100)  # warm up: first entries fault in the guest page and the VMCB/VMCS
    times_us = [vm.run(args.exits) * 1e6 for _ in range(args.rounds)]
    print(
        f"KVM IO exit round trip from Python: median {statistics.median(times_us):.1f} µs"
        f" (min {min(times_us):.1f}, max {max(times_us):.1f};"
        f" {args.rounds} rounds of {args.exits} exits)"
    )


if __name__ == "__main__":
    main()
