"""The host's end of the control port: one command at a time, streamed both ways.

The socket is non-blocking and everything goes through one selector loop, so a command
that reads a lot of input while writing a lot of output cannot deadlock the two ends.
Signals (^C in the CLI) are queued with `send_signal` and leave on the next turn.
"""

from __future__ import annotations

import io
import os
import select
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from pcivm.box import frames

READ_CHUNK = 64 * 1024
# Stop reading our stdin while this much is still waiting to go to the box.
SEND_BACKLOG_LIMIT = 1024 * 1024
# The agent enforces a command's timeout; the host gives it this much more before it
# declares the box itself dead.
TIMEOUT_GRACE_S = 30.0
# The longest a turn of the loop sleeps, so queued signals and resizes go out promptly.
TURN_S = 0.1


class SessionClosed(Exception):
    """The box went away (its end of the socket closed, or it stopped answering)."""


@dataclass
class CommandResult:
    status: int
    timed_out: bool = False
    error: str | None = None


class Session:
    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.reader = frames.FrameReader()
        self.outbox = bytearray()

    def send(self, data: bytes) -> None:
        self.outbox += data

    def send_signal(self, signum: int) -> None:
        self.send(frames.encode_json(frames.SIGNAL, signum))

    def send_resize(self, rows: int, cols: int) -> None:
        self.send(frames.encode_json(frames.RESIZE, [rows, cols]))

    def hello(self, timeout: float, alive: Callable[[], bool]) -> dict:
        """Greet the agent and wait for its answer; `alive` says whether to keep waiting."""
        self.send(frames.encode_json(frames.HELLO, {"time": time.time()}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive():
            for kind, payload in self._turn(None, TURN_S * 5):
                if kind == frames.HELLO:
                    return frames.decode_json(payload)
        raise SessionClosed("the box did not answer")

    def quit(self, timeout: float = 2.0) -> None:
        self.send(frames.encode(frames.QUIT))
        deadline = time.monotonic() + timeout
        try:
            while self.outbox and time.monotonic() < deadline:
                self._turn(None, TURN_S)
        except (SessionClosed, OSError):
            pass

    def run(
        self,
        request: dict,
        stdin: BinaryIO | bytes | None,
        stdout: BinaryIO,
        stderr: BinaryIO,
        on_turn: Callable[[], None] | None = None,
    ) -> CommandResult:
        request = {**request, "stdin": stdin is not None, "time": time.time()}
        self.send(frames.encode_json(frames.RUN, request))
        stdin_fd = self._start_stdin(stdin)
        timeout = request.get("timeout")
        deadline = time.monotonic() + timeout + TIMEOUT_GRACE_S if timeout else None
        while True:
            if deadline is not None and time.monotonic() > deadline:
                raise SessionClosed(f"the box did not end {request['argv'][0]} after its timeout")
            if on_turn is not None:
                on_turn()
            for kind, payload in self._turn(stdin_fd, TURN_S):
                if kind == frames.STDOUT:
                    _write(stdout, payload)
                elif kind == frames.STDERR:
                    _write(stderr, payload)
                elif kind == frames.EXIT:
                    result = frames.decode_json(payload)
                    return CommandResult(
                        status=result["status"],
                        timed_out=result.get("timed_out", False),
                        error=result.get("error"),
                    )
            if stdin_fd is not None and self._stdin_done:
                stdin_fd = None

    def _start_stdin(self, stdin: BinaryIO | bytes | None) -> int | None:
        """Send what can be sent at once; return a descriptor to keep forwarding from."""
        self._stdin_done = False
        if stdin is None:
            return None
        if isinstance(stdin, bytes | bytearray | memoryview):
            self.send(frames.encode_data(frames.STDIN, bytes(stdin)))
            self.send(frames.encode(frames.STDIN_EOF))
            return None
        try:
            fd = stdin.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            fd = None
        if fd is not None and _pollable(fd):
            return fd
        # A regular file, /dev/null or an in-memory stream: reading it never blocks.
        self.send(frames.encode_data(frames.STDIN, stdin.read()))
        self.send(frames.encode(frames.STDIN_EOF))
        return None

    def _turn(self, stdin_fd: int | None, timeout: float) -> list[tuple[int, bytes]]:
        selector = selectors.DefaultSelector()
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbox else 0)
        selector.register(self.sock, events, "sock")
        if stdin_fd is not None and len(self.outbox) < SEND_BACKLOG_LIMIT:
            selector.register(stdin_fd, selectors.EVENT_READ, "stdin")
        received: list[tuple[int, bytes]] = []
        try:
            for key, ready in selector.select(timeout):
                if key.data == "stdin":
                    self._forward_stdin(stdin_fd)
                    continue
                if ready & selectors.EVENT_WRITE:
                    self._flush_some()
                if ready & selectors.EVENT_READ:
                    received += self._receive_some()
        finally:
            selector.close()
        return received

    def _forward_stdin(self, fd: int) -> None:
        data = os.read(fd, READ_CHUNK)
        if data:
            self.send(frames.encode_data(frames.STDIN, data))
        else:
            self.send(frames.encode(frames.STDIN_EOF))
            self._stdin_done = True

    def _flush_some(self) -> None:
        try:
            sent = self.sock.send(self.outbox)
        except BlockingIOError:
            return
        except OSError as exc:
            raise SessionClosed(f"the box's control socket failed: {exc.strerror}") from exc
        del self.outbox[:sent]

    def _receive_some(self) -> list[tuple[int, bytes]]:
        try:
            data = self.sock.recv(READ_CHUNK)
        except BlockingIOError:
            return []
        except OSError as exc:
            raise SessionClosed(f"the box's control socket failed: {exc.strerror}") from exc
        if not data:
            raise SessionClosed("the box closed its control port")
        return self.reader.feed(data)

    def close(self) -> None:
        self.sock.close()


def _pollable(fd: int) -> bool:
    """Whether epoll accepts `fd` (it refuses regular files and some devices)."""
    probe = select.epoll()
    try:
        probe.register(fd, select.EPOLLIN)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _write(stream: BinaryIO, data: bytes) -> None:
    stream.write(data)
    stream.flush()
