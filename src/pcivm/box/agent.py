"""The box's agent: runs inside the TCG machine, chrooted into the host's filesystem.

Started by the box's /init with the host's own Python (`python -E -s -S agent.py`), it
talks to the host over the virtio-serial port named `pcivm.box` (see frames.py) and runs
one command at a time, streaming its output back. When it is PID 1 it forks: the parent
only reaps orphans and powers the machine off when the agent ends.

Standard library only: it must run with whatever Python the host has.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import pty
import selectors
import signal
import struct
import subprocess
import sys
import termios
import time
from collections import deque
from pathlib import Path

import frames  # beside this file: the script's directory is on sys.path

PORT_NAME = "pcivm.box"
READ_CHUNK = 64 * 1024
# Stop reading a command's output while this much is still queued for the host: the host
# then pushes back on the command as a pipe would.
PORT_BACKLOG_LIMIT = 1024 * 1024
# How far the box's clock may drift from the host's before a command resets it; file
# times come from the host, so tools comparing them with `now` need the two to agree.
CLOCK_TOLERANCE_S = 0.05
RB_POWER_OFF = 0x4321FEDC


def log(message: str) -> None:
    # stderr is the kernel console, which the host keeps in the box's console log.
    print(f"pcivm-box-agent: {message}", file=sys.stderr, flush=True)


def power_off() -> None:
    os.sync()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.reboot(RB_POWER_OFF)
    log(f"power off failed: {os.strerror(ctypes.get_errno())}")
    os._exit(1)


# linux/kvm.h: _IO(KVMIO, n) with KVMIO 0xAE.
KVM_CREATE_VM = 0xAE01
KVM_CREATE_VCPU = 0xAE41
KVM_CREATE_IRQCHIP = 0xAE60


def hold_kvm_steady() -> list[int]:
    """Create a VM with an irqchip and one vCPU that never runs, and keep it for the box's
    life; the descriptors are returned (and never closed).

    KVM flips static keys as the first VM comes and the last goes: the preempt notifiers
    patched into the scheduler's context switch (kvm_create_vm/kvm_destroy_vm), the
    LAPIC's software-disabled key (kvm_create_lapic, until the guest enables its APIC).
    Each flip rewrites live kernel text with int3 breakpoints (text_poke_bp), and under
    QEMU's TCG a CPU was seen keep executing that int3 after the text had been restored:
    both box CPUs looped between `__schedule` and `exc_int3` and the box stopped for good,
    after a few dozen VMs had come and gone. With one VM held, no VM that a command starts
    or ends moves those keys across zero, so the box's kernel text stays as it is."""
    if not os.path.exists("/dev/kvm"):
        return []
    fds = []
    try:
        kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        fds.append(kvm)
        vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
        fds.append(vm)
        fcntl.ioctl(vm, KVM_CREATE_IRQCHIP, 0)
        fds.append(fcntl.ioctl(vm, KVM_CREATE_VCPU, 0))
    except OSError as exc:
        log(f"cannot hold a VM open ({exc}); the box's KVM may be less steady")
    return fds


def become_init_and_fork() -> None:
    """As PID 1, stay behind reaping zombies; the forked child carries on as the agent."""
    agent = os.fork()
    if agent == 0:
        return
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid == agent:
            if status:
                log(f"the agent ended with wait status {status}")
            break
    power_off()


