"""virtio over PCI: one PCI function carrying a virtio device through the legacy
interface (an IO BAR, virtio 0.9.5 / spec 4.1.4.10), the modern interface (vendor
capabilities pointing into a memory BAR, spec 4.1.4), or both (a transitional device).

The BAR layout is QEMU's, so guests see what they see under QEMU:
BAR0 IO legacy header + device config, BAR1 MSI-X table and PBA, BAR4 64-bit
prefetchable memory with the common, ISR, device and notify structures 4 KiB apart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from pcivm.memory import GuestMemory
from pcivm.pci import regs as R
from pcivm.pci.express import add_express_capability
from pcivm.pci.function import IO, MEM, Bar, PciFunction
from pcivm.pci.msix import add_exclusive_msix
from pcivm.virtio.constants import (
    PCI_VENDOR_ID_REDHAT_QUMRANET,
    TRANSITIONAL_DEVICE_IDS,
    VIRTIO_PCI_MODERN_DEVICE_ID_BASE,
)
from pcivm.virtio.device import VirtioDevice
from pcivm.virtio.queue import VirtqueueError

log = logging.getLogger(__name__)

# Legacy header (4.1.4.10), in IO BAR0.
VIRTIO_PCI_HOST_FEATURES = 0
VIRTIO_PCI_GUEST_FEATURES = 4
VIRTIO_PCI_QUEUE_PFN = 8
VIRTIO_PCI_QUEUE_NUM = 12
VIRTIO_PCI_QUEUE_SEL = 14
VIRTIO_PCI_QUEUE_NOTIFY = 16
VIRTIO_PCI_STATUS = 18
VIRTIO_PCI_ISR = 19
VIRTIO_MSI_CONFIG_VECTOR = 20
VIRTIO_MSI_QUEUE_VECTOR = 22
VIRTIO_PCI_CONFIG_OFF_NO_MSIX = 20
VIRTIO_PCI_CONFIG_OFF_MSIX = 24
VIRTIO_MSI_NO_VECTOR = 0xFFFF
VIRTIO_PCI_ISR_QUEUE = 0x1
VIRTIO_PCI_ISR_CONFIG = 0x2

# Modern interface (4.1.4): vendor capability types and the common config layout.
VIRTIO_PCI_CAP_COMMON_CFG = 1
VIRTIO_PCI_CAP_NOTIFY_CFG = 2
VIRTIO_PCI_CAP_ISR_CFG = 3
VIRTIO_PCI_CAP_DEVICE_CFG = 4
VIRTIO_PCI_CAP_PCI_CFG = 5
VIRTIO_PCI_CAP_LEN = 16
VIRTIO_PCI_NOTIFY_CAP_LEN = 20
VIRTIO_PCI_CFG_CAP_LEN = 20
COMMON_DFSELECT, COMMON_DF, COMMON_GFSELECT, COMMON_GF = 0, 4, 8, 12
COMMON_MSIX, COMMON_NUMQ, COMMON_STATUS, COMMON_CFGGENERATION = 16, 18, 20, 21
COMMON_Q_SELECT, COMMON_Q_SIZE, COMMON_Q_MSIX, COMMON_Q_ENABLE = 22, 24, 26, 28
COMMON_Q_NOFF, COMMON_Q_DESCLO, COMMON_Q_DESCHI = 30, 32, 36
COMMON_Q_AVAILLO, COMMON_Q_AVAILHI, COMMON_Q_USEDLO, COMMON_Q_USEDHI = 40, 44, 48, 52
COMMON_CFG_SIZE = 56

LEGACY_BAR, MSIX_BAR, MODERN_BAR = 0, 1, 4
MODERN_REGION = 0x1000  # each structure gets a page, as in QEMU
COMMON_OFFSET, ISR_OFFSET, DEVICE_OFFSET, NOTIFY_OFFSET = 0x0000, 0x1000, 0x2000, 0x3000
MODERN_BAR_SIZE = 0x4000
# Queue i is notified by a write at NOTIFY_OFFSET + 4 * i (queue_notify_off = i).
NOTIFY_OFF_MULTIPLIER = 4

PCI_CAP_ID_PM_SIZEOF = 8


def _value(data: bytes) -> int:
    return int.from_bytes(data, "little")


class _Region:
    def __init__(self, read: Callable[[int, int], int], write: Callable[[int, int, int], None]):
        self.read = read
        self.write = write


class _Bar4:
    """The modern BAR: four structures a page apart."""

    def __init__(self, transport: VirtioPciFunction):
        self._t = transport

    def read(self, offset: int, size: int) -> int:
        region, rel = divmod(offset, MODERN_REGION)
        t = self._t
        if region == 0:
            return t.common_read(rel, size)
        if region == 1:
            return t.isr_read() if rel == 0 else 0
        if region == 2:
            return _value(t.device.read_config(rel, size))
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        region, rel = divmod(offset, MODERN_REGION)
        t = self._t
        if region == 0:
            t.common_write(rel, size, value)
        elif region == 2:
            t.device.write_config(rel, value.to_bytes(size, "little"))
        elif region == 3 and rel % NOTIFY_OFF_MULTIPLIER == 0:
            t.kick(rel // NOTIFY_OFF_MULTIPLIER)


class VirtioPciFunction(PciFunction):
    """A virtio device as one PCI function (what `-device virtio-*-pci` creates)."""

    def __init__(
        self,
        name: str,
        device_type: int,
        class_code: int,
        *,
        legacy: bool,
        modern: bool,
        express_endpoint: bool,
        vectors: int,
        config_size: int,
        make_device: Callable[[GuestMemory, str], VirtioDevice],
    ):
        if not legacy and not modern:
            raise ValueError("neither modern nor legacy mode is enabled")
        if legacy:
            device_id, revision = TRANSITIONAL_DEVICE_IDS[device_type], 0
        else:
            device_id, revision = VIRTIO_PCI_MODERN_DEVICE_ID_BASE + device_type, 1
        super().__init__(
            name,
            PCI_VENDOR_ID_REDHAT_QUMRANET,
            device_id,
            class_code,
            revision,
            subsystem_vendor=PCI_VENDOR_ID_REDHAT_QUMRANET,
            subsystem=device_type,
            express=express_endpoint,
            interrupt_pin=1,
        )
        self.virtio_type = device_type
        self.legacy_enabled = legacy
        self.modern_enabled = modern
        self.make_device = make_device
        self.device: VirtioDevice | None = None
        self.lock = threading.RLock()
        self.queue_select = 0
        self.isr = 0
        self.config_vector = VIRTIO_MSI_NO_VECTOR
        self.queue_vectors: list[int] = []
        self._modern_queue: list[dict] = []
        self._dfselect = self._gfselect = 0
        # Kicks go to this callable; the VMM may route them through worker threads.
        self.kick_handler: Callable[[int], None] | None = None
        # Told when BAR addresses change, so notify addresses can get ioeventfds.
        self.on_notify_moved: Callable[[VirtioPciFunction], None] | None = None

        if express_endpoint:
            add_express_capability(self.config, R.PCI_EXP_TYPE_ENDPOINT, link_up=True)
            pm = self.config.add_capability(R.PCI_CAP_ID_PM, PCI_CAP_ID_PM_SIZEOF)
            self.config.set(pm + 2, 2, 0x0003)  # PM version 1.2
            self.config.set_wmask(pm + 4, 2, 0x0003)  # power state D0-D3hot
        if legacy:
            size = 1 << (VIRTIO_PCI_CONFIG_OFF_MSIX + config_size - 1).bit_length()
            self.add_bar(
                Bar(LEGACY_BAR, IO, max(size, 32), _Region(self.legacy_read, self.legacy_write))
            )
        self.msix = add_exclusive_msix(self, MSIX_BAR, vectors)
        if modern:
            self.add_bar(Bar(MODERN_BAR, MEM, MODERN_BAR_SIZE, _Bar4(self), prefetch=True,
                             mem64=True))  # fmt: skip
            self._add_virtio_cap(VIRTIO_PCI_CAP_COMMON_CFG, COMMON_OFFSET, COMMON_CFG_SIZE)
            self._add_virtio_cap(VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET, 1)
            self._add_virtio_cap(VIRTIO_PCI_CAP_DEVICE_CFG, DEVICE_OFFSET, max(config_size, 1))
            self._add_virtio_cap(
                VIRTIO_PCI_CAP_NOTIFY_CFG, NOTIFY_OFFSET, MODERN_REGION, VIRTIO_PCI_NOTIFY_CAP_LEN
            )
            # The PCI configuration access capability (4.1.4.7): present, as the spec
            # requires; its window is not served (Linux does not use it).
            self._add_virtio_cap(VIRTIO_PCI_CAP_PCI_CFG, 0, 0, VIRTIO_PCI_CFG_CAP_LEN, bar=0)

    def _add_virtio_cap(
        self, cfg_type: int, offset: int, length: int, cap_len: int = VIRTIO_PCI_CAP_LEN,
        bar: int = MODERN_BAR,
    ) -> None:  # fmt: skip
        at = self.config.add_capability(R.PCI_CAP_ID_VNDR, cap_len)
        self.config.set(at + 2, 1, cap_len)
        self.config.set(at + 3, 1, cfg_type)
        self.config.set(at + 4, 1, bar)
        self.config.set(at + 8, 4, offset)
        self.config.set(at + 12, 4, length)
        if cfg_type == VIRTIO_PCI_CAP_NOTIFY_CFG:
            self.config.set(at + 16, 4, NOTIFY_OFF_MULTIPLIER)
        if cfg_type == VIRTIO_PCI_CAP_PCI_CFG:
            self.config.set_wmask(at + 4, 1, 0xFF)
            self.config.set_wmask(at + 8, 8, 0xFFFFFFFFFFFFFFFF)
            self.config.set_wmask(at + 16, 4, 0xFFFFFFFF)

    # -- life cycle ---------------------------------------------------------------------

    def realize(self, memory: GuestMemory, msi_sink) -> None:
        """Create the device on guest memory (never for `pcivm plan`)."""
        self.device = self.make_device(memory, self.name)
        self.device.attach(self, modern_capable=self.modern_enabled)
        count = len(self.device.queues)
        self.queue_vectors = [VIRTIO_MSI_NO_VECTOR] * count
        self._modern_queue = [self._fresh_queue(q) for q in self.device.queues]
        self.msix.sink = msi_sink

    @staticmethod
    def _fresh_queue(queue) -> dict:
        return {"size": queue.max_size, "desc": 0, "avail": 0, "used": 0}

    def reset(self) -> None:
        with self.lock:
            self.device.reset()
            self.isr = 0
            self.set_intx(0)
            self.config_vector = VIRTIO_MSI_NO_VECTOR
            self.queue_vectors = [VIRTIO_MSI_NO_VECTOR] * len(self.queue_vectors)
            self._modern_queue = [self._fresh_queue(q) for q in self.device.queues]

    def _use_interface(self, legacy: bool) -> None:
        """A transitional device serves whichever interface its driver uses; the choice is
        made while the device is reset, as the driver starts."""
        if self.device.get_status() == 0 and self.device.legacy != legacy:
            self.device.set_legacy(legacy)

    # -- interrupts (the device's InterruptSink) ---------------------------------------

    def signal_used(self, queue_index: int) -> None:
        vector = self.queue_vectors[queue_index] if queue_index < len(self.queue_vectors) else -1
        self._signal(VIRTIO_PCI_ISR_QUEUE, vector)

    def signal_config(self) -> None:
        self._signal(VIRTIO_PCI_ISR_CONFIG, self.config_vector)

    def _signal(self, isr_bit: int, vector: int) -> None:
        if vector != VIRTIO_MSI_NO_VECTOR and self.msix.send_now(vector):
            return  # the usual case, without a lock
        if self.msix.enabled:
            if vector != VIRTIO_MSI_NO_VECTOR:
                self.msix.notify(vector)
            return
        self.isr |= isr_bit
        self.set_intx(1)

    def isr_read(self) -> int:
        """Reading the ISR acknowledges it and lowers INTx (4.1.4.5)."""
        with self.lock:
            value, self.isr = self.isr, 0
            self.set_intx(0)
            return value

    def kick(self, queue_index: int) -> None:
        if self.device is None:
            return
        if self.kick_handler is not None:
            self.kick_handler(queue_index)
        else:
            self.device.notify(queue_index)

    # -- the legacy header (IO BAR0) ---------------------------------------------------

    def _legacy_config_offset(self) -> int:
        return VIRTIO_PCI_CONFIG_OFF_MSIX if self.msix.enabled else VIRTIO_PCI_CONFIG_OFF_NO_MSIX

    def legacy_read(self, offset: int, size: int) -> int:
        if self.device is None:
            return (1 << (8 * size)) - 1
        config_at = self._legacy_config_offset()
        if offset >= config_at:
            return _value(self.device.read_config(offset - config_at, size))
        with self.lock:
            if offset == VIRTIO_PCI_ISR:
                return self.isr_read()
            registers = self._legacy_registers()
            return self._compose(registers, offset, size)

    def _legacy_registers(self) -> list[tuple[int, int, int]]:
        """(offset, width, value) of each legacy register as the driver reads it now."""
        device = self.device
        sel = self.queue_select
        queue = device.queues[sel] if sel < len(device.queues) else None
        pfn = queue.desc_addr >> 12 if queue is not None and queue.ready else 0
        regs = [
            (VIRTIO_PCI_HOST_FEATURES, 4, self._legacy_features()),
            (VIRTIO_PCI_GUEST_FEATURES, 4, device.driver_features & 0xFFFFFFFF),
            (VIRTIO_PCI_QUEUE_PFN, 4, pfn),
            (VIRTIO_PCI_QUEUE_NUM, 2, queue.max_size if queue is not None else 0),
            (VIRTIO_PCI_QUEUE_SEL, 2, sel),
            (VIRTIO_PCI_QUEUE_NOTIFY, 2, 0),
            (VIRTIO_PCI_STATUS, 1, device.get_status()),
            (VIRTIO_PCI_ISR, 1, self.isr),
        ]
        if self.msix.enabled:
            qvec = (
                self.queue_vectors[sel] if sel < len(self.queue_vectors) else VIRTIO_MSI_NO_VECTOR
            )
            regs += [(VIRTIO_MSI_CONFIG_VECTOR, 2, self.config_vector),
                     (VIRTIO_MSI_QUEUE_VECTOR, 2, qvec)]  # fmt: skip
        return regs

    def _legacy_features(self) -> int:
        self._use_interface(legacy=True)
        return self.device.device_features & 0xFFFFFFFF

    @staticmethod
    def _compose(registers: list[tuple[int, int, int]], offset: int, size: int) -> int:
        value = 0
        for i in range(size):
            for base, width, reg in registers:
                if base <= offset + i < base + width:
                    value |= ((reg >> (8 * (offset + i - base))) & 0xFF) << (8 * i)
                    break
        return value

    def legacy_write(self, offset: int, size: int, value: int) -> None:
        if self.device is None:
            return
        config_at = self._legacy_config_offset()
        if offset >= config_at:
            self.device.write_config(offset - config_at, value.to_bytes(size, "little"))
            return
        device = self.device
        with self.lock:
            if offset == VIRTIO_PCI_GUEST_FEATURES and size == 4:
                self._use_interface(legacy=True)
                device.set_driver_features(value)
            elif offset == VIRTIO_PCI_QUEUE_PFN and size == 4:
                self._use_interface(legacy=True)
                if self.queue_select < len(device.queues):
                    device.set_queue_pfn(self.queue_select, value)
            elif offset == VIRTIO_PCI_QUEUE_SEL and size == 2:
                self.queue_select = value
            elif offset == VIRTIO_PCI_QUEUE_NOTIFY and size == 2:
                pass  # handled below, outside the lock
            elif offset == VIRTIO_PCI_STATUS and size == 1:
                self._use_interface(legacy=True)
                if value == 0:
                    self.reset()
                else:
                    device.set_status(value)
            elif offset == VIRTIO_MSI_CONFIG_VECTOR and size == 2 and self.msix.enabled:
                self.config_vector = self._vector(value)
            elif offset == VIRTIO_MSI_QUEUE_VECTOR and size == 2 and self.msix.enabled:
                if self.queue_select < len(self.queue_vectors):
                    self.queue_vectors[self.queue_select] = self._vector(value)
            else:
                log.debug("%s: legacy write of %d bytes at %#x ignored", self.name, size, offset)
                return
        if offset == VIRTIO_PCI_QUEUE_NOTIFY and size == 2:
            self.kick(value)

    def _vector(self, value: int) -> int:
        """A vector the table has, else NO_VECTOR (which the driver reads back as a refusal)."""
        return value if value < self.msix.vectors else VIRTIO_MSI_NO_VECTOR

    # -- the modern common configuration -------------------------------------------------

    def _common_registers(self) -> list[tuple[int, int, int]]:
        device = self.device
        sel = self.queue_select
        has_queue = sel < len(device.queues)
        shadow = self._modern_queue[sel] if has_queue else self._fresh_queue_none()
        ready = device.queues[sel].ready if has_queue else False
        return [
            (COMMON_DFSELECT, 4, self._dfselect),
            (COMMON_DF, 4, device.read_device_features(self._dfselect)),
            (COMMON_GFSELECT, 4, self._gfselect),
            (
                COMMON_GF,
                4,
                (device.driver_features >> (32 * self._gfselect)) & 0xFFFFFFFF
                if self._gfselect < 2
                else 0,
            ),  # fmt: skip
            (COMMON_MSIX, 2, self.config_vector),
            (COMMON_NUMQ, 2, len(device.queues)),
            (COMMON_STATUS, 1, device.get_status()),
            (COMMON_CFGGENERATION, 1, device.config_generation),
            (COMMON_Q_SELECT, 2, sel),
            (COMMON_Q_SIZE, 2, shadow["size"] if has_queue else 0),
            (COMMON_Q_MSIX, 2, self.queue_vectors[sel] if has_queue else VIRTIO_MSI_NO_VECTOR),
            (COMMON_Q_ENABLE, 2, int(ready)),
            (COMMON_Q_NOFF, 2, sel if has_queue else 0),
            (COMMON_Q_DESCLO, 8, shadow["desc"]),
            (COMMON_Q_AVAILLO, 8, shadow["avail"]),
            (COMMON_Q_USEDLO, 8, shadow["used"]),
        ]

    @staticmethod
    def _fresh_queue_none() -> dict:
        return {"size": 0, "desc": 0, "avail": 0, "used": 0}

    def common_read(self, offset: int, size: int) -> int:
        if self.device is None:
            return 0
        with self.lock:
            if offset in (COMMON_DF, COMMON_STATUS):
                self._use_interface(legacy=False)
            return self._compose(self._common_registers(), offset, size)

    def common_write(self, offset: int, size: int, value: int) -> None:
        if self.device is None:
            return
        device = self.device
        with self.lock:
            sel = self.queue_select
            has_queue = sel < len(device.queues)
            if offset == COMMON_DFSELECT and size == 4:
                self._dfselect = value
            elif offset == COMMON_GFSELECT and size == 4:
                self._gfselect = value
            elif offset == COMMON_GF and size == 4:
                self._use_interface(legacy=False)
                device.write_driver_features(self._gfselect, value)
            elif offset == COMMON_MSIX and size == 2:
                self.config_vector = self._vector(value)
            elif offset == COMMON_STATUS and size == 1:
                self._use_interface(legacy=False)
                if value == 0:
                    self.reset()
                else:
                    device.set_status(value)
            elif offset == COMMON_Q_SELECT and size == 2:
                self.queue_select = value
            elif not has_queue:
                log.debug("%s: write for queue %d that does not exist", self.name, sel)
            elif offset == COMMON_Q_SIZE and size == 2:
                self._modern_queue[sel]["size"] = value
            elif offset == COMMON_Q_MSIX and size == 2:
                self.queue_vectors[sel] = self._vector(value)
            elif offset == COMMON_Q_ENABLE and size == 2:
                if value == 1:
                    self._enable_queue(sel)
            elif COMMON_Q_DESCLO <= offset < COMMON_CFG_SIZE and size in (4, 8):
                field = ("desc", "avail", "used")[(offset - COMMON_Q_DESCLO) // 8]
                shift = 32 * (((offset - COMMON_Q_DESCLO) % 8) // 4)
                mask = ((1 << (8 * size)) - 1) << shift
                current = self._modern_queue[sel][field]
                self._modern_queue[sel][field] = (current & ~mask) | (value << shift)
            else:
                log.debug("%s: common write of %d bytes at %#x ignored", self.name, size, offset)

    def _enable_queue(self, index: int) -> None:
        shadow = self._modern_queue[index]
        queue = self.device.queues[index]
        try:
            queue.set_size(shadow["size"])
            queue.set_addresses(shadow["desc"], shadow["avail"], shadow["used"])
        except VirtqueueError as error:
            self.device.device_error(str(error), index)
            return
        self.device.enable_queue(index)

    # -- where the guest kicks ----------------------------------------------------------

    def notify_addresses(self) -> list[tuple[str, int, int, int | None, int]]:
        """(space, address, length, datamatch, queue) for each queue's notify register at
        the BARs' current addresses: what an ioeventfd can take over."""
        if self.device is None:
            return []
        out = []
        queues = range(len(self.device.queues))
        legacy_bar = self.bars.get(LEGACY_BAR)
        if legacy_bar is not None and legacy_bar.mapped_at is not None:
            for q in queues:
                out.append((IO, legacy_bar.mapped_at + VIRTIO_PCI_QUEUE_NOTIFY, 2, q, q))
        modern_bar = self.bars.get(MODERN_BAR)
        if modern_bar is not None and modern_bar.mapped_at is not None:
            base = modern_bar.mapped_at + NOTIFY_OFFSET
            for q in queues:
                out.append((MEM, base + NOTIFY_OFF_MULTIPLIER * q, 2, None, q))
        return out

    def bars_mapped(self) -> None:
        if self.on_notify_moved is not None:
            self.on_notify_moved(self)
