"""Runs a machine on KVM: creates the VM, loads the kernel, runs one thread per vCPU and
dispatches their exits to the platform's address spaces until the guest ends.

How the guest ended decides the exit status: power-off or reset -> 0; a triple fault or a
KVM failure -> non-zero with a one-line reason.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

from pcivm.boot.cpuid import vcpu_cpuid
from pcivm.boot.kernel_image import load_kernel_image
from pcivm.boot.x86_entry import set_entry_state, write_boot_tables
from pcivm.boot.zero_page import ZERO_PAGE_ADDR, load_kernel, open_initrd
from pcivm.console import SerialBackend
from pcivm.errors import HostError, PcivmError
from pcivm.ioevents import IoEventWorker
from pcivm.kvm import numbers as N
from pcivm.kvm.api import Kvm, KvmUnavailable, Vcpu, VirtualMachine
from pcivm.machine import POST_PORT, Platform, build_platform, e820_reserved
from pcivm.msi_routes import MsiRouter
from pcivm.pci.msix import message_capabilities
from pcivm.spec import VmSpec
from pcivm.thread_names import name_os_thread

log = logging.getLogger(__name__)

# Where KVM keeps the real-mode TSS and identity page table it needs on Intel (unused
# memory just below the 4 GiB boundary, as QEMU places them).
TSS_ADDR = 0xFFFBD000
IDENTITY_MAP_ADDR = 0xFFFBC000
KICK_SIGNAL = signal.SIGUSR1
# `kill -USR2 <pid>` prints the interrupt state: what a hung guest is waiting for.
DUMP_SIGNAL = signal.SIGUSR2
RFLAGS_IF = 1 << 9

EXIT_GUEST_FAULT = 2  # the guest crashed (triple fault) or KVM could not run it


class GuestFailure(PcivmError):
    exit_status = EXIT_GUEST_FAULT


@dataclass
class Outcome:
    status: int
    reason: str


class KvmIrqLines:
    """Interrupts into the in-kernel irqchip: lines of the IOAPIC/PIC, and MSI messages
    (through the vector's irqfd when it has one)."""

    def __init__(self, vm: VirtualMachine, msi: MsiRouter):
        self._vm = vm
        self._msi = msi

    def set_irq(self, irq: int, level: int) -> None:
        self._vm.set_irq_line(irq, level)

    def signal_msi(self, address: int, data: int) -> None:
        self._msi.signal_msi(address, data)


class Vmm:
    def __init__(self, spec: VmSpec):
        self.spec = spec
        self._outcome: Outcome | None = None
        self._done = threading.Event()
        self._threads: list[threading.Thread] = []
        self._vcpus: list[Vcpu] = []
        self.exit_counts: dict[str, int] = {}
        self.started = time.monotonic()
        self._vcpu_reports: dict[int, str] = {}
        self._report_wanted = threading.Event()
        self._vm: VirtualMachine | None = None
        self._io_workers: list[IoEventWorker] = []
        self._msi: MsiRouter | None = None
        self.platform: Platform | None = None

    # -- PowerEvents ----------------------------------------------------------------------

    def guest_poweroff(self, reason: str) -> None:
        self._finish(Outcome(0, f"guest powered off ({reason})"))

    def guest_reset(self, reason: str) -> None:
        # A reset ends the VMM, as a reboot ends a Firecracker microVM; -no-reboot (QEMU's
        # way of asking for exactly that) is accepted and means the same.
        self._finish(Outcome(0, f"guest reset ({reason})"))

    def _finish(self, outcome: Outcome) -> None:
        if self._outcome is None:
            self._outcome = outcome
        self._done.set()

    # -- setup ----------------------------------------------------------------------------

    def _open_kvm(self) -> Kvm:
        try:
            kvm = Kvm()
        except KvmUnavailable as exc:
            raise HostError(
                f"{exc}; run pcivm where a hardware-assisted KVM exists (pcivm box -- pcivm ...)"
            ) from None
        for cap, name in (
            (N.KVM_CAP_IRQCHIP, "in-kernel irqchip"),
            (N.KVM_CAP_PIT2, "in-kernel PIT"),
            (N.KVM_CAP_USER_MEMORY, "user memory"),
            (N.KVM_CAP_SET_TSS_ADDR, "TSS address"),
            (N.KVM_CAP_EXT_CPUID, "CPUID"),
        ):
            if not kvm.check_extension(cap):
                raise HostError(f"/dev/kvm lacks the {name} capability pcivm needs")
        return kvm

    def _build(self, serial: SerialBackend) -> tuple[Kvm, VirtualMachine, Platform]:
        spec = self.spec
        kernel = load_kernel_image(spec.kernel)
        if spec.initrd is not None:
            # Checked before anything is built; load_kernel reads it straight into RAM.
            os.close(open_initrd(spec.initrd))
        for drive in spec.drives:
            # Before anything else is built: a drive that cannot be opened is one line.
            mode = os.R_OK if drive.read_only else os.R_OK | os.W_OK
            if not os.path.exists(drive.file):
                raise PcivmError(
                    f"-drive file={drive.file}: Could not open '{drive.file}': "
                    "No such file or directory"
                )
            if not os.access(drive.file, mode):
                raise PcivmError(
                    f"-drive file={drive.file}: Could not open '{drive.file}': Permission denied"
                )
        kvm = self._open_kvm()
        vm = kvm.create_vm()
        self._vm = vm
        vm.set_tss_addr(TSS_ADDR)
        if kvm.check_extension(N.KVM_CAP_SET_IDENTITY_MAP_ADDR):
            vm.set_identity_map_addr(IDENTITY_MAP_ADDR)
        vm.create_irqchip()
        vm.create_pit2()
        self._msi = MsiRouter(vm)
        platform = build_platform(spec, KvmIrqLines(vm, self._msi), self, serial.write)
        self.platform = platform
        # Each MSI or MSI-X vector the guest unmasks gets a GSI route and an irqfd.
        for function in platform.topology.functions():
            for capability in message_capabilities(function):
                capability.on_vector_change = self._msi.listener(capability)
        # Queue kicks go to worker threads through ioeventfds, never the vCPU thread.
        for function in platform.topology.functions():
            if hasattr(function, "notify_addresses"):
                self._io_workers.append(IoEventWorker(vm, function))
        for region in platform.memory.regions:
            vm.add_memory(region.guest_phys_addr, region.size, platform.memory.host_address(region))
        if kvm.check_extension(N.KVM_CAP_COALESCED_PIO):
            # io_delay() writes to port 0x80 are ignored anyway: let KVM buffer them
            # instead of exiting for each one.
            vm.register_coalesced_pio(POST_PORT, 1)
        write_boot_tables(platform.memory)
        load_kernel(
            platform.memory,
            kernel,
            spec.initrd,
            spec.append,
            acpi_rsdp_addr=platform.acpi.rsdp_addr,
            e820_reserved=e820_reserved(spec),
        )
        supported = kvm.supported_cpuid()
        tsc_deadline = bool(kvm.check_extension(N.KVM_CAP_TSC_DEADLINE_TIMER))
        for index in range(spec.smp):
            vcpu = vm.create_vcpu(index)
            vcpu.set_cpuid(vcpu_cpuid(supported, index, spec.smp, tsc_deadline))
            set_entry_state(vcpu, kernel.entry, ZERO_PAGE_ADDR, boot_cpu=index == 0)
            self._vcpus.append(vcpu)
        return kvm, vm, platform

    # -- running --------------------------------------------------------------------------

    def run(self) -> int:
        serial = SerialBackend(self.spec.serial)
        previous_handlers = {}
        try:
            _kvm, _vm, platform = self._build(serial)
            self.platform = platform
            signal.signal(KICK_SIGNAL, lambda *_: None)
            previous_handlers[DUMP_SIGNAL] = signal.signal(
                DUMP_SIGNAL, lambda *_: threading.Thread(target=self.dump_state).start()
            )
            for sig in (signal.SIGTERM, signal.SIGHUP):
                previous_handlers[sig] = signal.signal(
                    sig, lambda s, _f: self._finish(Outcome(128 + s, f"killed by signal {s}"))
                )
            serial.start_input(platform.uart.receive, lambda: self._finish(Outcome(0, "quit")))
            for vcpu in self._vcpus:
                thread = threading.Thread(
                    target=self._vcpu_thread, args=(vcpu, platform), name=f"vcpu{vcpu.index}"
                )
                self._threads.append(thread)
                thread.start()
            while not self._done.wait(0.5):
                pass
        finally:
            if self._threads:
                self._finish(Outcome(70, "VMM stopped by an internal error"))
                self._stop_vcpus()
            serial.close()
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            self._release()
        outcome = self._outcome
        if self.spec.debug:
            self._print_exit_counts(platform)
        if outcome.status != 0 and outcome.reason:
            print(f"pcivm: {outcome.reason}", file=sys.stderr)
        else:
            log.info("%s", outcome.reason)
        return outcome.status

    def _release(self) -> None:
        """Close every KVM descriptor, so that a process can run VMs one after another."""
        for worker in self._io_workers:
            worker.close()
        self._io_workers.clear()
        if self.platform is not None:
            for function in self.platform.topology.functions():
                device = getattr(function, "device", None)
                close = getattr(device, "close", None)
                if close is not None:
                    close()
        for vcpu in self._vcpus:
            vcpu.close()
        self._vcpus.clear()
        if self._msi is not None:
            self._msi.close()
            self._msi = None
        if self._vm is not None:
            self._vm.close()
            self._vm.kvm.close()
            self._vm = None
        if self.platform is not None:
            self.platform.memory.close()

    def _stop_vcpus(self) -> None:
        for vcpu in self._vcpus:
            vcpu.run_header.immediate_exit = 1
        deadline = time.monotonic() + 5
        for thread, _vcpu in zip(self._threads, self._vcpus, strict=True):
            while thread.is_alive() and time.monotonic() < deadline:
                signal.pthread_kill(thread.ident, KICK_SIGNAL)
                thread.join(0.05)

    def _vcpu_thread(self, vcpu: Vcpu, platform: Platform) -> None:
        name_os_thread()
        try:
            self._vcpu_loop(vcpu, platform)
        except Exception as exc:  # a bug must end the VM, not leave it hung
            log.exception("vCPU %d failed", vcpu.index)
            self._finish(Outcome(70, f"internal error on vCPU {vcpu.index}: {exc!r}"))

    def _vcpu_loop(self, vcpu: Vcpu, platform: Platform) -> None:
        io_space, mmio_space = platform.io, platform.mmio
        run_map = vcpu.run_map
        io, mmio = vcpu.io, vcpu.mmio
        done = self._done
        while not done.is_set():
            try:
                reason = vcpu.run()
            except InterruptedError:
                if self._report_wanted.is_set():
                    self._vcpu_reports[vcpu.index] = self._describe_vcpu(vcpu)
                continue
            except BlockingIOError:
                # An application processor waiting for INIT/SIPI returns EAGAIN when an
                # event arrives; entering again lets KVM process it.
                continue
            if reason == N.KVM_EXIT_IO:
                port, size, count, offset = io.port, io.size, io.count, io.data_offset
                if io.direction == N.KVM_EXIT_IO_OUT:
                    for i in range(count):
                        start = offset + i * size
                        value = int.from_bytes(run_map[start : start + size], "little")
                        io_space.write(port, size, value)
                else:
                    for i in range(count):
                        start = offset + i * size
                        value = io_space.read(port, size)
                        run_map[start : start + size] = value.to_bytes(size, "little")
            elif reason == N.KVM_EXIT_MMIO:
                addr, length = mmio.phys_addr, mmio.len
                if length not in (1, 2, 4, 8):
                    continue
                if mmio.is_write:
                    mmio_space.write(
                        addr, length, int.from_bytes(bytes(mmio.data)[:length], "little")
                    )
                else:
                    value = mmio_space.read(addr, length)
                    mmio.data[:length] = list(value.to_bytes(length, "little"))
            elif reason == N.KVM_EXIT_INTR:
                continue
            elif reason == N.KVM_EXIT_SHUTDOWN:
                self._finish(
                    Outcome(
                        EXIT_GUEST_FAULT,
                        f"guest triple-faulted on vCPU {vcpu.index} (rip {vcpu.get_regs().rip:#x})",
                    )
                )
                return
            elif reason == N.KVM_EXIT_SYSTEM_EVENT:
                kind = vcpu.system_event.type
                if kind == N.KVM_SYSTEM_EVENT_SHUTDOWN:
                    self.guest_poweroff("system event")
                elif kind == N.KVM_SYSTEM_EVENT_RESET:
                    self.guest_reset("system event")
                else:
                    self._finish(Outcome(EXIT_GUEST_FAULT, f"guest crashed (system event {kind})"))
                return
            elif reason == N.KVM_EXIT_HLT:
                # Only without an in-kernel LAPIC would a HLT reach us; nothing will wake it.
                self._finish(Outcome(EXIT_GUEST_FAULT, "guest halted with no way to wake"))
                return
            elif reason == N.KVM_EXIT_INTERNAL_ERROR:
                internal = vcpu.internal
                data = " ".join(f"{internal.data[i]:#x}" for i in range(min(internal.ndata, 16)))
                self._finish(
                    Outcome(
                        EXIT_GUEST_FAULT,
                        f"KVM internal error on vCPU {vcpu.index}: suberror "
                        f"{internal.suberror} {data} (rip {vcpu.get_regs().rip:#x}); "
                        "this host's KVM cannot run the guest, try pcivm box",
                    )
                )
                return
            elif reason == N.KVM_EXIT_FAIL_ENTRY:
                self._finish(
                    Outcome(
                        EXIT_GUEST_FAULT,
                        "KVM could not enter the guest: hardware reason "
                        f"{vcpu.fail_entry.hardware_entry_failure_reason:#x}",
                    )
                )
                return
            else:
                self._finish(Outcome(EXIT_GUEST_FAULT, f"unexpected KVM exit reason {reason}"))
                return

    @staticmethod
    def _describe_vcpu(vcpu: Vcpu) -> str:
        regs = vcpu.get_regs()
        enabled = "on" if regs.rflags & RFLAGS_IF else "off"
        return f"vCPU {vcpu.index}: rip {regs.rip:#x}, interrupts {enabled}"

    def stop(self, status: int, reason: str) -> None:
        """End the VM from outside (a watchdog, a signal): run() returns `status`."""
        self._finish(Outcome(status, reason))

    def dump_state(self) -> None:
        print(self.state_report(), file=sys.stderr, flush=True)

    def state_report(self) -> str:
        """What a hung guest may be waiting for: vCPUs, the IOAPIC, the UART."""
        lines = ["pcivm: state dump"]
        if self.platform is None or self._vm is None:
            return "pcivm: state dump: the VM is still being built"
        self._vcpu_reports.clear()
        self._report_wanted.set()
        for vcpu, thread in zip(self._vcpus, self._threads, strict=False):
            deadline = time.monotonic() + 1
            while vcpu.index not in self._vcpu_reports and time.monotonic() < deadline:
                if thread.is_alive():
                    signal.pthread_kill(thread.ident, KICK_SIGNAL)
                time.sleep(0.01)
            lines.append("  " + self._vcpu_reports.get(vcpu.index, f"vCPU {vcpu.index}: no answer"))
        self._report_wanted.clear()
        try:
            ioapic = self._vm.ioapic_state()
            lines.append(f"  IOAPIC irr {ioapic.irr:#010x}")
            for pin in range(24):
                entry = ioapic.redirtbl[pin]
                if not entry & (1 << 16):  # unmasked
                    lines.append(
                        f"  IOAPIC pin {pin}: vector {entry & 0xFF:#x}, "
                        f"{'level' if entry & (1 << 15) else 'edge'}, "
                        f"remote IRR {int(bool(entry & (1 << 14)))}"
                    )
        except OSError as exc:
            lines.append(f"  IOAPIC state unavailable: {exc}")
        lines.append(f"  UART: {self.platform.uart.state_summary()}")
        total = sum(self.platform.io.accesses.values()) + sum(self.platform.mmio.accesses.values())
        lines.append(f"  exits so far {total}")
        return "\n".join(lines)

    def _print_exit_counts(self, platform: Platform) -> None:
        elapsed = time.monotonic() - self.started
        lines = [f"pcivm: exits by device ({elapsed:.2f} s):"]
        for space in (platform.io, platform.mmio):
            for name, count in space.accesses.most_common():
                lines.append(f"  {space.name:8} {name:30} {count}")
        total = sum(platform.io.accesses.values()) + sum(platform.mmio.accesses.values())
        lines.append(f"  total {total}")
        busiest = platform.pci.config_accesses.most_common(8)
        if busiest:
            lines.append("  busiest PCI config registers (bus:slot.fn+register: accesses):")
            for (bus, slot, fn, reg), count in busiest:
                lines.append(f"    {bus:02x}:{slot:02x}.{fn}+{reg:#05x} {count}")
        print("\n".join(lines), file=sys.stderr)


def run_spec(spec: VmSpec) -> int:
    return Vmm(spec).run()
