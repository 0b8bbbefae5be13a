"""Thin objects over the KVM file descriptors: the system, one VM, one vCPU.

Every call is one ioctl; nothing here knows what a UART or a PCI device is. Errors from the
kernel surface as OSError, except where a caller can act on them (see `KvmUnavailable`).
"""

from __future__ import annotations

import ctypes as C
import errno
import fcntl
import mmap
import os
from dataclasses import dataclass

from pcivm.kvm import numbers as N
from pcivm.kvm import structs as S

KVM_DEVICE = "/dev/kvm"


class KvmUnavailable(Exception):
    """/dev/kvm is absent, not permitted, or too old; the message names the reason."""


def _ioctl_ptr(fd: int, request: int, obj: C.Structure | C.Array) -> int:
    """ioctl with a pointer to a ctypes object that the kernel reads and/or fills in place."""
    return fcntl.ioctl(fd, request, obj, True)


def _ioctl_int(fd: int, request: int, arg: int = 0) -> int:
    """ioctl with a plain integer argument.

    fcntl.ioctl takes a C int, so values of 2**31 and above (addresses below 4 GiB such as
    the TSS at 0xfffbd000) go through libc instead of overflowing.
    """
    if 0 <= arg < 2**31:
        return fcntl.ioctl(fd, request, arg)
    ret = _libc.ioctl(fd, C.c_ulong(request), C.c_ulong(arg))
    if ret < 0:
        err = C.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


_libc = C.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [C.c_int, C.c_ulong, C.c_ulong]
_libc.ioctl.restype = C.c_int


class Kvm:
    """/dev/kvm: API version, capabilities, the CPUID the host supports."""

    def __init__(self, path: str | None = None):
        path = path or KVM_DEVICE
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise KvmUnavailable(f"{path} does not exist (no KVM on this host)") from exc
        except PermissionError as exc:
            raise KvmUnavailable(f"{path}: permission denied") from exc
        except OSError as exc:
            raise KvmUnavailable(f"{path}: {exc.strerror}") from exc
        try:
            version = _ioctl_int(self.fd, N.KVM_GET_API_VERSION)
        except OSError as exc:
            os.close(self.fd)
            raise KvmUnavailable(f"{path} is not a KVM device ({exc.strerror})") from exc
        if version != N.KVM_API_VERSION:
            os.close(self.fd)
            raise KvmUnavailable(f"{path}: KVM API version {version}, need {N.KVM_API_VERSION}")
        self.path = path

    def check_extension(self, cap: int) -> int:
        return _ioctl_int(self.fd, N.KVM_CHECK_EXTENSION, cap)

    def vcpu_mmap_size(self) -> int:
        return _ioctl_int(self.fd, N.KVM_GET_VCPU_MMAP_SIZE)

    def supported_cpuid(self) -> list[S.kvm_cpuid_entry2]:
        count = 128
        while True:
            buf = S.kvm_cpuid2(count)()
            buf.nent = count
            try:
                _ioctl_ptr(self.fd, N.KVM_GET_SUPPORTED_CPUID, buf)
            except OSError as exc:
                if exc.errno == errno.E2BIG and count < 4096:
                    count *= 2
                    continue
                raise
            return [buf.entries[i] for i in range(buf.nent)]

    def create_vm(self) -> VirtualMachine:
        return VirtualMachine(self, _ioctl_int(self.fd, N.KVM_CREATE_VM, 0))

    def close(self) -> None:
        os.close(self.fd)


@dataclass(frozen=True)
class MemorySlot:
    slot: int
    guest_phys_addr: int
    size: int
    host_addr: int


