"""MSI messages that leave through irqfds: one KVM GSI route and one eventfd per MSI-X
vector the guest has programmed and unmasked.

A device thread then raises an interrupt by writing an eventfd — no ioctl, no vCPU
thread. The routes follow the guest: `vector_changed` is the MSI-X capability's
`on_vector_change` listener. A message with no route (a vector being reprogrammed, a
table the guest filled oddly) still reaches the guest through KVM_SIGNAL_MSI.

KVM_SET_GSI_ROUTING replaces the whole table, so the table always starts with the
default irqchip routes: GSI 0-15 to the 8259 pair and the IOAPIC, 16-23 to the IOAPIC.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

from pcivm.kvm import numbers as N
from pcivm.kvm import structs as S
from pcivm.kvm.api import VirtualMachine

log = logging.getLogger(__name__)

IOAPIC_PINS = 24
PIC_PINS = 16
FIRST_MSI_GSI = IOAPIC_PINS
MAX_GSI = 1024  # KVM_MAX_IRQ_ROUTES is larger; this is plenty for the devices pcivm has


def _irqchip_route(gsi: int, chip: int, pin: int) -> S.kvm_irq_routing_entry:
    entry = S.kvm_irq_routing_entry(gsi=gsi, type=N.KVM_IRQ_ROUTING_IRQCHIP)
    entry.u.irqchip.irqchip = chip
    entry.u.irqchip.pin = pin
    return entry


def _msi_route(gsi: int, address: int, data: int) -> S.kvm_irq_routing_entry:
    entry = S.kvm_irq_routing_entry(gsi=gsi, type=N.KVM_IRQ_ROUTING_MSI)
    entry.u.msi.address_lo = address & 0xFFFFFFFF
    entry.u.msi.address_hi = address >> 32
    entry.u.msi.data = data
    return entry


def default_routes() -> list[S.kvm_irq_routing_entry]:
    """What KVM_CREATE_IRQCHIP sets up: legacy IRQs to both the PICs and the IOAPIC."""
    routes = []
    for gsi in range(IOAPIC_PINS):
        routes.append(_irqchip_route(gsi, N.KVM_IRQCHIP_IOAPIC, gsi))
        if gsi < PIC_PINS:
            chip = N.KVM_IRQCHIP_PIC_MASTER if gsi < 8 else N.KVM_IRQCHIP_PIC_SLAVE
            routes.append(_irqchip_route(gsi, chip, gsi % 8))
    return routes


class MsiRouter:
    """Routes and irqfds for every MSI-X vector of the VM's devices."""

    def __init__(self, vm: VirtualMachine):
        self._vm = vm
        self._lock = threading.Lock()
        # (owner id, vector) -> (gsi, eventfd, address, data) while routed
        self._routes: dict[tuple[int, int], tuple[int, int, int, int]] = {}
        self._by_message: dict[tuple[int, int], int] = {}  # (address, data) -> eventfd
        self._assigned: set[int] = set()  # eventfds KVM already has as irqfds
        self._free_gsis = list(range(MAX_GSI - 1, FIRST_MSI_GSI - 1, -1))
        self.broken = False

    def listener(self, owner: object):
        """An on_vector_change listener for one device's MSI-X capability."""
        key = id(owner)
        return lambda vector, address, data, masked: self.vector_changed(
            key, vector, address, data, masked
        )

    def vector_changed(self, owner: int, vector: int, address: int, data: int, masked: bool):
        with self._lock:
            current = self._routes.get((owner, vector))
            wanted = None if masked or not address else (address, data)
            if current is not None and wanted == (current[2], current[3]):
                return
            if current is not None:
                self._drop(owner, vector, current)
            if wanted is not None and not self.broken:
                self._add(owner, vector, *wanted)
            if not self.broken:
                self._apply()

    def _add(self, owner: int, vector: int, address: int, data: int) -> None:
        if not self._free_gsis:
            return  # no GSI left: KVM_SIGNAL_MSI carries this vector
        gsi = self._free_gsis.pop()
        fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._routes[(owner, vector)] = (gsi, fd, address, data)

    def _drop(self, owner: int, vector: int, route: tuple[int, int, int, int]) -> None:
        gsi, fd, address, data = route
        del self._routes[(owner, vector)]
        if fd in self._assigned:
            self._assigned.discard(fd)
            with contextlib.suppress(OSError):
                self._vm.irqfd(fd, gsi, deassign=True)
        os.close(fd)
        self._free_gsis.append(gsi)

    def _apply(self) -> None:
        """Install the routing table, then make sure every route has its irqfd."""
        entries = default_routes() + [
            _msi_route(gsi, address, data) for gsi, _fd, address, data in self._routes.values()
        ]
        try:
            self._vm.set_gsi_routing(entries)
            for gsi, fd, _address, _data in self._routes.values():
                if fd not in self._assigned:
                    self._vm.irqfd(fd, gsi)
                    self._assigned.add(fd)
        except OSError as exc:
            # Interrupts still arrive through KVM_SIGNAL_MSI, one ioctl each.
            log.warning("MSI routing through irqfds failed (%s); using KVM_SIGNAL_MSI", exc)
            self.broken = True
            self._by_message = {}
            return
        self._by_message = {
            (address, data): fd for _gsi, fd, address, data in self._routes.values()
        }

    def signal_msi(self, address: int, data: int) -> None:
        """The MsiSink the devices use: the vector's irqfd if it has one."""
        fd = self._by_message.get((address, data))
        if fd is not None:
            os.eventfd_write(fd, 1)
        else:
            self._vm.signal_msi(address, data)

    def close(self) -> None:
        with self._lock:
            for key, route in list(self._routes.items()):
                self._drop(*key, route)
