"""ctypes layouts of the KVM structures pcivm passes (include/uapi/linux/kvm.h, x86 asm/kvm.h).

Sizes are asserted at import: a wrong layout would corrupt the kernel's view silently.
"""

from __future__ import annotations

import ctypes as C

u8, u16, u32, u64, s32 = C.c_uint8, C.c_uint16, C.c_uint32, C.c_uint64, C.c_int32


class kvm_userspace_memory_region(C.Structure):
    _fields_ = [
        ("slot", u32),
        ("flags", u32),
        ("guest_phys_addr", u64),
        ("memory_size", u64),
        ("userspace_addr", u64),
    ]


class kvm_regs(C.Structure):
    _fields_ = [
        (name, u64)
        for name in (
            [
                "rax",
                "rbx",
                "rcx",
                "rdx",
                "rsi",
                "rdi",
                "rsp",
                "rbp",
                "r8",
                "r9",
                "r10",
                "r11",
                "r12",
                "r13",
                "r14",
                "r15",
                "rip",
                "rflags",
            ]
        )
    ]


class kvm_segment(C.Structure):
    _fields_ = [
        ("base", u64),
        ("limit", u32),
        ("selector", u16),
        ("type", u8),
        ("present", u8),
        ("dpl", u8),
        ("db", u8),
        ("s", u8),
        ("l", u8),
        ("g", u8),
        ("avl", u8),
        ("unusable", u8),
        ("padding", u8),
    ]


class kvm_dtable(C.Structure):
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


class kvm_sregs(C.Structure):
    _fields_ = [
        ("cs", kvm_segment),
        ("ds", kvm_segment),
        ("es", kvm_segment),
        ("fs", kvm_segment),
        ("gs", kvm_segment),
        ("ss", kvm_segment),
        ("tr", kvm_segment),
        ("ldt", kvm_segment),
        ("gdt", kvm_dtable),
        ("idt", kvm_dtable),
        ("cr0", u64),
        ("cr2", u64),
        ("cr3", u64),
        ("cr4", u64),
        ("cr8", u64),
        ("efer", u64),
        ("apic_base", u64),
        ("interrupt_bitmap", u64 * 4),
    ]


class kvm_fpu(C.Structure):
    _fields_ = [
        ("fpr", (u8 * 16) * 8),
        ("fcw", u16),
        ("fsw", u16),
        ("ftwx", u8),
        ("pad1", u8),
        ("last_opcode", u16),
        ("last_ip", u64),
        ("last_dp", u64),
        ("xmm", (u8 * 16) * 16),
        ("mxcsr", u32),
        ("pad2", u32),
    ]


class kvm_msr_entry(C.Structure):
    _fields_ = [("index", u32), ("reserved", u32), ("data", u64)]


class kvm_msrs_header(C.Structure):
    _fields_ = [("nmsrs", u32), ("pad", u32)]


def kvm_msrs(count: int) -> type[C.Structure]:
    """A kvm_msrs with room for `count` entries (the kernel reads a flexible array)."""

    class _kvm_msrs(C.Structure):
        _fields_ = [("nmsrs", u32), ("pad", u32), ("entries", kvm_msr_entry * count)]

    return _kvm_msrs


class kvm_cpuid_entry2(C.Structure):
    _fields_ = [
        ("function", u32),
        ("index", u32),
        ("flags", u32),
        ("eax", u32),
        ("ebx", u32),
        ("ecx", u32),
        ("edx", u32),
        ("padding", u32 * 3),
    ]


class kvm_cpuid2_header(C.Structure):
    _fields_ = [("nent", u32), ("padding", u32)]


def kvm_cpuid2(count: int) -> type[C.Structure]:
    class _kvm_cpuid2(C.Structure):
        _fields_ = [("nent", u32), ("padding", u32), ("entries", kvm_cpuid_entry2 * count)]

    return _kvm_cpuid2


class kvm_pit_config(C.Structure):
    _fields_ = [("flags", u32), ("pad", u32 * 15)]


class kvm_irq_level(C.Structure):
    _fields_ = [("irq", u32), ("level", u32)]


class kvm_lapic_state(C.Structure):
    _fields_ = [("regs", u8 * 1024)]


class kvm_ioeventfd(C.Structure):
    _fields_ = [
        ("datamatch", u64),
        ("addr", u64),
        ("len", u32),
        ("fd", s32),
        ("flags", u32),
        ("pad", u8 * 36),
    ]


class kvm_irqfd(C.Structure):
    _fields_ = [("fd", u32), ("gsi", u32), ("flags", u32), ("resamplefd", u32), ("pad", u8 * 16)]