class VirtualMachine:
    """One KVM VM: memory slots, the in-kernel irqchip and PIT, interrupt lines and fds."""

    def __init__(self, kvm: Kvm, fd: int):
        self.kvm = kvm
        self.fd = fd
        self.slots: list[MemorySlot] = []

    def set_tss_addr(self, addr: int) -> None:
        _ioctl_int(self.fd, N.KVM_SET_TSS_ADDR, addr)

    def set_identity_map_addr(self, addr: int) -> None:
        _ioctl_ptr(self.fd, N.KVM_SET_IDENTITY_MAP_ADDR, C.c_uint64(addr))

    def add_memory(self, guest_phys_addr: int, size: int, host_addr: int) -> MemorySlot:
        region = S.kvm_userspace_memory_region(
            slot=len(self.slots),
            flags=0,
            guest_phys_addr=guest_phys_addr,
            memory_size=size,
            userspace_addr=host_addr,
        )
        _ioctl_ptr(self.fd, N.KVM_SET_USER_MEMORY_REGION, region)
        slot = MemorySlot(region.slot, guest_phys_addr, size, host_addr)
        self.slots.append(slot)
        return slot

    def create_irqchip(self) -> None:
        """The in-kernel 8259 pair, IOAPIC and per-vCPU LAPICs (GSI routing defaults set)."""
        _ioctl_int(self.fd, N.KVM_CREATE_IRQCHIP)

    def create_pit2(self) -> None:
        _ioctl_ptr(self.fd, N.KVM_CREATE_PIT2, S.kvm_pit_config(flags=N.KVM_PIT_SPEAKER_DUMMY))

    def set_irq_line(self, irq: int, level: int) -> None:
        _ioctl_ptr(self.fd, N.KVM_IRQ_LINE, S.kvm_irq_level(irq=irq, level=level))

    def ioapic_state(self) -> S.kvm_ioapic_state:
        chip = S.kvm_irqchip(chip_id=N.KVM_IRQCHIP_IOAPIC)
        _ioctl_ptr(self.fd, N.KVM_GET_IRQCHIP, chip)
        return S.kvm_ioapic_state.from_buffer_copy(
            bytes(chip.state)[: C.sizeof(S.kvm_ioapic_state)]
        )

    def register_coalesced_pio(self, port: int, size: int) -> None:
        zone = S.kvm_coalesced_mmio_zone(addr=port, size=size, pio=1)
        _ioctl_ptr(self.fd, N.KVM_REGISTER_COALESCED_MMIO, zone)

    def ioeventfd(
        self,
        fd: int,
        addr: int,
        length: int,
        *,
        pio: bool,
        datamatch: int | None = None,
        deassign: bool = False,
    ) -> None:
        flags = N.KVM_IOEVENTFD_FLAG_PIO if pio else 0
        if datamatch is not None:
            flags |= N.KVM_IOEVENTFD_FLAG_DATAMATCH
        if deassign:
            flags |= N.KVM_IOEVENTFD_FLAG_DEASSIGN
        req = S.kvm_ioeventfd(datamatch=datamatch or 0, addr=addr, len=length, fd=fd, flags=flags)
        _ioctl_ptr(self.fd, N.KVM_IOEVENTFD, req)

    def irqfd(self, fd: int, gsi: int, *, deassign: bool = False, resample_fd: int = -1) -> None:
        flags = N.KVM_IRQFD_FLAG_DEASSIGN if deassign else 0
        resample = 0
        if resample_fd >= 0:
            flags |= N.KVM_IRQFD_FLAG_RESAMPLE
            resample = resample_fd
        _ioctl_ptr(
            self.fd, N.KVM_IRQFD, S.kvm_irqfd(fd=fd, gsi=gsi, flags=flags, resamplefd=resample)
        )

    def signal_msi(self, address: int, data: int) -> int:
        msi = S.kvm_msi(address_lo=address & 0xFFFFFFFF, address_hi=address >> 32, data=data)
        return _ioctl_ptr(self.fd, N.KVM_SIGNAL_MSI, msi)

    def set_gsi_routing(self, entries: list[S.kvm_irq_routing_entry]) -> None:
        table = S.kvm_irq_routing(len(entries))()
        table.nr = len(entries)
        for i, entry in enumerate(entries):
            table.entries[i] = entry
        _ioctl_ptr(self.fd, N.KVM_SET_GSI_ROUTING, table)

    def create_vcpu(self, index: int) -> Vcpu:
        fd = _ioctl_int(self.fd, N.KVM_CREATE_VCPU, index)
        return Vcpu(self, index, fd)

    def close(self) -> None:
        os.close(self.fd)


