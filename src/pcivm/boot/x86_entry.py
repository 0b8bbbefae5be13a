"""The vCPU state the kernel's 64-bit entry expects (boot.rst, "64-bit Boot Protocol"):
long mode with identity-mapped page tables, a flat GDT with __BOOT_CS=0x10 and
__BOOT_DS=0x18, interrupts off, %rsi pointing at the zero page."""

from __future__ import annotations

import struct

from pcivm.kvm import structs as S
from pcivm.kvm.api import Vcpu
from pcivm.memory import GiB, GuestMemory

GDT_ADDR = 0x500
IDT_ADDR = 0x520
PML4_ADDR = 0x9000
PDPT_ADDR = 0xA000
PD_ADDR = 0xB000  # four page directories follow: 0xb000-0xefff map 4 GiB in 2 MiB pages
IDENTITY_MAPPED = 4 * GiB
BOOT_STACK = 0x8FF0

PAGE_PRESENT, PAGE_RW, PAGE_PS = 0x1, 0x2, 0x80

# GDT entries: null, null, code (0x10), data (0x18), TSS (0x20).
BOOT_CS, BOOT_DS, BOOT_TSS = 0x10, 0x18, 0x20
GDT = [
    0,
    0,
    0x00AF9B000000FFFF,  # 64-bit code, present, DPL0, readable, G=1, L=1
    0x00CF93000000FFFF,  # data, present, DPL0, writable, G=1, D/B=1
    0x008F8B000000FFFF,  # 32-bit busy TSS
]

X86_CR0_PE, X86_CR0_MP, X86_CR0_ET, X86_CR0_NE, X86_CR0_PG = 1, 2, 0x10, 0x20, 1 << 31
X86_CR4_PAE = 0x20
EFER_LME, EFER_LMA = 0x100, 0x400

MSR_IA32_TSC = 0x10
MSR_IA32_SYSENTER_CS = 0x174
MSR_IA32_SYSENTER_ESP = 0x175
MSR_IA32_SYSENTER_EIP = 0x176
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_MTRR_DEF_TYPE = 0x2FF
MSR_STAR = 0xC0000081
MSR_LSTAR = 0xC0000082
MSR_CSTAR = 0xC0000083
MSR_SYSCALL_MASK = 0xC0000084
MSR_KERNEL_GS_BASE = 0xC0000102
MISC_ENABLE_FAST_STRING = 1
# MTRRs enabled, default type write-back: otherwise the guest maps all RAM uncached.
MTRR_ENABLE = 1 << 11
MTRR_TYPE_WRBACK = 6

APIC_LVT_LINT0 = 0x350
APIC_LVT_LINT1 = 0x360
APIC_MODE_EXTINT = 0x7 << 8
APIC_MODE_NMI = 0x4 << 8


def write_boot_tables(memory: GuestMemory) -> None:
    """Page tables identity-mapping the first 4 GiB, and the boot GDT."""
    memory.write_u64(PML4_ADDR, PDPT_ADDR | PAGE_PRESENT | PAGE_RW)
    for gib in range(IDENTITY_MAPPED // GiB):
        pd = PD_ADDR + gib * 0x1000
        memory.write_u64(PDPT_ADDR + 8 * gib, pd | PAGE_PRESENT | PAGE_RW)
        entries = b"".join(
            struct.pack("<Q", (gib * GiB + i * 0x200000) | PAGE_PRESENT | PAGE_RW | PAGE_PS)
            for i in range(512)
        )
        memory.write(pd, entries)
    memory.write(GDT_ADDR, b"".join(struct.pack("<Q", e) for e in GDT))
    memory.write(IDT_ADDR, bytes(8))


def _segment(selector: int, type_: int, *, code: bool, tss: bool = False) -> S.kvm_segment:
    return S.kvm_segment(
        base=0,
        limit=0xFFFFFFFF,
        selector=selector,
        type=type_,
        present=1,
        dpl=0,
        db=0 if code or tss else 1,
        s=0 if tss else 1,
        l=1 if code else 0,
        g=1,
    )


def set_entry_state(vcpu: Vcpu, entry: int, zero_page: int, boot_cpu: bool = True) -> None:
    """Registers for the 64-bit entry; application processors wait for INIT/SIPI instead."""
    sregs = vcpu.get_sregs()
    if boot_cpu:
        code = _segment(BOOT_CS, 0xB, code=True)
        data = _segment(BOOT_DS, 0x3, code=False)
        sregs.cs = code
        sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
        sregs.tr = _segment(BOOT_TSS, 0xB, code=False, tss=True)
        sregs.gdt.base, sregs.gdt.limit = GDT_ADDR, 8 * len(GDT) - 1
        sregs.idt.base, sregs.idt.limit = IDT_ADDR, 7
        sregs.cr0 = X86_CR0_PE | X86_CR0_MP | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG
        sregs.cr3 = PML4_ADDR
        sregs.cr4 = X86_CR4_PAE
        sregs.efer = EFER_LME | EFER_LMA
        vcpu.set_sregs(sregs)
        regs = S.kvm_regs()
        regs.rflags = 0x2
        regs.rip = entry
        regs.rsi = zero_page
        regs.rsp = regs.rbp = BOOT_STACK
        vcpu.set_regs(regs)
    fpu = S.kvm_fpu()
    fpu.fcw = 0x37F
    fpu.mxcsr = 0x1F80
    vcpu.set_fpu(fpu)
    vcpu.set_msrs(
        {
            MSR_IA32_SYSENTER_CS: 0,
            MSR_IA32_SYSENTER_ESP: 0,
            MSR_IA32_SYSENTER_EIP: 0,
            MSR_STAR: 0,
            MSR_CSTAR: 0,
            MSR_KERNEL_GS_BASE: 0,
            MSR_SYSCALL_MASK: 0,
            MSR_LSTAR: 0,
            MSR_IA32_TSC: 0,
            MSR_IA32_MISC_ENABLE: MISC_ENABLE_FAST_STRING,
            MSR_MTRR_DEF_TYPE: MTRR_ENABLE | MTRR_TYPE_WRBACK,
        }
    )
    # LINT0 takes the 8259's ExtINT, LINT1 the NMI: the wiring of a PC (MP spec 3.6.2).
    lapic = vcpu.get_lapic()
    for offset, mode in ((APIC_LVT_LINT0, APIC_MODE_EXTINT), (APIC_LVT_LINT1, APIC_MODE_NMI)):
        (value,) = struct.unpack_from("<I", lapic, offset)
        value = (value & ~0x700 & ~(1 << 16)) | mode
        struct.pack_into("<I", lapic, offset, value)
    vcpu.set_lapic(bytes(lapic))
