"""The box machine: virtiofsd + QEMU TCG with emulated SVM, and the session to its agent.

Everything the machine needs lives in one scratch directory (sockets, initramfs, logs),
removed when the machine is closed unless something went wrong or PCIVM_BOX_KEEP is set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pcivm.box.busybox import find_busybox
from pcivm.box.diagnose import describe
from pcivm.box.errors import BoxDiedError, BoxNoAnswerError, BoxSetupError, BoxStartError
from pcivm.box.initramfs import build_initramfs
from pcivm.box.kernel import BoxKernel
from pcivm.box.processes import start_helper, stop_helper, tail
from pcivm.box.qemu import MachineConfig, find_qemu, find_virtiofsd, qemu_argv, virtiofsd_argv
from pcivm.box.session import Session, SessionClosed

log = logging.getLogger(__name__)

START_TIMEOUT_S = 180.0  # TCG on a busy two-core host can be slow; normally 5-7 s
SOCKET_WAIT_S = 10.0
KEEP_ENV = "PCIVM_BOX_KEEP"
STUCK_REPORT = "stuck.txt"  # what diagnose.describe saw of a box that stopped answering
KERNEL_SYMBOLS = "kallsyms"  # the box kernel's text symbols, written by its /init


def require_tools(config: MachineConfig) -> tuple[str, str]:
    """QEMU's and virtiofsd's paths, or a BoxSetupError naming what to install."""
    qemu = find_qemu(config)
    if qemu is None:
        raise BoxSetupError("qemu-system-x86_64 not found (install qemu-system-x86)")
    virtiofsd = find_virtiofsd(config)
    if virtiofsd is None:
        raise BoxSetupError("virtiofsd not found (install qemu-system-x86 or virtiofsd)")
    return qemu, virtiofsd


class TcgMachine:
    def __init__(
        self,
        kernel: BoxKernel,
        config: MachineConfig | None = None,
        busybox: Path | None = None,
        python: str | None = None,
    ) -> None:
        self.kernel = kernel
        self.config = config or MachineConfig()
        self.busybox = busybox
        # The agent runs with the host's interpreter: the same path works in the chroot.
        self.python = python or sys.executable
        self.workdir: Path | None = None
        self.virtiofsd: subprocess.Popen | None = None
        self.qemu: subprocess.Popen | None = None
        self.session: Session | None = None
        self.info: dict = {}
        self.failed = False
        self.kept_dir: Path | None = None  # the scratch directory, when kept at close

    @property
    def console_log(self) -> Path | None:
        directory = self.workdir or self.kept_dir
        return directory / "console.log" if directory else None

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        qemu, virtiofsd = require_tools(self.config)
        self.kernel.check()
        busybox = find_busybox(self.busybox)
        started = time.monotonic()
        self.workdir = Path(tempfile.mkdtemp(prefix="pcivm-box-"))
        try:
            self._start(qemu, virtiofsd, busybox, timeout)
        except Exception:
            self.failed = True  # keep the logs for the error message to point at
            self.close()
            raise
        except BaseException:  # interrupted: not the box's fault, nothing to keep
            self.close()
            raise
        log.info("box up in %.1f s: %s", time.monotonic() - started, self.info)

    def _start(self, qemu: str, virtiofsd: str, busybox: Path, timeout: float) -> None:
        workdir = self.workdir
        initrd = workdir / "initramfs.cpio"
        initrd.write_bytes(
            build_initramfs(self.kernel, busybox, self.python, workdir / KERNEL_SYMBOLS)
        )
        fs_socket = workdir / "fs.sock"
        control_socket = workdir / "control.sock"
        self.virtiofsd = start_helper(
            virtiofsd_argv(virtiofsd, fs_socket, self.config), workdir / "virtiofsd.log"
        )
        self._wait_for_socket(fs_socket, self.virtiofsd, "virtiofsd", workdir / "virtiofsd.log")
        argv = qemu_argv(
            qemu,
            self.kernel.bzimage,
            initrd,
            self.console_log,
            fs_socket,
            control_socket,
            self.config,
            monitor_socket=workdir / "monitor.sock",
        )
        log.debug("starting %s", " ".join(argv))
        self.qemu = start_helper(argv, workdir / "qemu.log")
        self._wait_for_socket(control_socket, self.qemu, "QEMU", workdir / "qemu.log")
        self.session = Session(self._connect(control_socket, workdir / "qemu.log"))
        try:
            self.info = self.session.hello(timeout, alive=self.alive)
        except SessionClosed:
            raise self._start_error("the box did not come up", BoxNoAnswerError) from None
        if not self.info.get("kvm"):
            raise self._start_error("the box came up without /dev/kvm")

    def _connect(self, path: Path, log_path: Path) -> socket.socket:
        """Connect to QEMU's control socket. Its file appears when QEMU binds it, a moment
        before QEMU listens: a refusal in between is retried, not a failure."""
        deadline = time.monotonic() + SOCKET_WAIT_S
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.connect(str(path))
                return sock
            except ConnectionRefusedError:
                sock.close()
                if self.qemu.poll() is not None or time.monotonic() > deadline:
                    raise BoxStartError(
                        f"QEMU did not accept connections on {path}", tail(log_path)
                    ) from None
                time.sleep(0.01)

    def _wait_for_socket(self, path: Path, proc: subprocess.Popen, name: str, log_path: Path):
        deadline = time.monotonic() + SOCKET_WAIT_S
        while not path.exists():
            if proc.poll() is not None:
                raise BoxStartError(
                    f"{name} exited with status {proc.returncode} while starting the box",
                    tail(log_path),
                    str(self.workdir),
                )
            if time.monotonic() > deadline:
                raise BoxStartError(f"{name} did not create {path}", tail(log_path))
            time.sleep(0.01)

    def alive(self) -> bool:
        return self.qemu is not None and self.qemu.poll() is None

    def _start_error(
        self, message: str, kind: type[BoxStartError] = BoxStartError
    ) -> BoxStartError:
        if self.qemu is not None:
            # The control socket closes a moment before QEMU's exit can be collected.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.qemu.wait(timeout=2)
        details = tail(self.console_log)
        if self.qemu is not None and self.qemu.returncode is not None:
            if self.qemu.returncode > 0:
                # QEMU itself failed (an option, a file): a second try would fail the same
                # way. Status 0 is the box's kernel stopping (a panic, with -no-reboot).
                kind = BoxStartError
            message += f" (QEMU exited with status {self.qemu.returncode})"
            qemu_tail = tail(self.workdir / "qemu.log", 5)
            if qemu_tail:
                message += f": {qemu_tail.splitlines()[-1]}"
            if not details:  # QEMU failed before the guest printed anything
                details = "\n".join(
                    part for part in (tail(self.workdir / "virtiofsd.log", 5), qemu_tail) if part
                )
        return kind(message, details, str(self.workdir))

    def died_error(self, reason: str) -> BoxDiedError:
        self.failed = True
        details = tail(self.console_log)
        if self.alive() and self.workdir is not None:
            # The agent stopped answering but QEMU runs: say where the box's CPUs are.
            stuck = describe(
                self.workdir / "monitor.sock", self.qemu.pid, self.workdir / KERNEL_SYMBOLS
            )
            (self.workdir / STUCK_REPORT).write_text(stuck + "\n")
            details = f"{details}\n{stuck}" if details else stuck
        return BoxDiedError(f"the box failed: {reason}", details, str(self.workdir))

    def close(self) -> None:
        if self.session is not None:
            if self.alive():
                self.session.quit()
            self.session.close()
            self.session = None
        # The agent powers the machine off on QUIT; QEMU then exits by itself.
        stop_helper(self.qemu)
        stop_helper(self.virtiofsd, grace=1.0)
        if self.workdir is not None:
            keep = self.failed or os.environ.get(KEEP_ENV)
            if keep:
                log.warning("box logs kept in %s", self.workdir)
                self.kept_dir = self.workdir
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)
        self.qemu = self.virtiofsd = None
        self.workdir = None
