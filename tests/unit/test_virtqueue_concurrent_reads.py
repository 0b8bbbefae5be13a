"""What a driver on another CPU can see of the ring fields the device writes while it
polls them: the old value or the new one, never a half-done store.

The reader is a forked process reading this process's memory through /proc/PID/mem, so
it runs truly alongside the device code (a thread would wait for the GIL while a store
runs). Every value the device writes here is non-zero, so a zero read is a store caught
in the middle.
"""

import ctypes
import os
import struct
import time

import pytest

from pcivm.memory import GuestMemory, MiB
from pcivm.virtio.queue import SplitQueue

DESC, AVAIL, USED = 0x10000, 0x11000, 0x12000
SIZE = 256
READ_SECONDS = 0.4
PR_SET_PTRACER, PR_SET_PTRACER_ANY = 0x59616D61, ctypes.c_ulong(-1)


def _reader(parent: int, addresses: list[int]) -> int:
    """Child: read the fields until time is up. Exit 1 on a zero, 2 if nothing was read,
    4 if the kernel refuses it the parent's memory (any other error fails the test)."""
    try:
        fd = os.open(f"/proc/{parent}/mem", os.O_RDONLY)
    except PermissionError:  # ptrace access to the parent refused (Yama, a container)
        return 4
    reads = 0
    end = time.monotonic() + READ_SECONDS
    while time.monotonic() < end:
        for address in addresses:
            if struct.unpack("<H", os.pread(fd, 2, address))[0] == 0:
                return 1
            reads += 1
    return 0 if reads else 2


def test_ring_fields_never_read_as_zero_while_written():
    """The device's used idx and avail_event, and the test driver's avail idx (written
    through GuestMemory.write_u16)."""
    memory = GuestMemory(4 * MiB)
    queue = SplitQueue(memory, SIZE)
    queue.set_addresses(DESC, AVAIL, USED)
    queue.enable()
    queue.event_idx = True
    first, *_ = memory.regions
    host = memory.host_addr + first.guest_phys_addr
    used_idx, avail_event = host + USED + 2, host + USED + 4 + 8 * SIZE
    avail_idx = host + AVAIL + 2
    # Start from non-zero values, before the reader looks.
    queue.used_idx = 0x4000
    queue.add_used(0, 1)
    queue.last_avail_idx = 0x4100
    queue.set_notification(True)
    memory.write_u16(AVAIL + 2, 0x4200)
    # Where Yama restricts ptrace, let the child read its parent (harmless elsewhere).
    ctypes.CDLL(None).prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0)
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            code = _reader(os.getppid(), [used_idx, avail_event, avail_idx])
        finally:
            os._exit(code)
    stores = 0
    while True:
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        for i in range(200):
            if queue.used_idx >= 0x40F0:
                queue.used_idx = 0x4000
            queue.add_used(i % SIZE, 4096)
            queue.last_avail_idx = 0x4100 + (i & 0x7F)
            queue.set_notification(True)
            memory.write_u16(AVAIL + 2, 0x4200 + (i & 0x7F))
            stores += 3
    code = os.waitstatus_to_exitcode(wait_status)
    if code == 4:
        pytest.skip("this system does not let a child read its parent's memory (ptrace)")
    assert stores > 0
    assert code == 0, {1: "a field read as zero mid-store", 2: "the reader read nothing"}.get(
        code, f"reader exit status {code}"
    )
