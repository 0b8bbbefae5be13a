"""The two ways the box runs a command: directly on the host, or in the TCG machine.

Both offer the same calls: `run` streams to file objects and returns the exit status;
`run_capture` returns (status, stdout bytes, stderr bytes). A command that cannot start
gives 127 (or 126) with a shell-like message; one killed by signal N gives 128+N; one
that outlives its timeout is killed and raises `BoxTimeoutError`.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import BinaryIO

from pcivm.box.errors import BoxTimeoutError
from pcivm.box.machine import TcgMachine
from pcivm.box.session import SessionClosed

Stdin = BinaryIO | bytes | None


class Runner:
    """What both runners share: argument defaults and `run_capture` on top of `run`."""

    kind = ""  # "direct" or "tcg"
    description = ""

    def run(
        self,
        argv: Sequence[str],
        cwd: str | os.PathLike | None = None,
        env: Mapping[str, str] | None = None,
        stdin: Stdin = None,
        stdout: BinaryIO | None = None,
        stderr: BinaryIO | None = None,
        timeout: float | None = None,
    ) -> int:
        raise NotImplementedError

    def run_capture(
        self,
        argv: Sequence[str],
        cwd: str | os.PathLike | None = None,
        env: Mapping[str, str] | None = None,
        input: bytes | None = None,
        timeout: float | None = None,
    ) -> tuple[int, bytes, bytes]:
        out, err = io.BytesIO(), io.BytesIO()
        try:
            status = self.run(argv, cwd, env, input, out, err, timeout)
        except BoxTimeoutError as exc:
            raise BoxTimeoutError(exc.argv, exc.timeout, out.getvalue(), err.getvalue()) from None
        return status, out.getvalue(), err.getvalue()

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _argv(argv: Sequence[str]) -> list[str]:
    if isinstance(argv, str | bytes) or not argv:
        raise ValueError("argv must be a non-empty list of strings")
    return [os.fspath(arg) for arg in argv]


def exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


class DirectRunner(Runner):
    """The host's KVM is hardware-assisted: commands run right here."""

    kind = "direct"
    description = "commands run directly on this host"

    def run(self, argv, cwd=None, env=None, stdin=None, stdout=None, stderr=None, timeout=None):
        argv = _argv(argv)
        streams = {"stdout": stdout, "stderr": stderr}
        # File objects with a descriptor are handed to the child; others get a pipe.
        piped = {name: s for name, s in streams.items() if s is not None and not _has_fd(s)}
        kwargs = {name: (subprocess.PIPE if name in piped else s) for name, s in streams.items()}
        data = None
        if isinstance(stdin, bytes | bytearray) or (stdin is not None and not _has_fd(stdin)):
            data = stdin if isinstance(stdin, bytes | bytearray) else stdin.read()
            kwargs["stdin"] = subprocess.PIPE
        else:
            kwargs["stdin"] = stdin if stdin is not None else None
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, **kwargs)
        except OSError as exc:
            status, message = spawn_failure(argv[0], cwd, exc)
            (stderr or sys.stderr.buffer).write(message.encode() + b"\n")
            return status
        try:
            out, err = proc.communicate(data, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            _deliver(piped, out, err)
            raise BoxTimeoutError(argv, timeout) from None
        _deliver(piped, out, err)
        return exit_status(proc.returncode)


def _has_fd(stream) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return False
    return True


def _deliver(piped: dict[str, BinaryIO], out: bytes | None, err: bytes | None) -> None:
    for name, data in (("stdout", out), ("stderr", err)):
        if name in piped and data:
            piped[name].write(data)
            piped[name].flush()


def spawn_failure(name: str, cwd, exc: OSError) -> tuple[int, str]:
    """The status and message a shell gives for a command that cannot start."""
    if cwd is not None and exc.filename == os.fspath(cwd):
        return 1, f"pcivm box: {cwd}: cannot change to this directory: {exc.strerror}"
    if isinstance(exc, FileNotFoundError):
        return 127, f"pcivm box: {name}: command not found"
    return 126, f"pcivm box: {name}: {exc.strerror}"


class TcgRunner(Runner):
    """Commands run in the box machine, one at a time, with the host's cwd and env."""

    kind = "tcg"

    def __init__(self, machine: TcgMachine) -> None:
        self.machine = machine
        self._lock = threading.Lock()
        self.description = (
            f"commands run in a QEMU TCG machine with emulated SVM "
            f"(kernel {machine.kernel.release}, console log {machine.console_log})"
        )

    def run(
        self,
        argv,
        cwd=None,
        env=None,
        stdin=None,
        stdout=None,
        stderr=None,
        timeout=None,
        tty: bool = False,
        winsize: tuple[int, int] | None = None,
        on_turn: Callable[[], None] | None = None,
    ) -> int:
        argv = _argv(argv)
        request = {
            "argv": argv,
            "cwd": os.fspath(cwd) if cwd is not None else os.getcwd(),
            "env": dict(env) if env is not None else dict(os.environ),
            "timeout": timeout,
            "tty": tty,
            "winsize": winsize,
        }
        stdout = stdout if stdout is not None else sys.stdout.buffer
        stderr = stderr if stderr is not None else sys.stderr.buffer
        with self._lock:
            session = self.machine.session
            if session is None:
                raise self.machine.died_error("the box is closed")
            try:
                result = session.run(request, stdin, stdout, stderr, on_turn)
            except SessionClosed as exc:
                error = self.machine.died_error(str(exc))
                self.machine.close()
                raise error from None
        if result.timed_out:
            raise BoxTimeoutError(argv, timeout)
        return result.status

    def send_signal(self, signum: int) -> None:
        if self.machine.session is not None:
            self.machine.session.send_signal(signum)

    def resize(self, rows: int, cols: int) -> None:
        if self.machine.session is not None:
            self.machine.session.send_resize(rows, cols)

    def close(self) -> None:
        self.machine.close()
