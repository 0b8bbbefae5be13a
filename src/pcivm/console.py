"""The host side of the serial console: where guest output goes and where input comes from.

With stdio on a terminal the terminal is put in raw mode, as QEMU's -nographic does, and
restored on every way out (normal exit, exception, SIGTERM via the VMM's handler, atexit).
Ctrl-A x quits; Ctrl-A Ctrl-A sends a literal Ctrl-A.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import sys
import termios
import threading
import tty
from collections.abc import Callable

from pcivm.errors import PcivmError
from pcivm.spec import SerialSpec
from pcivm.thread_names import name_os_thread

CTRL_A = 0x01


class SerialBackend:
    def __init__(self, spec: SerialSpec):
        self.spec = spec
        self._out_fd: int | None = None
        self._owns_fd = False
        self._saved_tty: list | None = None
        self._stop_pipe_r, self._stop_pipe_w = os.pipe()
        self._reader: threading.Thread | None = None
        if spec.kind == "stdio":
            try:
                self._out_fd = sys.stdout.fileno()
            except (OSError, ValueError, AttributeError):
                self._out_fd = None  # stdout is not a file (captured): output is dropped
        elif spec.kind == "file":
            try:
                self._out_fd = os.open(
                    spec.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644
                )
            except OSError as exc:
                raise PcivmError(f"-serial file:{spec.path}: {exc.strerror}") from exc
            self._owns_fd = True

    def write(self, data: bytes) -> None:
        if self._out_fd is None:
            return
        try:
            os.write(self._out_fd, data)
        except BlockingIOError:
            pass  # a terminal that cannot keep up loses output, never stalls the vCPU
        except OSError:
            self._out_fd = None  # the reader went away (closed pipe): drop further output

    def start_input(self, deliver: Callable[[bytes], None], quit_: Callable[[], None]) -> None:
        """Feed stdin to the guest from a thread, when the serial port is on stdio."""
        if self.spec.kind != "stdio":
            return
        try:
            stdin_fd = sys.stdin.fileno()
        except (OSError, ValueError):
            return
        if os.isatty(stdin_fd):
            self._saved_tty = termios.tcgetattr(stdin_fd)
            atexit.register(self.restore_terminal)
            tty.setraw(stdin_fd, termios.TCSANOW)
        self._reader = threading.Thread(
            target=self._read_loop,
            args=(stdin_fd, deliver, quit_, self._saved_tty is not None),
            name="serial-input",
            daemon=True,
        )
        self._reader.start()

    def _read_loop(self, fd: int, deliver, quit_, interactive: bool) -> None:
        name_os_thread()
        escape = False
        while True:
            ready, _, _ = select.select([fd, self._stop_pipe_r], [], [])
            if self._stop_pipe_r in ready:
                return
            try:
                data = os.read(fd, 4096)
            except OSError:
                return
            if not data:
                return  # EOF: the guest simply gets no more input
            if not interactive:
                deliver(data)
                continue
            out = bytearray()
            for byte in data:
                if escape:
                    escape = False
                    if byte in (ord("x"), ord("X")):
                        if out:
                            deliver(bytes(out))
                        quit_()
                        return
                    if byte == CTRL_A:
                        out.append(CTRL_A)
                    continue
                if byte == CTRL_A:
                    escape = True
                    continue
                out.append(byte)
            if out:
                deliver(bytes(out))

    def restore_terminal(self) -> None:
        if self._saved_tty is not None:
            with contextlib.suppress(OSError, termios.error, ValueError):
                termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, self._saved_tty)
            self._saved_tty = None

    def close(self) -> None:
        if self._stop_pipe_w < 0:
            return
        os.write(self._stop_pipe_w, b"x")
        self.restore_terminal()
        if self._owns_fd and self._out_fd is not None:
            os.close(self._out_fd)
            self._out_fd = None
        # The reader sees the byte and ends; then its pipe can go (a process that runs VMs
        # one after another kept two descriptors per VM before).
        if self._reader is not None:
            self._reader.join(2)
            if self._reader.is_alive():
                return  # still selecting on the pipe: leave it be
        os.close(self._stop_pipe_r)
        os.close(self._stop_pipe_w)
        self._stop_pipe_r = self._stop_pipe_w = -1
