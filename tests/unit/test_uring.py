"""uring.ReadRing: vectored reads done by the kernel's io_uring workers."""

import ctypes
import errno
import os
import struct
import threading
import time

import pytest

from pcivm.uring import ReadRing


@pytest.fixture
def ring():
    ring = ReadRing()
    yield ring
    if not ring.busy:
        ring.close()


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "data"
    content = os.urandom(256 * 1024)
    path.write_bytes(content)
    fd = os.open(path, os.O_RDONLY)
    yield fd, content
    os.close(fd)


def scattered(pages: int):
    """`pages` 4 KiB buffers, each followed by a guard page that must stay untouched."""
    arena = ctypes.create_string_buffer(b"\xa5" * (2 * 4096 * pages))
    base = ctypes.addressof(arena)
    vector = b"".join(struct.pack("<QQ", base + 2 * 4096 * i, 4096) for i in range(pages))
    return arena, vector


def test_a_read_lands_in_every_range_and_nowhere_else(ring, data_file):
    fd, content = data_file
    arena, vector = scattered(16)
    for offset in (0, 64 * 1024, 192 * 1024):  # the ring is used again and again
        ring.start_readv(fd, vector, 16, offset, 0, keep=arena)
        assert ring.busy
        assert ring.wait() == 16 * 4096
        assert not ring.busy and not ring.done
        raw = arena.raw
        for i in range(16):
            page = raw[2 * 4096 * i : 2 * 4096 * i + 4096]
            assert page == content[offset + 4096 * i : offset + 4096 * (i + 1)]
            assert raw[2 * 4096 * i + 4096 : 2 * 4096 * (i + 1)] == b"\xa5" * 4096


def test_a_read_past_the_end_of_the_file_is_short(ring, data_file):
    fd, content = data_file
    arena, vector = scattered(4)
    ring.start_readv(fd, vector, 4, len(content) - 4096, 0, keep=arena)
    assert ring.wait() == 4096
    ring.start_readv(fd, vector, 4, len(content), 0, keep=arena)
    assert ring.wait() == 0


def test_errors_come_back_from_wait_and_the_ring_goes_on(ring, data_file):
    fd, content = data_file
    arena, vector = scattered(1)
    ring.start_readv(-1, vector, 1, 0, 0, keep=arena)
    with pytest.raises(OSError) as raised:
        ring.wait()
    assert raised.value.errno == errno.EBADF
    ring.start_readv(fd, vector, 1, 0, 1 << 31, keep=arena)  # the flags reach the kernel
    with pytest.raises(OSError) as raised:
        ring.wait()
    assert raised.value.errno == errno.EOPNOTSUPP  # a flag no kernel knows
    ring.start_readv(fd, vector, 1, 0, 0, keep=arena)
    assert ring.wait() == 4096 and arena.raw[:4096] == content[:4096]


def test_one_read_at_a_time(ring, data_file):
    fd, _ = data_file
    arena, vector = scattered(1)
    with pytest.raises(RuntimeError, match="no read to wait for"):
        ring.wait()
    ring.start_readv(fd, vector, 1, 0, 0, keep=arena)
    with pytest.raises(RuntimeError, match="one read at a time"):
        ring.start_readv(fd, vector, 1, 0, 0, keep=arena)
    assert ring.wait() == 4096


def test_the_ring_holds_what_the_kernel_uses_until_the_read_is_done(ring, data_file):
    fd, _ = data_file
    arena, vector = scattered(2)
    ring.start_readv(fd, vector, 2, 0, 0, keep=arena)
    assert ring._held == (vector, arena)
    ring.wait()
    assert ring._held is None


def test_close_unmaps_and_closes(data_file):
    ring = ReadRing()
    fd = ring._fd
    ring.close()
    with pytest.raises(OSError):
        os.fstat(fd)
    assert ring._maps == []
    ring.close()  # twice is harmless


def test_a_spinning_wait_sees_the_end_of_a_read_or_gives_up_and_sleeps(ring, data_file):
    fd, content = data_file
    arena, vector = scattered(4)
    ring.start_readv(fd, vector, 4, 0, 0, keep=arena)
    started = time.monotonic()
    assert ring.wait(spin=60.0) == 4 * 4096  # the spin ends with the read, not its budget
    assert time.monotonic() - started < 30
    assert arena.raw[:4096] == content[:4096]
    # A read that waits for a writer: the spin runs out, the wait sleeps until the data.
    readable, writable = os.pipe()
    try:
        ring.start_readv(readable, vector, 1, 0, 0, keep=arena)
        writer = threading.Timer(0.3, os.write, (writable, b"late"))
        writer.start()
        started, cpu = time.monotonic(), time.thread_time()
        assert ring.wait(spin=0.05) == 4
        assert time.monotonic() - started >= 0.25
        assert time.thread_time() - cpu < 0.2  # asleep, not spinning, for the rest
        assert arena.raw[:4] == b"late"
        writer.join()
    finally:
        os.close(readable)
        os.close(writable)
