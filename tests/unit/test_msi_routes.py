"""MSI routes and irqfds follow what the guest programs in the MSI-X table.

Needs a /dev/kvm that can create an in-kernel irqchip (any KVM, PVM-based included): the
routing table and irqfds are KVM's own, nothing here runs a guest.
"""

import os

import pytest

from pcivm.kvm.api import Kvm, KvmUnavailable
from pcivm.msi_routes import MsiRouter, default_routes


@pytest.fixture
def vm():
    try:
        kvm = Kvm()
    except KvmUnavailable as exc:
        pytest.skip(f"no /dev/kvm: {exc}")
    vm = kvm.create_vm()
    vm.set_tss_addr(0xFFFBD000)
    vm.create_irqchip()
    yield vm
    vm.close()
    kvm.close()


def test_default_routes_cover_the_pics_and_the_ioapic():
    routes = default_routes()
    assert sorted({r.gsi for r in routes}) == list(range(24))
    assert len(routes) == 24 + 16


def test_unmasked_vectors_get_an_irqfd_masked_ones_do_not(vm):
    router = MsiRouter(vm)
    router.vector_changed(1, 0, 0xFEE00000, 0x4021, False)
    router.vector_changed(1, 1, 0xFEE00000, 0x4022, True)
    assert set(router._by_message) == {(0xFEE00000, 0x4021)}
    fd = router._by_message[(0xFEE00000, 0x4021)]
    router.signal_msi(0xFEE00000, 0x4021)  # an eventfd write: KVM takes it from there
    # Reprogramming moves the route; unmasking vector 1 adds one.
    router.vector_changed(1, 0, 0xFEE01000, 0x4030, False)
    router.vector_changed(1, 1, 0xFEE00000, 0x4022, False)
    assert set(router._by_message) == {(0xFEE01000, 0x4030), (0xFEE00000, 0x4022)}
    assert not router.broken
    router.vector_changed(1, 0, 0, 0, True)
    assert set(router._by_message) == {(0xFEE00000, 0x4022)}
    router.close()
    with pytest.raises(OSError):
        os.fstat(fd)  # closed with its route