def find_port(timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        for name_file in Path("/sys/class/virtio-ports").glob("*/name"):
            if name_file.read_text().strip() == PORT_NAME:
                return f"/dev/{name_file.parent.name}"
        if time.monotonic() > deadline:
            raise SystemExit(f"pcivm-box-agent: no virtio port named {PORT_NAME}")
        time.sleep(0.05)


class Port:
    """The non-blocking virtio-serial port: queued output, frames parsed from input."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self.reader = frames.FrameReader()
        self.inbox: deque[tuple[int, bytes]] = deque()
        self.outbox = bytearray()

    def send(self, data: bytes) -> None:
        self.outbox += data

    def flush_some(self) -> None:
        while self.outbox:
            try:
                written = os.write(self.fd, self.outbox[:READ_CHUNK])
            except BlockingIOError:
                return
            del self.outbox[:written]

    def receive_some(self) -> None:
        try:
            data = os.read(self.fd, READ_CHUNK)
        except BlockingIOError:
            return
        if not data:
            # The host side is not connected (yet, or any more): nothing to read.
            time.sleep(0.05)
            return
        self.inbox.extend(self.reader.feed(data))

    def wait(self, timeout: float | None = None) -> None:
        """Block until the port can make progress (or `timeout`)."""
        selector = selectors.DefaultSelector()
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbox else 0)
        selector.register(self.fd, events)
        for _key, ready in selector.select(timeout):
            if ready & selectors.EVENT_WRITE:
                self.flush_some()
            if ready & selectors.EVENT_READ:
                self.receive_some()
        selector.close()

    def flush_all(self) -> None:
        while self.outbox:
            self.wait()

    def next_frame(self) -> tuple[int, bytes]:
        while not self.inbox:
            self.wait()
        return self.inbox.popleft()


def set_nonblocking(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


def set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def take_controlling_tty() -> None:
    # Runs in the child after setsid() and the dup2()s: fd 0 is the pty's slave.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def exit_status(returncode: int) -> int:
    """A shell's view of the status: a signal N becomes 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def sync_clock(host_time: float | None) -> None:
    if host_time is not None and abs(time.time() - host_time) > CLOCK_TOLERANCE_S:
        time.clock_settime(time.CLOCK_REALTIME, host_time)


class Command:
    """One running command and the pumping of its streams to and from the port."""

    def __init__(self, port: Port, request: dict) -> None:
        self.port = port
        self.tty = bool(request.get("tty"))
        self.timeout = request.get("timeout")
        self.stdin_buffer = bytearray()
        self.stdin_eof = not request.get("stdin")
        self.timed_out = False
        self.quit_requested = False
        self.proc = self._spawn(request)
        self.pidfd = os.pidfd_open(self.proc.pid)

    def _spawn(self, request: dict) -> subprocess.Popen:
        common = dict(
            cwd=request.get("cwd") or "/",
            env=request.get("env"),
            start_new_session=True,
            close_fds=True,
        )
        if self.tty:
            master, slave = pty.openpty()
            rows, cols = request.get("winsize") or (24, 80)
            set_winsize(master, rows, cols)
            try:
                proc = subprocess.Popen(
                    request["argv"],
                    stdin=slave,
                    stdout=slave,
                    stderr=slave,
                    preexec_fn=take_controlling_tty,
                    **common,
                )
            except BaseException:
                os.close(master)
                raise
            finally:
                os.close(slave)
            self.master = master
            self.stdin_fd = master if not self.stdin_eof else None
            self.outputs = {master: frames.STDOUT}
            set_nonblocking(master)
            return proc
        stdin = subprocess.PIPE if not self.stdin_eof else subprocess.DEVNULL
        proc = subprocess.Popen(
            request["argv"], stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **common
        )
        self.master = None
        self.stdin_fd = proc.stdin.fileno() if proc.stdin else None
        self.outputs = {proc.stdout.fileno(): frames.STDOUT, proc.stderr.fileno(): frames.STDERR}
        for fd in [*self.outputs, *([self.stdin_fd] if self.stdin_fd is not None else [])]:
            set_nonblocking(fd)
        return proc

    def pump(self) -> dict:
        deadline = time.monotonic() + self.timeout if self.timeout else None
        exited = False
        while not exited:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            exited = self._step(wait)
            if deadline is not None and not exited and time.monotonic() >= deadline:
                self.timed_out = True
                deadline = None
                self._signal(signal.SIGKILL)
        self._drain_outputs()
        returncode = self.proc.wait()
        # Whatever the command left running in its session goes with it: the next
        # command must start in a clean box.
        self._signal(signal.SIGKILL)
        self._close()
        result = {"status": exit_status(returncode), "timed_out": self.timed_out}
        if self.timed_out:
            result["error"] = f"timed out after {self.timeout:g} s and was killed"
        return result

    def _step(self, timeout: float | None) -> bool:
        # A pty's master is both an output and the command's stdin: one registration
        # per descriptor, with the events of all its roles.
        wanted: dict[int, int] = {self.pidfd: selectors.EVENT_READ}
        wanted[self.port.fd] = selectors.EVENT_READ
        if self.port.outbox:
            wanted[self.port.fd] |= selectors.EVENT_WRITE
        if len(self.port.outbox) < PORT_BACKLOG_LIMIT:
            for fd in self.outputs:
                wanted[fd] = wanted.get(fd, 0) | selectors.EVENT_READ
        if self.stdin_fd is not None and (self.stdin_buffer or self.stdin_eof):
            wanted[self.stdin_fd] = wanted.get(self.stdin_fd, 0) | selectors.EVENT_WRITE
        selector = selectors.DefaultSelector()
        for fd, events in wanted.items():
            selector.register(fd, events)
        ready_events = selector.select(timeout)
        selector.close()
        exited = False
        for key, ready in ready_events:
            fd = key.fd
            if fd == self.pidfd:
                exited = True
            elif fd == self.port.fd:
                if ready & selectors.EVENT_WRITE:
                    self.port.flush_some()
                if ready & selectors.EVENT_READ:
                    self.port.receive_some()
                    self._handle_frames()
            else:
                if ready & selectors.EVENT_READ and fd in self.outputs:
                    self._read_output(fd)
                if ready & selectors.EVENT_WRITE and fd == self.stdin_fd:
                    self._write_stdin()
        return exited

    def _handle_frames(self) -> None:
        while self.port.inbox:
            kind, payload = self.port.inbox.popleft()
            if kind == frames.STDIN:
                self.stdin_buffer += payload
            elif kind == frames.STDIN_EOF:
                self.stdin_eof = True
            elif kind == frames.RESIZE and self.master is not None:
                rows, cols = frames.decode_json(payload)
                set_winsize(self.master, rows, cols)
            elif kind == frames.SIGNAL:
                self._signal(int(frames.decode_json(payload)))
            elif kind == frames.QUIT:
                self.quit_requested = True
                self._signal(signal.SIGKILL)

    def _read_output(self, fd: int) -> bool:
        """Forward one chunk; False at end of stream (or when nothing is there)."""
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: a pty whose slave side is all closed
                raise
            data = b""
        if not data:
            del self.outputs[fd]
            return False
        self.port.send(frames.encode_data(self.outputs[fd], data))
        return True

    def _drain_outputs(self) -> None:
        # The command has exited: what it wrote is in the pipes already. Take that, but
        # do not wait for an EOF that a leftover background process could hold back.
        for fd in list(self.outputs):
            while fd in self.outputs and self._read_output(fd):
                pass

    def _write_stdin(self) -> None:
        if self.stdin_buffer:
            try:
                written = os.write(self.stdin_fd, self.stdin_buffer[:READ_CHUNK])
            except BlockingIOError:
                return
            except BrokenPipeError:
                self.stdin_buffer.clear()
                self.stdin_eof = True
                written = 0
            del self.stdin_buffer[:written]
        if not self.stdin_buffer and self.stdin_eof and self.master is None:
            self.proc.stdin.close()
            self.stdin_fd = None
        elif not self.stdin_buffer and self.stdin_eof:
            # A pty has no half-close: end of input is the EOF character (^D).
            os.write(self.master, b"\x04")
            self.stdin_fd = None

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signum)

    def _close(self) -> None:
        os.close(self.pidfd)
        if self.master is not None:
            os.close(self.master)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def spawn_error(request: dict, exc: OSError) -> tuple[int, str]:
    """The status and message a shell would give for a command that cannot start."""
    name = request["argv"][0]
    cwd = request.get("cwd")
    if cwd and exc.filename == cwd:
        return 1, f"pcivm box: {cwd}: cannot change to this directory: {exc.strerror}"
    if isinstance(exc, FileNotFoundError):
        return 127, f"pcivm box: {name}: command not found"
    return 126, f"pcivm box: {name}: {exc.strerror}"


