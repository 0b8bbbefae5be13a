"""Names for the VMM's threads that the host's tools see (top -H, ps -L, /proc/PID/task).

Python names its threads for itself only: every one of them shows as "python" to the
kernel. Each of pcivm's threads tells the kernel its Python name instead (at most 15
bytes are kept), as QEMU's "CPU 0/KVM" and "worker" threads do, so that a profile or a
benchmark can say which thread the CPU went to.
"""

from __future__ import annotations

import ctypes
import threading

PR_SET_NAME = 15
_libc = ctypes.CDLL(None, use_errno=True)


def name_os_thread(name: str | None = None) -> None:
    """Give the calling thread's kernel name: `name`, or its Python name."""
    name = name or threading.current_thread().name
    _libc.prctl(PR_SET_NAME, name.encode(errors="replace")[:15], 0, 0, 0)
