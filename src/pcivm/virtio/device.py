"""The virtio device base: features, the status machine, config space, queues, errors.

What a transport does with a device (legacy or modern virtio-pci, or the test driver's
direct transport in testing.py):

- `attach(interrupts, modern_capable=...)` once, with an `InterruptSink`;
- `set_legacy(True/False)` to say which interface the driver is using (a transitional
  device has both; the transport knows which one the driver touched);
- features: `read_device_features(select)` / `write_driver_features(select, value)` for
  the modern 32-bit windows, or `device_features` / `set_driver_features` whole (the
  legacy interface sees only bits 0-31);
- `get_status()` / `set_status(value)` (0 resets the device);
- `read_config(offset, size)` / `write_config(offset, data)`, `config_generation`;
- queues: `queues[i].max_size`, `queues[i].set_size/set_addresses`, then
  `enable_queue(i)`; the legacy interface calls `set_queue_pfn(i, pfn)` instead;
- `notify(i)` when the driver kicks queue i (from an ioeventfd worker, not a vCPU).

Threads: every entry point takes the device's `lock` (re-entrant), so a worker thread
may run `process_queue` while a vCPU thread writes the status register. The device calls
the sink with the lock held: `signal_used`/`signal_config` must not block and must not
call back into the device (writing an irqfd is the intended implementation).

Hostile guests (DESIGN.md section 8): a broken ring or request is reported with
`device_error`, never raised to the caller: one log line, then DEVICE_NEEDS_RESET and a
config interrupt for a modern driver, or a stopped queue for a legacy one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import ClassVar, Protocol

from pcivm.memory import GuestMemory, GuestMemoryError
from pcivm.virtio.constants import (
    DEVICE_NEEDS_RESET,
    DRIVER_OK,
    FAILED,
    FEATURES_OK,
    VIRTIO_F_ANY_LAYOUT,
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_VERSION_1,
)
from pcivm.virtio.queue import SplitQueue, VirtqueueError

log = logging.getLogger(__name__)

LEGACY_FEATURES_MASK = 0xFFFF_FFFF


def bit(n: int) -> int:
    return 1 << n


class InterruptSink(Protocol):
    """How a device raises interrupts; supplied by the transport."""

    def signal_used(self, queue_index: int) -> None:
        """A used buffer notification for queue `queue_index`."""

    def signal_config(self) -> None:
        """A configuration change notification (also used for DEVICE_NEEDS_RESET)."""


class NullInterruptSink:
    def signal_used(self, queue_index: int) -> None:
        pass

    def signal_config(self) -> None:
        pass


class VirtioDevice:
    """Common state of a virtio device. Subclasses set `device_type`, `name`, pass
    their queue sizes, config bytes and feature bits, and implement `handle_queue`."""

    device_type: ClassVar[int] = 0
    name: ClassVar[str] = "virtio"
    # Ring features every device here supports (2.7.5.3, 2.7.7, 2.7.10).
    ring_features: ClassVar[int] = bit(VIRTIO_F_INDIRECT_DESC) | bit(VIRTIO_F_EVENT_IDX)

    def __init__(
        self,
        memory: GuestMemory,
        queue_sizes: Sequence[int],
        *,
        features: int = 0,
        config: bytes = b"",
        label: str | None = None,
    ):
        self.memory = memory
        self.label = label or self.name
        self.lock = threading.RLock()
        self.queues = [SplitQueue(memory, size, i) for i, size in enumerate(queue_sizes)]
        self.interrupts: InterruptSink = NullInterruptSink()
        self.modern_capable = True
        self.legacy = False
        self._features = features | self.ring_features
        self._config = bytearray(config)
        self.config_generation = 0
        self.driver_features = 0
        self._status = 0
        self.broken = False

    # --- transport wiring ------------------------------------------------------------------

    def attach(self, interrupts: InterruptSink, *, modern_capable: bool = True) -> None:
        """Connect the transport's interrupt sink. `modern_capable` is False for a
        legacy-only transport: VIRTIO_F_VERSION_1 is then never offered."""
        with self.lock:
            self.interrupts = interrupts
            self.modern_capable = modern_capable
            if not modern_capable:
                self.legacy = True

    def set_legacy(self, legacy: bool) -> None:
        """Which interface the driver uses; the transport sets it while the device is
        reset (legacy: 32-bit features, no FEATURES_OK step, stopped queues on errors)."""
        with self.lock:
            self.legacy = legacy or not self.modern_capable

    # --- features (2.2) --------------------------------------------------------------------

    @property
    def device_features(self) -> int:
        features = self._features
        if self.legacy:
            # Legacy drivers see 32 bits; ANY_LAYOUT says we take any framing (2.7.4.3).
            return (features & LEGACY_FEATURES_MASK) | bit(VIRTIO_F_ANY_LAYOUT)
        return features | bit(VIRTIO_F_VERSION_1)

    def read_device_features(self, select: int) -> int:
        """The modern interface's 32-bit feature window `select` (4.1.4.3)."""
        if select > 1:
            return 0
        return (self.device_features >> (32 * select)) & 0xFFFF_FFFF

    def write_driver_features(self, select: int, value: int) -> None:
        if select > 1:
            return
        with self.lock:
            shift = 32 * select
            features = self.driver_features & ~(0xFFFF_FFFF << shift)
            self.set_driver_features(features | ((value & 0xFFFF_FFFF) << shift))

    def set_driver_features(self, value: int) -> None:
        with self.lock:
            if self._status & (FEATURES_OK | DRIVER_OK):
                log.debug("%s: driver features written after negotiation; ignored", self.label)
                return
            if self.legacy:
                # No FEATURES_OK on the legacy interface: refuse by masking (as QEMU does).
                value &= LEGACY_FEATURES_MASK
                unknown = value & ~self.device_features
                if unknown:
                    log.info("%s: legacy driver wants unoffered features %#x", self.label, unknown)
                value &= self.device_features
            self.driver_features = value

    def has_feature(self, n: int) -> bool:
        return bool(self.driver_features & bit(n))

    def _features_acceptable(self) -> str | None:
        unoffered = self.driver_features & ~self.device_features
        if unoffered:
            return f"driver accepted unoffered features {unoffered:#x}"
        if not self.driver_features & bit(VIRTIO_F_VERSION_1):
            return "modern driver did not accept VIRTIO_F_VERSION_1"
        return self.check_features(self.driver_features)

    def check_features(self, features: int) -> str | None:
        """A device-specific objection to a feature set (None: acceptable)."""
        return None

    # --- status (2.1) ----------------------------------------------------------------------

    def get_status(self) -> int:
        return self._status

    def set_status(self, value: int) -> None:
        value &= 0xFF
        with self.lock:
            if value == 0:
                self.reset()
                return
            old = self._status
            value = (value & ~DEVICE_NEEDS_RESET) | (old & DEVICE_NEEDS_RESET)
            if self.legacy:
                value &= ~FEATURES_OK
            elif value & FEATURES_OK and not old & FEATURES_OK:
                objection = self._features_acceptable()
                if objection:
                    # 2.2.2: the device leaves FEATURES_OK clear; the driver reads it back.
                    log.info("%s: FEATURES_OK refused: %s", self.label, objection)
                    value &= ~FEATURES_OK
            self._status = value
            if value & DRIVER_OK and not old & DRIVER_OK and not value & FAILED:
                if not self.legacy and not value & FEATURES_OK:
                    self.device_error("DRIVER_OK without FEATURES_OK")
                    return
                self._activate()

    def _activate(self) -> None:
        event_idx = self.has_feature(VIRTIO_F_EVENT_IDX)
        indirect = self.has_feature(VIRTIO_F_INDIRECT_DESC)
        for queue in self.queues:
            queue.event_idx, queue.indirect = event_idx, indirect
        self.activate()
        # Kicks that came before DRIVER_OK were ignored: look at every queue once.
        for index in range(len(self.queues)):
            self.process_queue(index)

    def activate(self) -> None:
        """Hook: the driver set DRIVER_OK; features are final."""

    @property
    def driver_ok(self) -> bool:
        return (self._status & (DRIVER_OK | FAILED)) == DRIVER_OK and not self.broken

    # --- reset -----------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the initial state (2.1.1: writing 0 to status; also on a bus reset).
        When this returns, the device no longer touches guest memory."""
        with self.lock:
            self.on_reset()
            self._status = 0
            self.driver_features = 0
            self.broken = False
            for queue in self.queues:
                queue.reset()

    def on_reset(self) -> None:
        """Hook: finish or abandon in-flight work (called with the lock held)."""

    # --- config space ----------------------------------------------------------------------

    @property
    def config(self) -> bytes:
        return bytes(self._config)

    def read_config(self, offset: int, size: int) -> bytes:
        """Device config bytes; outside the config space reads as zeros."""
        with self.lock:
            data = bytes(self._config[max(offset, 0) : max(offset, 0) + max(size, 0)])
            return data.ljust(max(size, 0), b"\0")

    def write_config(self, offset: int, data: bytes) -> None:
        """The driver writes config; a device with writable fields overrides this."""
        log.debug("%s: config write at %#x ignored", self.label, offset)

    def update_config(self, offset: int, data: bytes) -> None:
        """The device changes its config: bump the generation (4.1.4.3) and tell the
        driver with a configuration change notification."""
        with self.lock:
            self._config[offset : offset + len(data)] = data
            self.config_generation = (self.config_generation + 1) & 0xFF
            if self._status & DRIVER_OK:
                self.interrupts.signal_config()

    # --- queues ----------------------------------------------------------------------------

    def enable_queue(self, index: int) -> None:
        """The modern interface's queue_enable = 1, after size and addresses."""
        with self.lock:
            try:
                self.queues[index].enable()
            except VirtqueueError as error:
                self.device_error(str(error), index)

    def set_queue_pfn(self, index: int, pfn: int) -> None:
        """The legacy interface's queue address register (4.1.4.10)."""
        with self.lock:
            try:
                self.queues[index].set_legacy_pfn(pfn)
            except VirtqueueError as error:
                self.device_error(str(error), index)

    def notify(self, index: int, *, on_kick_thread: bool = False) -> None:
        """The driver kicked queue `index` (a value the guest chose: checked).
        `on_kick_thread`: the caller is a thread that only serves this device's kicks
        (not a vCPU), so the device may do blocking work on it."""
        if 0 <= index < len(self.queues):
            self.process_queue(index, on_kick_thread=on_kick_thread)
        else:
            log.debug("%s: notify for queue %d that does not exist", self.label, index)

    def process_queue(self, index: int, *, on_kick_thread: bool = False) -> None:
        """Handle what is available on queue `index`. Callable from any thread; never
        raises for anything the guest did. `on_kick_thread`: as for `notify`."""
        with self.lock:
            self._process_queue_locked(index)

    def _process_queue_locked(self, index: int) -> None:
        """`process_queue` for a caller that holds the device lock already."""
        queue = self.queues[index]
        if not self.driver_ok or not queue.active:
            return
        try:
            self.handle_queue(queue)
        except (VirtqueueError, GuestMemoryError) as error:
            self.device_error(str(error), index)

    def handle_queue(self, queue: SplitQueue) -> None:
        """Device-specific: pop chains, do the work, `complete` them."""
        raise NotImplementedError

    def complete(self, queue: SplitQueue, head: int, written: int) -> None:
        """Return a chain to the driver, and interrupt it if it wants one."""
        with self.lock:
            queue.add_used(head, written)
            if queue.should_interrupt():
                self.interrupts.signal_used(queue.index)

    def drain(self, queue: SplitQueue, work) -> None:
        """Pop and hand every available chain to `work(queue, chain)`, with kicks
        suppressed while we are busy and a re-check after turning them back on (2.7.10)."""
        while True:
            queue.set_notification(False)
            while (chain := queue.pop()) is not None:
                work(queue, chain)
                if not queue.active or self.broken:
                    return
            queue.set_notification(True)
            if not queue.pending():
                return

    # --- the hostile-guest path ------------------------------------------------------------

    def device_error(self, reason: str, queue_index: int | None = None) -> None:
        """The guest broke the rules: one log line; a modern driver gets
        DEVICE_NEEDS_RESET and a config interrupt, a legacy one a stopped queue."""
        with self.lock:
            if self.legacy:
                queues = self.queues if queue_index is None else [self.queues[queue_index]]
                if all(q.stopped for q in queues):
                    return
                log.warning("%s: %s; queue stopped until reset", self.label, reason)
                for q in queues:
                    q.stopped = True
                return
            if self.broken:
                return
            log.warning("%s: %s; device needs reset", self.label, reason)
            self.broken = True
            self._status |= DEVICE_NEEDS_RESET
            if self._status & DRIVER_OK:
                self.interrupts.signal_config()
