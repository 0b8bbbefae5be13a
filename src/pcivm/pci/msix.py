"""MSI-X (PCI Local Bus 3.0, 6.8.2): the capability in config space, the vector table and
the Pending Bit Array that live in a memory BAR, and delivery.

The device decides where the table and the PBA go: `table_handler` and `pba_handler`
serve accesses relative to their own start, and `bar_handler(index)` serves a whole BAR
by its offsets, so the table and the PBA can share one BAR. QEMU's virtio devices put
both in a BAR of their own (`exclusive_bar_layout`: table at 0, PBA at half the BAR,
4 KiB for up to 128 vectors).

Hostile guest: every access to the table or the PBA, of any offset and size, is answered
(unimplemented bytes read 0) or ignored, and never raises. Table writes take effect only
as the aligned DWORD or QWORD accesses the spec allows (6.8.2.9).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pcivm.pci.function import MEM, Bar
from pcivm.pci.msi import MsiSink, VectorListener, watch_config
from pcivm.pci.regs import PCI_CAP_ID_MSIX

if TYPE_CHECKING:
    from pcivm.pci.function import PciFunction

# Capability registers (6.8.2.1-6.8.2.5).
PCI_MSIX_FLAGS = 0x02
PCI_MSIX_FLAGS_QSIZE = 0x07FF  # table size - 1
PCI_MSIX_FLAGS_MASKALL = 0x4000
PCI_MSIX_FLAGS_ENABLE = 0x8000
PCI_MSIX_TABLE = 0x04  # table offset | BIR
PCI_MSIX_PBA = 0x08  # PBA offset | BIR
PCI_MSIX_BIR_MASK = 0x7
PCI_CAP_MSIX_SIZEOF = 12
# Table entries (6.8.2.6-6.8.2.9).
PCI_MSIX_ENTRY_SIZE = 16
PCI_MSIX_ENTRY_LOWER_ADDR = 0x0
PCI_MSIX_ENTRY_UPPER_ADDR = 0x4
PCI_MSIX_ENTRY_DATA = 0x8
PCI_MSIX_ENTRY_VECTOR_CTRL = 0xC
PCI_MSIX_ENTRY_CTRL_MASKBIT = 0x1
MSIX_MAX_VECTORS = 2048
BAR_COUNT = 6
MSIX_MIN_BAR_SIZE = 4096  # the table and the PBA get a page of their own


def pba_size(vectors: int) -> int:
    """The PBA is whole QWORDs, one bit per vector (6.8.2.10)."""
    return (vectors + 63) // 64 * 8


def exclusive_bar_layout(vectors: int) -> tuple[int, int, int]:
    """(BAR size, table offset, PBA offset) for a BAR holding only the MSI-X structures,
    laid out as QEMU lays out its virtio devices' MSI-X BAR: the table at 0, the PBA in
    the upper half, the size a power of two of at least 4 KiB."""
    needed = 2 * max(vectors * PCI_MSIX_ENTRY_SIZE, pba_size(vectors))
    size = max(MSIX_MIN_BAR_SIZE, 1 << (needed - 1).bit_length())
    return size, 0, size // 2


class _Region:
    """A BarHandler for one of the structures, relative to its start."""

    def __init__(self, read, write):
        self.read = read
        self.write = write


class _BarRegion:
    """A BarHandler for a BAR holding the table and/or the PBA at their offsets."""

    def __init__(self, ranges: list[tuple[int, int, _Region]]):
        self._ranges = ranges

    def _find(self, offset: int, size: int) -> tuple[_Region, int] | None:
        for start, length, region in self._ranges:
            if start <= offset and offset + size <= start + length:
                return region, offset - start
        return None

    def read(self, offset: int, size: int) -> int:
        hit = self._find(offset, size)
        return hit[0].read(hit[1], size) if hit else 0

    def write(self, offset: int, size: int, value: int) -> None:
        hit = self._find(offset, size)
        if hit:
            hit[0].write(hit[1], size, value)


class MsixCapability:
    """MSI-X for `function`: `vectors` table entries at `table_offset` of BAR `table_bar`,
    the PBA at `pba_offset` of BAR `pba_bar`. Entries start masked (6.8.2.9)."""

    def __init__(
        self,
        function: PciFunction,
        vectors: int,
        table_bar: int,
        table_offset: int,
        pba_bar: int,
        pba_offset: int,
        sink: MsiSink | None = None,
    ):
        name = function.name
        if not 1 <= vectors <= MSIX_MAX_VECTORS:
            raise ValueError(f"{name}: MSI-X vector count {vectors} is not 1-2048")
        for bar, offset in ((table_bar, table_offset), (pba_bar, pba_offset)):
            if not 0 <= bar < BAR_COUNT or offset < 0 or offset & PCI_MSIX_BIR_MASK:
                raise ValueError(f"{name}: MSI-X structure at BAR{bar}+{offset:#x} is invalid")
        self.table_size = vectors * PCI_MSIX_ENTRY_SIZE
        self.pba_size = pba_size(vectors)
        self._check_placement(function, table_bar, table_offset, self.table_size)
        self._check_placement(function, pba_bar, pba_offset, self.pba_size)
        if table_bar == pba_bar and (
            table_offset < pba_offset + self.pba_size
            and pba_offset < table_offset + self.table_size
        ):
            raise ValueError(f"{name}: the MSI-X table and PBA overlap in BAR{table_bar}")
        self.function = function
        self.vectors = vectors
        self.table_bar, self.table_offset = table_bar, table_offset
        self.pba_bar, self.pba_offset = pba_bar, pba_offset
        self.sink = sink
        self.on_vector_change: VectorListener | None = None
        self._lock = threading.RLock()
        self._table = bytearray(self.table_size)
        self._pending = 0  # bit v: vector v is pending
        config = function.config
        self.offset = config.add_capability(PCI_CAP_ID_MSIX, PCI_CAP_MSIX_SIZEOF)
        config.set(self.offset + PCI_MSIX_FLAGS, 2, vectors - 1)
        config.set_wmask(
            self.offset + PCI_MSIX_FLAGS, 2, PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL
        )
        config.set(self.offset + PCI_MSIX_TABLE, 4, table_offset | table_bar)
        config.set(self.offset + PCI_MSIX_PBA, 4, pba_offset | pba_bar)
        self.table_handler = _Region(self._read_table, self._write_table)
        self.pba_handler = _Region(self._read_pba, self._ignore_write)
        self._reset_table()
        self._state = self._snapshot()
        watch_config(function, self.offset, self.offset + PCI_CAP_MSIX_SIZEOF, self._config_written)

    @staticmethod
    def _check_placement(function: PciFunction, index: int, offset: int, length: int) -> None:
        bar = function.bars.get(index)
        if bar is None:
            return  # the device adds it later
        if bar.kind != MEM or offset + length > bar.size:
            raise ValueError(
                f"{function.name}: MSI-X structure at BAR{index}+{offset:#x} "
                f"({length:#x} bytes) does not fit that memory BAR"
            )

    def bar_handler(self, index: int) -> _BarRegion:
        """A handler for BAR `index` serving whichever MSI-X structures it holds at their
        offsets; other offsets read 0 and ignore writes."""
        ranges = []
        if index == self.table_bar:
            ranges.append((self.table_offset, self.table_size, self.table_handler))
        if index == self.pba_bar:
            ranges.append((self.pba_offset, self.pba_size, self.pba_handler))
        return _BarRegion(ranges)

    # -- state --------------------------------------------------------------------------

    def _control(self) -> int:
        return self.function.config.get(self.offset + PCI_MSIX_FLAGS, 2)

    @property
    def enabled(self) -> bool:
        return bool(self._control() & PCI_MSIX_FLAGS_ENABLE)

    @property
    def function_masked(self) -> bool:
        return bool(self._control() & PCI_MSIX_FLAGS_MASKALL)

    def _entry(self, vector: int, field: int) -> int:
        at = vector * PCI_MSIX_ENTRY_SIZE + field
        return int.from_bytes(self._table[at : at + 4], "little")

    def message(self, vector: int) -> tuple[int, int]:
        """(address, data) of table entry `vector`."""
        address = self._entry(vector, PCI_MSIX_ENTRY_LOWER_ADDR)
        address |= self._entry(vector, PCI_MSIX_ENTRY_UPPER_ADDR) << 32
        return address, self._entry(vector, PCI_MSIX_ENTRY_DATA)

    def vector_masked(self, vector: int) -> bool:
        return bool(self._entry(vector, PCI_MSIX_ENTRY_VECTOR_CTRL) & PCI_MSIX_ENTRY_CTRL_MASKBIT)

    def pending(self, vector: int) -> bool:
        return bool(self._pending >> vector & 1)

    def vector_state(self, vector: int) -> tuple[int, int, bool]:
        """(address, data, masked) as on_vector_change reports it: masked when the vector
        may not send now (its mask bit, the function mask, or MSI-X disabled)."""
        with self._lock:
            control = self._control()
            masked = (
                not control & PCI_MSIX_FLAGS_ENABLE
                or bool(control & PCI_MSIX_FLAGS_MASKALL)
                or self.vector_masked(vector)
            )
            return (*self.message(vector), masked)

    # -- the device's side --------------------------------------------------------------

    def notify(self, vector: int) -> bool:
        """Signal `vector`; True if a message left. Masked (by its entry or the function
        mask): the pending bit is set and the message leaves when unmasked. MSI-X
        disabled: nothing happens (6.8.2.3: the function may not use MSI-X then; the
        device raises INTx instead). A vector the table does not have is ignored."""
        if self.send_now(vector):
            return True
        with self._lock:
            if not 0 <= vector < self.vectors or not self.enabled:
                return False
            if self.function_masked or self.vector_masked(vector):
                self._pending |= 1 << vector
                return False
            return self._send(vector)

    def send_now(self, vector: int) -> bool:
        """Signal `vector` if it may send now (MSI-X enabled, neither it nor the function
        masked), as its state was last recorded; False, having done nothing, otherwise.

        Without the lock: this is a device's every interrupt, and the lock and the config
        and table reads behind `enabled` and `message` cost ~4 us natively, ~0.35 ms in
        the nested box, between a virtio-blk read's end and the guest hearing of it.
        `_update` records every change the guest makes before acting on it, so a message
        sent here on the state just replaced is one sent just before the guest's write,
        which the guest cannot tell apart; a masked vector takes `notify`'s locked path,
        which sets its pending bit."""
        if not 0 <= vector < self.vectors or self.sink is None:
            return False
        address, data, masked = self._state[vector]
        if masked:
            return False
        self.sink.signal_msi(address, data)
        return True

    def clear_pending(self, vector: int) -> None:
        """The event behind a pending vector went away (6.8.2.10 lets the function clear
        its pending bit then)."""
        with self._lock:
            if 0 <= vector < self.vectors:
                self._pending &= ~(1 << vector)

    def _send(self, vector: int) -> bool:
        if self.sink is None:
            return False
        self.sink.signal_msi(*self.message(vector))
        return True

    def reset(self) -> None:
        """Power-on state: disabled, not function-masked, every entry zeroed and masked,
        nothing pending."""
        with self._lock:
            flags = self._control() & ~(PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL)
            self.function.config.set(self.offset + PCI_MSIX_FLAGS, 2, flags)
            self._reset_table()
            self._pending = 0
            self._update()

    def _reset_table(self) -> None:
        self._table[:] = bytes(self.table_size)
        for vector in range(self.vectors):
            at = vector * PCI_MSIX_ENTRY_SIZE + PCI_MSIX_ENTRY_VECTOR_CTRL
            self._table[at] = PCI_MSIX_ENTRY_CTRL_MASKBIT

    # -- guest accesses -----------------------------------------------------------------

    def _read_table(self, offset: int, size: int) -> int:
        with self._lock:
            return _read_bytes(self._table, offset, size)

    def _write_table(self, offset: int, size: int, value: int) -> None:
        if size not in (4, 8) or offset % size or not 0 <= offset <= self.table_size - size:
            return
        value &= (1 << (8 * size)) - 1
        with self._lock:
            for at in range(offset, offset + size, 4):
                dword = value & 0xFFFFFFFF
                value >>= 32
                if at % PCI_MSIX_ENTRY_SIZE == PCI_MSIX_ENTRY_VECTOR_CTRL:
                    dword &= PCI_MSIX_ENTRY_CTRL_MASKBIT  # the other bits are reserved
                self._table[at : at + 4] = dword.to_bytes(4, "little")
            self._update((offset // PCI_MSIX_ENTRY_SIZE,))

    def _read_pba(self, offset: int, size: int) -> int:
        with self._lock:
            pba = self._pending.to_bytes(self.pba_size, "little")
        return _read_bytes(pba, offset, size)

    @staticmethod
    def _ignore_write(offset: int, size: int, value: int) -> None:
        """The PBA is read-only (6.8.2.10)."""

    def _config_written(self) -> None:
        with self._lock:
            self._update()

    def _snapshot(self) -> list[tuple[int, int, bool]]:
        return [self.vector_state(v) for v in range(self.vectors)]

    def _update(self, vectors: Iterable[int] | None = None) -> None:
        """After a change the guest made to `vectors` (None: the capability, so all): send
        what became unmasked while pending, and tell the listener about vectors whose
        message or mask changed."""
        for vector in range(self.vectors) if vectors is None else vectors:
            old, new = self._state[vector], self.vector_state(vector)
            self._state[vector] = new
            if not new[2] and self.pending(vector):
                self._pending &= ~(1 << vector)
                self._send(vector)
            if old != new and self.on_vector_change:
                self.on_vector_change(vector, *new)


def _read_bytes(data: bytes | bytearray, offset: int, size: int) -> int:
    """`size` bytes from `offset`, little-endian; bytes outside `data` read 0."""
    if size <= 0:
        return 0
    out = 0
    for i in range(size):
        at = offset + i
        if 0 <= at < len(data):
            out |= data[at] << (8 * i)
    return out


def add_exclusive_msix(function: PciFunction, bar_index: int, vectors: int) -> MsixCapability:
    """Give `function` an MSI-X capability whose table and PBA fill memory BAR
    `bar_index` of their own (`exclusive_bar_layout`), as QEMU's msix_init_exclusive_bar
    does for virtio devices and root ports."""
    size, table, pba = exclusive_bar_layout(vectors)
    bar = function.add_bar(Bar(bar_index, MEM, size, name="msix"))
    msix = MsixCapability(function, vectors, bar_index, table, bar_index, pba)
    bar.handler = msix.bar_handler(bar_index)
    return msix


def message_capabilities(function: PciFunction) -> list:
    """The MSI-X and MSI capabilities `function` has (as its `msix` and `msi`)."""
    found = (getattr(function, "msix", None), getattr(function, "msi", None))
    return [capability for capability in found if capability is not None]
