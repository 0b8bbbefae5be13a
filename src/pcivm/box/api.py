"""`open_box`: the right runner for this host, and the machine torn down on every exit.

A TCG machine is started only when the host's KVM is not hardware-assisted; only then is
the kernel provider called (it may take a while: fetching and unpacking a kernel).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from pcivm.box.detect import KvmKind, host_kvm_kind
from pcivm.box.errors import BoxNoAnswerError
from pcivm.box.kernel import BoxKernel
from pcivm.box.machine import START_TIMEOUT_S, TcgMachine, require_tools
from pcivm.box.qemu import MachineConfig
from pcivm.box.runners import DirectRunner, Runner, TcgRunner

KernelProvider = Callable[[], BoxKernel]
log = logging.getLogger(__name__)

# A box whose agent never answers is started once more: the nested machine hangs while
# booting now and then (rarely, with nothing on its console), and one such boot must not
# fail a whole test session or benchmark. Anything else fails at once.
START_ATTEMPTS = 2

AUTO = "auto"
DIRECT = "direct"
TCG = "tcg"


def choose_runner_kind(kvm: KvmKind, mode: str = AUTO) -> str:
    if mode not in (AUTO, DIRECT, TCG):
        raise ValueError(f"unknown box mode {mode!r}")
    if mode != AUTO:
        return mode
    return DIRECT if kvm.hardware_assisted else TCG


def start_runner(
    kernel_provider: KernelProvider,
    mode: str = AUTO,
    config: MachineConfig | None = None,
    busybox: Path | None = None,
    start_timeout: float = START_TIMEOUT_S,
) -> Runner:
    """A started runner; the caller closes it (`open_box` does that for you)."""
    if choose_runner_kind(host_kvm_kind(), mode) == DIRECT:
        return DirectRunner()
    require_tools(config or MachineConfig())  # before the kernel, which may be a download
    kernel = kernel_provider()
    attempt = 1
    while True:
        machine = TcgMachine(kernel, config, busybox)
        # Belt and braces: even when the caller never closes it, the machine goes at exit
        # (and, killed outright, QEMU and virtiofsd die with us through PDEATHSIG).
        atexit.register(machine.close)
        try:
            machine.start(start_timeout)
            return TcgRunner(machine)
        except BoxNoAnswerError as exc:
            if attempt >= START_ATTEMPTS:
                raise
            log.warning("%s; starting it again (logs of this try: %s)", exc, exc.log_dir)
            attempt += 1


@contextlib.contextmanager
def open_box(
    kernel_provider: KernelProvider,
    mode: str = AUTO,
    config: MachineConfig | None = None,
    busybox: Path | None = None,
    start_timeout: float = START_TIMEOUT_S,
) -> Iterator[Runner]:
    runner = start_runner(kernel_provider, mode, config, busybox, start_timeout)
    try:
        yield runner
    finally:
        runner.close()
