"""The Python test driver's PCI side: a guest's view of a `VirtioPciFunction`, through
its config space and BARs only (no KVM), for the legacy and the modern interface.

`LegacyPciTransport` and `ModernPciTransport` implement the test driver's transport
protocol (pcivm.virtio.testing.VirtioTransport) the way Linux's virtio_pci_legacy.c and
virtio_pci_modern.c do: find the capabilities, program MSI-X, set up queues through the
PFN or the address registers, kick through the notify register.
"""

from __future__ import annotations

from pcivm.memory import GuestMemory
from pcivm.pci import regs as R
from pcivm.virtio.pci_transport import (
    COMMON_DF,
    COMMON_DFSELECT,
    COMMON_GF,
    COMMON_GFSELECT,
    COMMON_MSIX,
    COMMON_Q_AVAILLO,
    COMMON_Q_DESCLO,
    COMMON_Q_ENABLE,
    COMMON_Q_MSIX,
    COMMON_Q_NOFF,
    COMMON_Q_SELECT,
    COMMON_Q_SIZE,
    COMMON_Q_USEDLO,
    COMMON_STATUS,
    VIRTIO_MSI_QUEUE_VECTOR,
    VIRTIO_PCI_CAP_COMMON_CFG,
    VIRTIO_PCI_CAP_DEVICE_CFG,
    VIRTIO_PCI_CAP_ISR_CFG,
    VIRTIO_PCI_CAP_NOTIFY_CFG,
    VIRTIO_PCI_GUEST_FEATURES,
    VIRTIO_PCI_HOST_FEATURES,
    VIRTIO_PCI_QUEUE_NOTIFY,
    VIRTIO_PCI_QUEUE_NUM,
    VIRTIO_PCI_QUEUE_PFN,
    VIRTIO_PCI_QUEUE_SEL,
    VIRTIO_PCI_STATUS,
    VirtioPciFunction,
)
from pcivm.virtio.testing import DriverError, InterruptRecorder

MSI_ADDRESS = 0xFEE00000
MSIX_ENABLE = 0x8000


class _Sinks:
    """Plays the interrupt controller: MSI data is the vector; INTx asks the ISR."""

    def __init__(self, transport):
        self._t = transport

    def signal_msi(self, address: int, data: int) -> None:
        self._t.msi_received(data)

    def set_irq(self, irq: int, level: int) -> None:  # unused: INTx comes via on_intx
        pass


class _PciTransport:
    legacy = False

    def __init__(self, function: VirtioPciFunction, memory: GuestMemory, *, msix: bool = True):
        self.function = function
        self.interrupts = InterruptRecorder()
        self._vector_queue: dict[int, int] = {}
        function.realize(memory, _Sinks(self))
        function.on_intx = lambda _f, level: self._intx(level)
        # Decode on, as firmware leaves it; BAR addresses are irrelevant without buses.
        function.write_config(R.PCI_COMMAND, 2, R.PCI_COMMAND_IO | R.PCI_COMMAND_MEMORY)
        self.use_msix = msix
        if msix:
            cap = dict(function.config.capabilities())[R.PCI_CAP_ID_MSIX]
            control = function.read_config(cap + 2, 2)
            function.write_config(cap + 2, 2, control | MSIX_ENABLE)
            table = function.bars[function.msix.table_bar].handler
            for vector in range(function.msix.vectors):
                base = function.msix.table_offset + 16 * vector
                table.write(base, 4, MSI_ADDRESS)
                table.write(base + 4, 4, 0)
                table.write(base + 8, 4, vector)
                table.write(base + 12, 4, 0)  # unmasked

    def msi_received(self, vector: int) -> None:
        queue = self._vector_queue.get(vector)
        if queue is None:
            self.interrupts.signal_config()
        else:
            self.interrupts.signal_used(queue)

    def _intx(self, level: int) -> None:
        if level:
            isr = self.read_isr()
            if isr & 1:
                for queue in range(len(self.function.device.queues)):
                    self.interrupts.signal_used(queue)
            if isr & 2:
                self.interrupts.signal_config()

    def bind_vector(self, queue: int, vector: int) -> None:
        self._vector_queue[vector] = queue


