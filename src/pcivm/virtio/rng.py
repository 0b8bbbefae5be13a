"""virtio-rng (virtio 1.2, 5.4): one request queue of device-writable buffers, filled
with entropy from the host's getrandom(2).

QEMU's rate limit is offered under its property names: at most `max_bytes` bytes per
`period` milliseconds. A period starts with the first request served after a refill;
when its budget is spent, requests stay on the queue until a timer refills the budget
at the end of the period (they are never dropped or failed). A request larger than
what is left gets a partial fill, which the driver accepts (used.len says how much).
"""

from __future__ import annotations

import os
import threading

from pcivm.memory import GuestMemory
from pcivm.virtio.constants import VIRTIO_ID_RNG
from pcivm.virtio.device import VirtioDevice
from pcivm.virtio.queue import DescriptorChain, SplitQueue

DEFAULT_QUEUE_SIZE = 256
# os.getrandom returns at most 32 MiB - 1 per call on Linux; take smaller bites.
_CHUNK = 1 << 20


class VirtioRng(VirtioDevice):
    device_type = VIRTIO_ID_RNG
    name = "virtio-rng"

    def __init__(
        self,
        memory: GuestMemory,
        *,
        max_bytes: int | None = None,
        period_ms: int = 1000,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        label: str | None = None,
    ):
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError("max-bytes must be positive")
        if period_ms <= 0:
            raise ValueError("period must be positive")
        super().__init__(memory, [queue_size], label=label)
        self.max_bytes = max_bytes
        self.period = period_ms / 1000
        self._quota = max_bytes
        self._timer: threading.Timer | None = None
        self.bytes_served = 0

    def handle_queue(self, queue: SplitQueue) -> None:
        self.drain(queue, self._serve)

    def _serve(self, queue: SplitQueue, chain: DescriptorChain) -> None:
        want = chain.writable_len
        if self.max_bytes is not None:
            self._start_period()
            want = min(want, self._quota)
        done = 0
        for view in chain.writable_views(0, want):
            for start in range(0, len(view), _CHUNK):
                piece = view[start : start + _CHUNK]
                piece[:] = os.getrandom(len(piece))
            done += len(view)
        if self.max_bytes is not None:
            self._quota -= done
        self.bytes_served += done
        self.complete(queue, chain.head, done)

    def drain(self, queue: SplitQueue, work) -> None:
        # With a rate limit, pop only while there is budget: the rest waits for the timer.
        if self.max_bytes is None:
            super().drain(queue, work)
            return
        while self._quota > 0 and (chain := queue.pop()) is not None:
            work(queue, chain)
            if not queue.active or self.broken:
                return

    def _start_period(self) -> None:
        if self._timer is None:
            self._timer = threading.Timer(self.period, self._refill)
            self._timer.daemon = True
            self._timer.start()

    def _refill(self) -> None:
        with self.lock:
            if self._timer is not threading.current_thread():
                return  # cancelled by a reset that raced with us
            self._timer = None
            self._quota = self.max_bytes
            self.process_queue(0)

    def on_reset(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._quota = self.max_bytes

    def close(self) -> None:
        with self.lock:
            self.on_reset()
