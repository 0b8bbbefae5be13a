"""The CPUID a vCPU is given: what KVM supports, adjusted the way a PC VMM must."""

from __future__ import annotations

from pcivm.kvm import structs as S

# Leaf 1 ECX bits (Intel SDM vol. 2A, table 3-10).
CPUID_1_ECX_TSC_DEADLINE = 1 << 24
CPUID_1_ECX_XSAVE = 1 << 26
CPUID_1_ECX_OSXSAVE = 1 << 27
CPUID_1_ECX_AVX = 1 << 28
CPUID_1_ECX_HYPERVISOR = 1 << 31
CPUID_1_EDX_HTT = 1 << 28


def vcpu_cpuid(
    supported: list[S.kvm_cpuid_entry2],
    apic_id: int,
    vcpu_count: int,
    tsc_deadline: bool,
) -> list[S.kvm_cpuid_entry2]:
    """A copy of `supported` for the vCPU with `apic_id`.

    XSAVE and AVX are hidden as QEMU's default CPU model does: under nested SVM the guest's
    XSETBV is not intercepted and Linux reports an "XSAVE consistency problem".
    """
    entries = []
    for src in supported:
        e = S.kvm_cpuid_entry2()
        S.ctypes_copy(e, src)
        if e.function == 1:
            e.ebx = (e.ebx & 0x0000FFFF) | (apic_id << 24) | (max(vcpu_count, 1) << 16)
            e.ecx |= CPUID_1_ECX_HYPERVISOR
            e.ecx &= ~(CPUID_1_ECX_XSAVE | CPUID_1_ECX_OSXSAVE | CPUID_1_ECX_AVX)
            if tsc_deadline:
                e.ecx |= CPUID_1_ECX_TSC_DEADLINE
            if vcpu_count > 1:
                e.edx |= CPUID_1_EDX_HTT
        elif e.function == 7 and e.index == 0:
            # AVX2 and AVX-512 need the XSAVE state that is hidden above.
            e.ebx &= ~((1 << 5) | (1 << 16) | (1 << 17) | (1 << 21) | (0xF << 26) | (1 << 31))
        elif e.function in (0xB, 0x1F):
            e.edx = apic_id
        elif e.function == 0xD:
            continue
        entries.append(e)
    return entries