class kvm_msi(C.Structure):
    _fields_ = [
        ("address_lo", u32),
        ("address_hi", u32),
        ("data", u32),
        ("flags", u32),
        ("devid", u32),
        ("pad", u8 * 12),
    ]


class kvm_coalesced_mmio_zone(C.Structure):
    # The last field is a union {pad, pio}; pio=1 makes the zone a port-IO range.
    _fields_ = [("addr", u64), ("size", u32), ("pio", u32)]


class kvm_coalesced_mmio(C.Structure):
    _fields_ = [("phys_addr", u64), ("len", u32), ("pio", u32), ("data", u8 * 8)]


class kvm_irq_routing_irqchip(C.Structure):
    _fields_ = [("irqchip", u32), ("pin", u32)]


class kvm_irq_routing_msi(C.Structure):
    _fields_ = [("address_lo", u32), ("address_hi", u32), ("data", u32), ("devid", u32)]


class _kvm_irq_routing_union(C.Union):
    _fields_ = [
        ("irqchip", kvm_irq_routing_irqchip),
        ("msi", kvm_irq_routing_msi),
        ("pad", u32 * 8),
    ]


class kvm_irq_routing_entry(C.Structure):
    _fields_ = [
        ("gsi", u32),
        ("type", u32),
        ("flags", u32),
        ("pad", u32),
        ("u", _kvm_irq_routing_union),
    ]


class kvm_irq_routing_header(C.Structure):
    _fields_ = [("nr", u32), ("flags", u32)]


def kvm_irq_routing(count: int) -> type[C.Structure]:
    class _kvm_irq_routing(C.Structure):
        _fields_ = [("nr", u32), ("flags", u32), ("entries", kvm_irq_routing_entry * count)]

    return _kvm_irq_routing


class kvm_ioapic_state(C.Structure):
    _fields_ = [
        ("base_address", u64),
        ("ioregsel", u32),
        ("id", u32),
        ("irr", u32),
        ("pad", u32),
        ("redirtbl", u64 * 24),
    ]


class kvm_irqchip(C.Structure):
    # chip_id then a 512-byte union of the PIC and IOAPIC states.
    _fields_ = [("chip_id", u32), ("pad", u32), ("state", u8 * 512)]


class kvm_enable_cap(C.Structure):
    _fields_ = [("cap", u32), ("flags", u32), ("args", u64 * 4), ("pad", u8 * 64)]


# The fixed part of struct kvm_run, up to the exit-reason union at offset 32.
class kvm_run_header(C.Structure):
    _fields_ = [
        ("request_interrupt_window", u8),
        ("immediate_exit", u8),
        ("padding1", u8 * 6),
        ("exit_reason", u32),
        ("ready_for_interrupt_injection", u8),
        ("if_flag", u8),
        ("flags", u16),
        ("cr8", u64),
        ("apic_base", u64),
    ]


class kvm_run_io(C.Structure):
    _fields_ = [
        ("direction", u8),
        ("size", u8),
        ("port", u16),
        ("count", u32),
        ("data_offset", u64),
    ]


class kvm_run_mmio(C.Structure):
    _fields_ = [("phys_addr", u64), ("data", u8 * 8), ("len", u32), ("is_write", u8)]


class kvm_run_internal(C.Structure):
    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class kvm_run_system_event(C.Structure):
    _fields_ = [("type", u32), ("ndata", u32), ("data", u64 * 16)]


class kvm_run_fail_entry(C.Structure):
    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


KVM_RUN_UNION_OFFSET = 32

_EXPECTED_SIZES = {
    kvm_userspace_memory_region: 32,
    kvm_regs: 144,
    kvm_segment: 24,
    kvm_sregs: 312,
    kvm_fpu: 416,
    kvm_msr_entry: 16,
    kvm_cpuid_entry2: 40,
    kvm_pit_config: 64,
    kvm_irq_level: 8,
    kvm_lapic_state: 1024,
    kvm_ioeventfd: 64,
    kvm_irqfd: 32,
    kvm_msi: 32,
    kvm_coalesced_mmio_zone: 16,
    kvm_coalesced_mmio: 24,
    kvm_irq_routing_entry: 48,
    kvm_enable_cap: 104,
    kvm_irqchip: 520,
    kvm_run_header: KVM_RUN_UNION_OFFSET,
}
for _struct, _size in _EXPECTED_SIZES.items():
    assert C.sizeof(_struct) == _size, (_struct.__name__, C.sizeof(_struct), _size)


def ctypes_copy(dst: C.Structure, src: C.Structure) -> None:
    """Copy one ctypes structure's bytes into another of the same type."""
    C.memmove(C.addressof(dst), C.addressof(src), C.sizeof(dst))
