"""Message Signalled Interrupts: the MSI capability (PCI Local Bus 3.0, 6.8.1) and what
MSI and MSI-X share: where messages go (`MsiSink`) and how the KVM side learns about
vector changes (`on_vector_change`).

Sans-KVM: a device calls `notify(vector)`; the capability decides from the registers the
guest programmed whether a message leaves (through the sink, e.g. KVM_SIGNAL_MSI) or
waits as a pending bit. `on_vector_change(vector, address, data, masked)` is called
whenever what a vector would send, or whether it may send, changes, so a KVM backend can
keep one GSI route and irqfd per vector (KVM_SET_GSI_ROUTING + KVM_IRQFD) and drop the
irqfd while the vector is masked (notifications then come back through `notify`, which
records them as pending).

`notify` runs on device threads and config writes on vCPU threads: the state is guarded
by a lock, and the sink and the listener are called with it held, in order; they must not
call back into the capability from another thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from pcivm.pci.regs import PCI_CAP_ID_MSI

if TYPE_CHECKING:
    from pcivm.pci.function import PciFunction


class MsiSink(Protocol):
    def signal_msi(self, address: int, data: int) -> None: ...


# (vector, address, data, masked): masked means the vector may not send now (masked by
# its own bit, by the function mask, or because the capability is disabled).
VectorListener = Callable[[int, int, int, bool], None]

# Message Control (6.8.1.3).
PCI_MSI_FLAGS = 0x02
PCI_MSI_FLAGS_ENABLE = 0x0001
PCI_MSI_FLAGS_QMASK = 0x000E  # Multiple Message Capable: log2 of the vectors wanted
PCI_MSI_FLAGS_QSIZE = 0x0070  # Multiple Message Enable: log2 of the vectors granted
PCI_MSI_FLAGS_64BIT = 0x0080
PCI_MSI_FLAGS_MASKBIT = 0x0100  # per-vector masking capable
PCI_MSI_ADDRESS_LO = 0x04
PCI_MSI_ADDRESS_HI = 0x08  # 64-bit capability only
PCI_MSI_DATA_32, PCI_MSI_DATA_64 = 0x08, 0x0C
PCI_MSI_MASK_32, PCI_MSI_MASK_64 = 0x0C, 0x10
PCI_MSI_PENDING_32, PCI_MSI_PENDING_64 = 0x10, 0x14
MSI_MAX_VECTORS = 32


def watch_config(function: PciFunction, start: int, end: int, callback: Callable[[], None]):
    """Call `callback` after every guest write to config bytes [start, end) of `function`.

    PciFunction has no per-capability write hook: this wraps the instance's write_config
    (a subclass's override included), so capabilities can be stacked."""
    inner = function.write_config

    def write_config(offset: int, size: int, value: int) -> None:
        inner(offset, size, value)
        if offset < end and offset + size > start:
            callback()

    function.write_config = write_config


class MsiCapability:
    """The MSI capability of `function`: `vectors` (a power of two, 1-32) messages,
    a 64-bit or 32-bit address, optional per-vector mask and pending bits."""

    def __init__(
        self,
        function: PciFunction,
        vectors: int = 1,
        addr64: bool = True,
        per_vector_mask: bool = False,
        sink: MsiSink | None = None,
    ):
        if not 1 <= vectors <= MSI_MAX_VECTORS or vectors & (vectors - 1):
            raise ValueError(f"{function.name}: MSI vector count {vectors} is not 1-32, 2^n")
        self.function = function
        self.vectors = vectors
        self.addr64 = addr64
        self.per_vector_mask = per_vector_mask
        self.sink = sink
        self.on_vector_change: VectorListener | None = None
        self._lock = threading.RLock()
        self._data_at = PCI_MSI_DATA_64 if addr64 else PCI_MSI_DATA_32
        self._mask_at = PCI_MSI_MASK_64 if addr64 else PCI_MSI_MASK_32
        self._pending_at = PCI_MSI_PENDING_64 if addr64 else PCI_MSI_PENDING_32
        length = (self._pending_at + 4) if per_vector_mask else (self._data_at + 2)
        config = function.config
        self.offset = config.add_capability(PCI_CAP_ID_MSI, length)
        flags = (vectors.bit_length() - 1) << 1
        flags |= PCI_MSI_FLAGS_64BIT if addr64 else 0
        flags |= PCI_MSI_FLAGS_MASKBIT if per_vector_mask else 0
        self._reg_flags = self.offset + PCI_MSI_FLAGS
        config.set(self._reg_flags, 2, flags)
        config.set_wmask(self._reg_flags, 2, PCI_MSI_FLAGS_ENABLE | PCI_MSI_FLAGS_QSIZE)
        config.set_wmask(self.offset + PCI_MSI_ADDRESS_LO, 4, 0xFFFFFFFC)
        if addr64:
            config.set_wmask(self.offset + PCI_MSI_ADDRESS_HI, 4, 0xFFFFFFFF)
        config.set_wmask(self.offset + self._data_at, 2, 0xFFFF)
        if per_vector_mask:
            config.set_wmask(self.offset + self._mask_at, 4, (1 << vectors) - 1)
        self._state = self._snapshot()
        watch_config(function, self.offset, self.offset + length, self._config_written)

    # -- what the guest programmed ------------------------------------------------------

    def _get(self, reg: int, size: int) -> int:
        return self.function.config.get(self.offset + reg, size)

    @property
    def enabled(self) -> bool:
        return bool(self._get(PCI_MSI_FLAGS, 2) & PCI_MSI_FLAGS_ENABLE)

    @property
    def allocated(self) -> int:
        """Vectors the guest granted (Multiple Message Enable), never more than offered."""
        log2 = (self._get(PCI_MSI_FLAGS, 2) & PCI_MSI_FLAGS_QSIZE) >> 4
        return min(1 << log2, self.vectors)

    def message(self, vector: int) -> tuple[int, int]:
        """(address, data) vector `vector` sends: the low bits of the data carry the vector
        number when several were granted (6.8.1.6)."""
        address = self._get(PCI_MSI_ADDRESS_LO, 4)
        if self.addr64:
            address |= self._get(PCI_MSI_ADDRESS_HI, 4) << 32
        allocated = self.allocated
        data = (self._get(self._data_at, 2) & ~(allocated - 1)) | (vector & (allocated - 1))
        return address, data

    def _vector_masked(self, vector: int) -> bool:
        return self.per_vector_mask and bool(self._get(self._mask_at, 4) >> vector & 1)

    def pending(self, vector: int) -> bool:
        return self.per_vector_mask and bool(self._get(self._pending_at, 4) >> vector & 1)

    def _set_pending(self, vector: int, on: bool) -> None:
        bits = self._get(self._pending_at, 4)
        bits = bits | (1 << vector) if on else bits & ~(1 << vector)
        self.function.config.set(self.offset + self._pending_at, 4, bits)

    # -- the device's side --------------------------------------------------------------

    def notify(self, vector: int = 0) -> bool:
        """Signal `vector`; True if a message left. Vectors beyond those the guest granted
        share them (vector mod granted). Disabled: nothing happens (the device uses INTx);
        masked: the pending bit is set and the message leaves on unmask."""
        with self._lock:
            if not self.enabled or not 0 <= vector < self.vectors:
                return False
            vector &= self.allocated - 1
            if self._vector_masked(vector):
                self._set_pending(vector, True)
                return False
            return self._send(vector)

    def _send(self, vector: int) -> bool:
        if self.sink is None:
            return False
        self.sink.signal_msi(*self.message(vector))
        return True

    def vector_state(self, vector: int) -> tuple[int, int, bool]:
        """(address, data, masked) of `vector` as on_vector_change reports it."""
        with self._lock:
            address, data = self.message(vector)
            masked = not self.enabled or vector >= self.allocated or self._vector_masked(vector)
            return address, data, masked

    def reset(self) -> None:
        """Back to the power-on state (disabled, zeroed registers, nothing pending)."""
        with self._lock:
            config = self.function.config
            flags = self._get(PCI_MSI_FLAGS, 2) & ~(PCI_MSI_FLAGS_ENABLE | PCI_MSI_FLAGS_QSIZE)
            config.set(self._reg_flags, 2, flags)
            end = self._pending_at + 4 if self.per_vector_mask else self._data_at + 2
            for reg in range(PCI_MSI_ADDRESS_LO, end):
                config.set(self.offset + reg, 1, 0)
            self._update()

    # -- guest writes -------------------------------------------------------------------

    def _snapshot(self) -> list[tuple[int, int, bool]]:
        return [self.vector_state(v) for v in range(self.vectors)]

    def _config_written(self) -> None:
        with self._lock:
            self._update()

    def _update(self) -> None:
        before, after = self._state, self._snapshot()
        self._state = after
        for vector, (old, new) in enumerate(zip(before, after, strict=True)):
            if new[2] is False and self.pending(vector):
                self._set_pending(vector, False)
                self._send(vector)
            if old != new and self.on_vector_change:
                self.on_vector_change(vector, *new)
