"""ioctl numbers and constants of the KVM API (include/uapi/linux/kvm.h)."""

from __future__ import annotations

import ctypes as C

from pcivm.kvm import structs as S

_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2
KVMIO = 0xAE


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _iow(nr: int, struct: type) -> int:
    return _ioc(_IOC_WRITE, nr, C.sizeof(struct))


def _ior(nr: int, struct: type) -> int:
    return _ioc(_IOC_READ, nr, C.sizeof(struct))


def _iowr(nr: int, struct: type) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, C.sizeof(struct))


# /dev/kvm
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, S.kvm_cpuid2_header)
# VM
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, S.kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _io(0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(0x48, C.c_uint64)
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_IRQ_LINE = _iow(0x61, S.kvm_irq_level)
KVM_GET_IRQCHIP = _iowr(0x62, S.kvm_irqchip)
KVM_REGISTER_COALESCED_MMIO = _iow(0x67, S.kvm_coalesced_mmio_zone)
KVM_SET_GSI_ROUTING = _iow(0x6A, S.kvm_irq_routing_header)
KVM_IRQFD = _iow(0x76, S.kvm_irqfd)
KVM_CREATE_PIT2 = _iow(0x77, S.kvm_pit_config)
KVM_IOEVENTFD = _iow(0x79, S.kvm_ioeventfd)
KVM_SIGNAL_MSI = _iow(0xA5, S.kvm_msi)
KVM_ENABLE_CAP = _iow(0xA3, S.kvm_enable_cap)
# vCPU
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, S.kvm_regs)
KVM_SET_REGS = _iow(0x82, S.kvm_regs)
KVM_GET_SREGS = _ior(0x83, S.kvm_sregs)
KVM_SET_SREGS = _iow(0x84, S.kvm_sregs)
KVM_GET_MSRS = _iowr(0x88, S.kvm_msrs_header)
KVM_SET_MSRS = _iow(0x89, S.kvm_msrs_header)
KVM_GET_FPU = _ior(0x8C, S.kvm_fpu)
KVM_SET_FPU = _iow(0x8D, S.kvm_fpu)
KVM_GET_LAPIC = _ior(0x8E, S.kvm_lapic_state)
KVM_SET_LAPIC = _iow(0x8F, S.kvm_lapic_state)
KVM_SET_CPUID2 = _iow(0x90, S.kvm_cpuid2_header)
KVM_GET_TSC_KHZ = _io(0xA3)

KVM_API_VERSION = 12

# Capabilities (KVM_CHECK_EXTENSION)
KVM_CAP_IRQCHIP = 0
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_COALESCED_MMIO = 15
KVM_CAP_SET_IDENTITY_MAP_ADDR = 37
KVM_CAP_IRQ_ROUTING = 25
KVM_CAP_IRQFD = 32
KVM_CAP_PIT2 = 33
KVM_CAP_IOEVENTFD = 36
KVM_CAP_TSC_DEADLINE_TIMER = 72
KVM_CAP_SIGNAL_MSI = 77
KVM_CAP_COALESCED_PIO = 162

# Exit reasons (kvm_run.exit_reason)
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3

KVM_PIT_SPEAKER_DUMMY = 1

KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2

KVM_IRQFD_FLAG_DEASSIGN = 1 << 0
KVM_IRQFD_FLAG_RESAMPLE = 1 << 1

KVM_IRQ_ROUTING_IRQCHIP = 1
KVM_IRQ_ROUTING_MSI = 2
KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2

# The page of the vCPU mapping that holds the coalesced MMIO/PIO ring (x86).
KVM_COALESCED_MMIO_PAGE_OFFSET = 1
