"""The wire format between the host and the box's agent, over one virtio-serial port.

A frame is a 1-byte kind, a 4-byte big-endian payload length, and the payload. Control
frames carry JSON; data frames carry raw bytes. One command runs at a time:

    agent -> host  HELLO {...}                         once, when the box is up
    host  -> agent RUN {argv, cwd, env, tty, ...}
    host  -> agent STDIN bytes* STDIN_EOF | RESIZE [rows, cols] | SIGNAL n   (any order)
    agent -> host  STDOUT bytes* | STDERR bytes*
    agent -> host  EXIT {status, error, timed_out}
    host  -> agent QUIT                                the agent powers the box off

This module is imported by the agent inside the box as a top-level module (it sits beside
agent.py), so it uses the standard library only.
"""

from __future__ import annotations

import json
import struct

HELLO = 1
RUN = 2
STDIN = 3
STDIN_EOF = 4
RESIZE = 5
SIGNAL = 6
STDOUT = 7
STDERR = 8
EXIT = 9
QUIT = 10

KIND_NAMES = {
    HELLO: "HELLO",
    RUN: "RUN",
    STDIN: "STDIN",
    STDIN_EOF: "STDIN_EOF",
    RESIZE: "RESIZE",
    SIGNAL: "SIGNAL",
    STDOUT: "STDOUT",
    STDERR: "STDERR",
    EXIT: "EXIT",
    QUIT: "QUIT",
}

HEADER = struct.Struct(">BI")
# Big enough to move data efficiently, small enough that a control frame is never stuck
# behind a long burst of output.
MAX_PAYLOAD = 256 * 1024


class FrameError(Exception):
    """The byte stream does not hold valid frames (a bug or a dead peer)."""


def encode(kind: int, payload: bytes = b"") -> bytes:
    if kind not in KIND_NAMES:
        raise FrameError(f"unknown frame kind {kind}")
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(kind, len(payload)) + payload


def encode_json(kind: int, value: object) -> bytes:
    return encode(kind, json.dumps(value, separators=(",", ":")).encode())


def encode_data(kind: int, data: bytes) -> bytes:
    """Data of any length, split into as many frames as it takes."""
    view = memoryview(data)
    return b"".join(
        encode(kind, bytes(view[start : start + MAX_PAYLOAD]))
        for start in range(0, len(view), MAX_PAYLOAD)
    )


def decode_json(payload: bytes) -> object:
    try:
        return json.loads(payload)
    except ValueError as exc:
        raise FrameError(f"bad JSON in a control frame: {exc}") from exc


class FrameReader:
    """Accumulates received bytes and yields whole frames as (kind, payload)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buffer)
            if kind not in KIND_NAMES or length > MAX_PAYLOAD:
                raise FrameError(f"corrupt frame header (kind {kind}, length {length})")
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            frames.append((kind, bytes(self._buffer[HEADER.size : end])))
            del self._buffer[:end]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still waiting for the rest."""
        return len(self._buffer)