class Vcpu:
    """One vCPU: its registers and the shared kvm_run page the exits are read from."""

    def __init__(self, vm: VirtualMachine, index: int, fd: int):
        self.vm = vm
        self.index = index
        self.fd = fd
        size = vm.kvm.vcpu_mmap_size()
        self.run_map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.run_header = S.kvm_run_header.from_buffer(self.run_map)
        self.io = S.kvm_run_io.from_buffer(self.run_map, S.KVM_RUN_UNION_OFFSET)
        self.mmio = S.kvm_run_mmio.from_buffer(self.run_map, S.KVM_RUN_UNION_OFFSET)
        self.internal = S.kvm_run_internal.from_buffer(self.run_map, S.KVM_RUN_UNION_OFFSET)
        self.system_event = S.kvm_run_system_event.from_buffer(self.run_map, S.KVM_RUN_UNION_OFFSET)
        self.fail_entry = S.kvm_run_fail_entry.from_buffer(self.run_map, S.KVM_RUN_UNION_OFFSET)

    def run(self) -> int:
        """Enter the guest until the next exit; returns kvm_run.exit_reason.

        Raises InterruptedError when a signal kicked the thread out (fcntl.ioctl does not
        retry KVM_RUN).
        """
        fcntl.ioctl(self.fd, N.KVM_RUN, 0)
        return self.run_header.exit_reason

    def get_regs(self) -> S.kvm_regs:
        regs = S.kvm_regs()
        _ioctl_ptr(self.fd, N.KVM_GET_REGS, regs)
        return regs

    def set_regs(self, regs: S.kvm_regs) -> None:
        _ioctl_ptr(self.fd, N.KVM_SET_REGS, regs)

    def get_sregs(self) -> S.kvm_sregs:
        sregs = S.kvm_sregs()
        _ioctl_ptr(self.fd, N.KVM_GET_SREGS, sregs)
        return sregs

    def set_sregs(self, sregs: S.kvm_sregs) -> None:
        _ioctl_ptr(self.fd, N.KVM_SET_SREGS, sregs)

    def set_fpu(self, fpu: S.kvm_fpu) -> None:
        _ioctl_ptr(self.fd, N.KVM_SET_FPU, fpu)

    def set_cpuid(self, entries: list[S.kvm_cpuid_entry2]) -> None:
        table = S.kvm_cpuid2(len(entries))()
        table.nent = len(entries)
        for i, entry in enumerate(entries):
            table.entries[i] = entry
        _ioctl_ptr(self.fd, N.KVM_SET_CPUID2, table)

    def set_msrs(self, msrs: dict[int, int]) -> None:
        table = S.kvm_msrs(len(msrs))()
        table.nmsrs = len(msrs)
        for i, (index, value) in enumerate(msrs.items()):
            table.entries[i].index = index
            table.entries[i].data = value
        written = _ioctl_ptr(self.fd, N.KVM_SET_MSRS, table)
        if written != len(msrs):
            bad = list(msrs)[written]
            raise OSError(errno.EINVAL, f"KVM_SET_MSRS refused MSR {bad:#x}")

    def get_lapic(self) -> bytearray:
        state = S.kvm_lapic_state()
        _ioctl_ptr(self.fd, N.KVM_GET_LAPIC, state)
        return bytearray(state.regs)

    def set_lapic(self, regs: bytes) -> None:
        state = S.kvm_lapic_state()
        C.memmove(state.regs, bytes(regs), len(regs))
        _ioctl_ptr(self.fd, N.KVM_SET_LAPIC, state)

    def tsc_khz(self) -> int:
        return _ioctl_int(self.fd, N.KVM_GET_TSC_KHZ)

    def close(self) -> None:
        for view in (
            "run_header",
            "io",
            "mmio",
            "internal",
            "system_event",
            "fail_entry",
        ):
            setattr(self, view, None)
        self.run_map.close()
        os.close(self.fd)
