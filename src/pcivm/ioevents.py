"""Guest kicks that never reach the vCPU thread: one ioeventfd per virtio queue notify
register, and a worker thread per device that waits on them and runs the device's work.

The VMM wires this up; devices only say where their notify registers are
(`notify_addresses()`) and when those move (`on_notify_moved`), and take kicks through
`device.notify(queue)`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading

from pcivm.kvm.api import VirtualMachine
from pcivm.thread_names import name_os_thread

log = logging.getLogger(__name__)

IO = "io"


class IoEventWorker:
    """The eventfds of one function's queues, registered with KVM at the notify addresses
    the BARs have now, and the thread that serves them."""

    def __init__(self, vm: VirtualMachine, function):
        self._vm = vm
        self._function = function
        self._eventfds: dict[int, int] = {}  # queue -> eventfd
        self._registered: list[tuple[int, str, int, int, int | None]] = []
        self._lock = threading.Lock()
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(
            target=self._serve, name=f"{function.name}-kicks", daemon=True
        )
        function.on_notify_moved = lambda _f: self.update()
        self.update()
        self._thread.start()

    def _eventfd(self, queue: int) -> int:
        if queue not in self._eventfds:
            self._eventfds[queue] = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        return self._eventfds[queue]

    def update(self) -> None:
        """Move the ioeventfds to where the notify registers are now."""
        with self._lock:
            for fd, space, addr, length, datamatch in self._registered:
                try:
                    self._vm.ioeventfd(
                        fd, addr, length, pio=space == IO, datamatch=datamatch, deassign=True
                    )
                except OSError as exc:
                    log.debug("%s: deassigning an ioeventfd: %s", self._function.name, exc)
            self._registered = []
            for space, addr, length, datamatch, queue in self._function.notify_addresses():
                fd = self._eventfd(queue)
                try:
                    self._vm.ioeventfd(fd, addr, length, pio=space == IO, datamatch=datamatch)
                except OSError as exc:
                    # Without it the write still exits and reaches the device the slow way.
                    log.debug("%s: no ioeventfd at %#x: %s", self._function.name, addr, exc)
                    continue
                self._registered.append((fd, space, addr, length, datamatch))
        os.write(self._stop_w, b"u")  # the poller picks up new eventfds

    def _serve(self) -> None:
        name_os_thread(f"kick {self._function.name}")
        poller = select.poll()
        poller.register(self._stop_r, select.POLLIN)
        by_fd: dict[int, int] = {}  # eventfd -> queue, redone when `update` says so
        changed = True
        while True:
            if changed:
                with self._lock:
                    current = {fd: q for q, fd in self._eventfds.items()}
                for fd in current.keys() - by_fd.keys():
                    poller.register(fd, select.POLLIN)
                by_fd, changed = current, False
            for fd, _events in poller.poll():
                if fd == self._stop_r:
                    if os.read(self._stop_r, 64).endswith(b"s"):
                        return
                    changed = True
                    continue
                try:
                    os.eventfd_read(fd)
                except BlockingIOError:
                    continue
                queue = by_fd.get(fd)
                device = self._function.device
                if queue is not None and device is not None:
                    try:
                        device.notify(queue, on_kick_thread=True)
                    except Exception:  # a device bug must not end the worker silently
                        log.exception("%s: queue %d failed", self._function.name, queue)

    def close(self) -> None:
        os.write(self._stop_w, b"s")
        self._thread.join(2)
        with self._lock:
            for fd, space, addr, length, datamatch in self._registered:
                with contextlib.suppress(OSError):
                    self._vm.ioeventfd(
                        fd, addr, length, pio=space == IO, datamatch=datamatch, deassign=True
                    )
            self._registered = []
            for fd in self._eventfds.values():
                os.close(fd)
            self._eventfds.clear()
        os.close(self._stop_r)
        os.close(self._stop_w)