class LegacyPciTransport(_PciTransport):
    """The legacy header in IO BAR0 (virtio_pci_legacy.c)."""

    legacy = True

    def __init__(self, function: VirtioPciFunction, memory: GuestMemory, *, msix: bool = True):
        if 0 not in function.bars:
            raise DriverError("no IO BAR0: a legacy driver cannot drive this device")
        super().__init__(function, memory, msix=msix)
        self.io = function.bars[0].handler

    def read_isr(self) -> int:
        return self.io.read(19, 1)

    def get_device_features(self) -> int:
        return self.io.read(VIRTIO_PCI_HOST_FEATURES, 4)

    def set_driver_features(self, features: int) -> None:
        self.io.write(VIRTIO_PCI_GUEST_FEATURES, 4, features & 0xFFFFFFFF)

    def get_status(self) -> int:
        return self.io.read(VIRTIO_PCI_STATUS, 1)

    def set_status(self, status: int) -> None:
        self.io.write(VIRTIO_PCI_STATUS, 1, status)

    def _config_base(self) -> int:
        return 24 if self.function.msix.enabled else 20

    def read_config(self, offset: int, size: int) -> bytes:
        base = self._config_base()
        return bytes(self.io.read(base + offset + i, 1) for i in range(size))

    def write_config(self, offset: int, data: bytes) -> None:
        for i, byte in enumerate(data):
            self.io.write(self._config_base() + offset + i, 1, byte)

    def queue_max_size(self, index: int) -> int:
        self.io.write(VIRTIO_PCI_QUEUE_SEL, 2, index)
        return self.io.read(VIRTIO_PCI_QUEUE_NUM, 2)

    def setup_queue(self, index: int, size: int, desc: int, avail: int, used: int) -> None:
        self.io.write(VIRTIO_PCI_QUEUE_SEL, 2, index)
        if self.use_msix:
            self.io.write(VIRTIO_MSI_QUEUE_VECTOR, 2, index)
            self.bind_vector(index, index)
        self.io.write(VIRTIO_PCI_QUEUE_PFN, 4, desc >> 12)

    def notify(self, index: int) -> None:
        self.io.write(VIRTIO_PCI_QUEUE_NOTIFY, 2, index)


class ModernPciTransport(_PciTransport):
    """The vendor capabilities and the structures in BAR4 (virtio_pci_modern_dev.c)."""

    def __init__(self, function: VirtioPciFunction, memory: GuestMemory, *, msix: bool = True):
        caps = {}
        for cap_id, offset in function.config.capabilities():
            if cap_id == R.PCI_CAP_ID_VNDR:
                cfg_type = function.read_config(offset + 3, 1)
                caps.setdefault(cfg_type, offset)
        if VIRTIO_PCI_CAP_COMMON_CFG not in caps:
            raise DriverError("no common configuration capability: not a modern device")
        super().__init__(function, memory, msix=msix)

        def region(cfg_type: int) -> tuple[object, int]:
            at = caps[cfg_type]
            bar = function.read_config(at + 4, 1)
            return function.bars[bar].handler, function.read_config(at + 8, 4)

        self.common, self.common_at = region(VIRTIO_PCI_CAP_COMMON_CFG)
        self.isr, self.isr_at = region(VIRTIO_PCI_CAP_ISR_CFG)
        self.dev, self.dev_at = region(VIRTIO_PCI_CAP_DEVICE_CFG)
        self.notify_bar, self.notify_at = region(VIRTIO_PCI_CAP_NOTIFY_CFG)
        self.multiplier = function.read_config(caps[VIRTIO_PCI_CAP_NOTIFY_CFG] + 16, 4)

    def _r(self, offset: int, size: int) -> int:
        return self.common.read(self.common_at + offset, size)

    def _w(self, offset: int, size: int, value: int) -> None:
        self.common.write(self.common_at + offset, size, value)

    def read_isr(self) -> int:
        return self.isr.read(self.isr_at, 1)

    def get_device_features(self) -> int:
        self._w(COMMON_DFSELECT, 4, 0)
        low = self._r(COMMON_DF, 4)
        self._w(COMMON_DFSELECT, 4, 1)
        return low | self._r(COMMON_DF, 4) << 32

    def set_driver_features(self, features: int) -> None:
        self._w(COMMON_GFSELECT, 4, 0)
        self._w(COMMON_GF, 4, features & 0xFFFFFFFF)
        self._w(COMMON_GFSELECT, 4, 1)
        self._w(COMMON_GF, 4, features >> 32)

    def get_status(self) -> int:
        return self._r(COMMON_STATUS, 1)

    def set_status(self, status: int) -> None:
        self._w(COMMON_STATUS, 1, status)
        if self.use_msix and status and self._r(COMMON_MSIX, 2) == 0xFFFF:
            self._w(COMMON_MSIX, 2, self.function.msix.vectors - 1)

    def read_config(self, offset: int, size: int) -> bytes:
        return bytes(self.dev.read(self.dev_at + offset + i, 1) for i in range(size))

    def write_config(self, offset: int, data: bytes) -> None:
        for i, byte in enumerate(data):
            self.dev.write(self.dev_at + offset + i, 1, byte)

    def queue_max_size(self, index: int) -> int:
        self._w(COMMON_Q_SELECT, 2, index)
        return self._r(COMMON_Q_SIZE, 2)

    def setup_queue(self, index: int, size: int, desc: int, avail: int, used: int) -> None:
        self._w(COMMON_Q_SELECT, 2, index)
        self._w(COMMON_Q_SIZE, 2, size)
        for offset, address in ((COMMON_Q_DESCLO, desc), (COMMON_Q_AVAILLO, avail),
                                (COMMON_Q_USEDLO, used)):  # fmt: skip
            self._w(offset, 4, address & 0xFFFFFFFF)
            self._w(offset + 4, 4, address >> 32)
        if self.use_msix:
            self._w(COMMON_Q_MSIX, 2, index)
            self.bind_vector(index, index)
        self._w(COMMON_Q_ENABLE, 2, 1)

    def notify(self, index: int) -> None:
        self._w(COMMON_Q_SELECT, 2, index)
        offset = self._r(COMMON_Q_NOFF, 2) * self.multiplier
        self.notify_bar.write(self.notify_at + offset, 2, index)