def serve(port: Port) -> None:
    held = hold_kvm_steady()
    while True:
        kind, payload = port.next_frame()
        if kind == frames.QUIT:
            port.flush_all()
            return
        if kind == frames.HELLO:
            sync_clock(frames.decode_json(payload).get("time"))
            info = {
                "release": os.uname().release,
                "kvm": os.path.exists("/dev/kvm"),
                "kvm_held": len(held) == 3,
            }
            port.send(frames.encode_json(frames.HELLO, info))
            port.flush_all()
        elif kind == frames.RUN:
            request = frames.decode_json(payload)
            sync_clock(request.get("time"))
            try:
                command = Command(port, request)
            except OSError as exc:
                status, message = spawn_error(request, exc)
                port.send(frames.encode_data(frames.STDERR, message.encode() + b"\n"))
                port.send(frames.encode_json(frames.EXIT, {"status": status, "error": message}))
                port.flush_all()
                continue
            result = command.pump()
            port.send(frames.encode_json(frames.EXIT, result))
            port.flush_all()
            if command.quit_requested:
                return
        # Anything else (stdin for a command that has already ended) is stale: drop it.


def main() -> None:
    if os.getpid() == 1:
        become_init_and_fork()
    port = Port(find_port())
    serve(port)


if __name__ == "__main__":
    main()
