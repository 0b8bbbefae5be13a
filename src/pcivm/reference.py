"""The reference VMM: Debian's QEMU booting the project's guest image.

Every end-to-end comparison and benchmark holds pcivm against this: the same kernel,
initramfs and guest command line under `qemu-system-x86_64` with direct kernel boot. The
QEMU process runs through a `runner`, so that tests can run it inside the box where
`-enable-kvm` works; by default it runs on this host.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from pcivm.errors import PcivmError
from pcivm.guest import probe

QEMU = "qemu-system-x86_64"
# The guest's console is the first serial port; `quiet` keeps boot messages off it
# (every character costs about a millisecond in the box).
BASE_APPEND = ("console=ttyS0", "quiet")
DEFAULT_MEMORY = "1G"
DEFAULT_TIMEOUT_S = 120.0

# runner(argv, timeout) -> (returncode, stdout bytes); raises RunnerTimeout when the
# command outlives `timeout`.
Runner = Callable[[list[str], float], tuple[int, bytes]]


class RunnerTimeout(Exception):
    """Raised by a runner whose command outlived its timeout (and was killed)."""

    def __init__(self, output: bytes = b""):
        super().__init__("timed out")
        self.output = output


class ReferenceRunError(PcivmError):
    """QEMU did not produce the console the guest was asked for."""


@dataclass(frozen=True)
class GuestBoot:
    """What to boot and how: the image's files and the guest's command line words."""

    kernel: Path
    initrd: Path
    machine: str = "pc"  # QEMU -M: pc (i440FX, conventional PCI) or q35 (PCI Express)
    devices: Sequence[str] = ()  # each a QEMU -device value, e.g. "virtio-rng-pci"
    extra_args: Sequence[str] = ()  # further QEMU arguments (-drive, -netdev, ...)
    guest: str = "modern"  # "legacy" boots the old guest (pcivm.guest=legacy)
    probe: bool = True  # pcivm.probe=1: print the probe report
    run: str | None = None  # pcivm.run=...: a shell command for the guest
    append: Sequence[str] = ()  # further kernel command line words
    memory: str = DEFAULT_MEMORY
    accel: str = "kvm"  # "kvm" (-enable-kvm) or "tcg" (-accel tcg -cpu max)
    smp: int = 1
    qemu: str = QEMU
    cpu: str | None = None  # QEMU -cpu; None: QEMU's default under KVM, "max" under TCG


@dataclass(frozen=True)
class ReferenceResult:
    returncode: int
    console: str
    elapsed_s: float
    report: dict | None = None  # the parsed probe report (when probe was asked for)
    run_exit: int | None = None  # the status pcivm.run's command reported
    run_output: str | None = None  # what it printed
    argv: list[str] = field(default_factory=list)


def kernel_append(boot: GuestBoot) -> str:
    """The guest kernel command line for `boot`."""
    words = list(BASE_APPEND)
    if boot.probe:
        words.append("pcivm.probe=1")
    if boot.guest != "modern":
        words.append(f"pcivm.guest={boot.guest}")
    if boot.run is not None:
        if '"' in boot.run:
            raise ValueError("a pcivm.run command cannot contain a double quote")
        # Double quotes: the kernel keeps the value as one parameter and /init unquotes it.
        words.append(f'pcivm.run="{boot.run}"')
    words.extend(boot.append)
    return " ".join(words)


def qemu_argv(boot: GuestBoot) -> list[str]:
    """The QEMU command line that boots `boot` with its console on stdout."""
    if boot.accel == "kvm":
        # QEMU's default CPU model (qemu64) hides XSAVE/AVX, as pcivm does.
        accel = ["-enable-kvm"] + (["-cpu", boot.cpu] if boot.cpu else [])
    elif boot.accel == "tcg":
        accel = ["-accel", "tcg", "-cpu", boot.cpu or "max"]
    else:
        raise ValueError(f"unknown accelerator {boot.accel!r} (kvm or tcg)")
    argv = [
        boot.qemu,
        "-M",
        boot.machine,
        *accel,
        "-m",
        boot.memory,
        "-smp",
        str(boot.smp),
        # -nodefaults: no NIC, VGA, floppy or CD-ROM beside the devices asked for.
        "-nodefaults",
        "-nographic",
        "-no-reboot",  # the guest's poweroff/reboot ends QEMU
        "-serial",
        "stdio",
        "-kernel",
        str(boot.kernel),
        "-initrd",
        str(boot.initrd),
        "-append",
        kernel_append(boot),
    ]
    for device in boot.devices:
        argv += ["-device", device]
    argv += list(boot.extra_args)
    return argv


def pcivm_argv(boot: GuestBoot) -> list[str]:
    """The same boot under pcivm: it takes QEMU's options, so only the program changes.

    pcivm always runs on KVM with the host CPU model (XSAVE hidden, as in qemu64).
    """
    argv = qemu_argv(replace(boot, accel="kvm", cpu=None))
    return [sys.executable, "-m", "pcivm", *argv[1:]]


def vmm_argv(boot: GuestBoot, vmm: str) -> list[str]:
    if vmm == "qemu":
        return qemu_argv(boot)
    if vmm == "pcivm":
        return pcivm_argv(boot)
    raise ValueError(f"unknown VMM {vmm!r} (qemu or pcivm)")


def host_runner(argv: list[str], timeout: float) -> tuple[int, bytes]:
    """Run `argv` on this host, stdin closed, stderr merged into the captured output."""
    try:
        # A session of its own, so that a timeout kills everything it started (a child
        # holding the pipe open would otherwise keep communicate() waiting).
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise ReferenceRunError(f"{argv[0]}: not found (apt-get install qemu-system-x86)") from exc
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        raise RunnerTimeout(output) from None
    return proc.returncode, output


def box_runner(box) -> Runner:
    """A runner that runs the VMM inside a box (pcivm.box's runner objects), where
    `-enable-kvm` works on hosts whose own KVM cannot run the guest."""

    def in_box(argv: list[str], timeout: float) -> tuple[int, bytes]:
        from pcivm.box.errors import BoxTimeoutError

        try:
            status, out, err = box.run_capture(argv, timeout=timeout)
        except BoxTimeoutError as exc:
            raise RunnerTimeout(exc.stdout + exc.stderr) from None
        return status, out + err

    return in_box


def run_reference(
    boot: GuestBoot,
    runner: Runner = host_runner,
    timeout: float = DEFAULT_TIMEOUT_S,
    vmm: str = "qemu",
) -> ReferenceResult:
    """Boot `boot` under QEMU (or, with vmm="pcivm", under pcivm with the same options)
    and read its console; the probe report must be complete when one was asked for."""
    argv = vmm_argv(boot, vmm)
    name = "QEMU" if vmm == "qemu" else "pcivm"
    started = time.monotonic()
    try:
        returncode, output = runner(argv, timeout)
    except RunnerTimeout as exc:
        console = exc.output.decode(errors="replace")
        raise ReferenceRunError(
            f"{name} did not finish within {timeout:g} s; the console ended with: "
            f"{probe.tail(console)}"
        ) from None
    elapsed = time.monotonic() - started
    console = output.decode(errors="replace")
    report = None
    if boot.probe:
        try:
            report = probe.parse_probe_report(console)
        except probe.ProbeReportError as exc:
            raise ReferenceRunError(f"{name} exited with status {returncode}: {exc}") from None
    return ReferenceResult(
        returncode=returncode,
        console=console,
        elapsed_s=elapsed,
        report=report,
        run_exit=probe.parse_run_exit(console),
        run_output=probe.parse_run_output(console),
        argv=argv,
    )


def boot_image(**options) -> GuestBoot:
    """A `GuestBoot` of the cached guest image (built first if needed)."""
    from pcivm.guest.image import ensure_image

    image = ensure_image()
    return GuestBoot(kernel=image.kernel.bzimage, initrd=image.initrd, **options)
