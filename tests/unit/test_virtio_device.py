"""The virtio device base: feature negotiation on both interfaces, the status machine,
config space, queue setup, and what a guest error does to a device."""

import logging
import threading

import pytest

from pcivm.memory import GuestMemory, MiB
from pcivm.virtio.constants import (
    ACKNOWLEDGE,
    DEVICE_NEEDS_RESET,
    DRIVER,
    DRIVER_OK,
    FEATURES_OK,
    VIRTIO_F_ANY_LAYOUT,
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_VERSION_1,
)
from pcivm.virtio.device import VirtioDevice
from pcivm.virtio.rng import VirtioRng
from pcivm.virtio.testing import DirectTransport, RngDriver, VirtioDriver


def bit(n):
    return 1 << n


@pytest.fixture
def memory():
    return GuestMemory(8 * MiB)


def setup(memory, **kw):
    device = VirtioRng(memory)
    transport = DirectTransport(device, **kw)
    return device, transport, VirtioDriver(transport, memory)


class ConfigDevice(VirtioDevice):
    name = "test-config"

    def __init__(self, memory):
        super().__init__(memory, [4], features=bit(3), config=bytes(range(8)))

    def handle_queue(self, queue):
        pass


def test_a_modern_driver_negotiates_64_bit_features_with_features_ok(memory):
    device, transport, driver = setup(memory)
    offered = transport.get_device_features()
    assert offered & bit(VIRTIO_F_VERSION_1)
    assert not offered & bit(VIRTIO_F_ANY_LAYOUT)
    features = driver.init()
    assert features == offered
    assert device.get_status() == ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
    assert device.queues[0].event_idx and device.queues[0].indirect


def test_a_legacy_driver_sees_32_bits_and_no_features_ok_step(memory):
    device, transport, driver = setup(memory, legacy=True)
    offered = transport.get_device_features()
    assert offered == (
        bit(VIRTIO_F_ANY_LAYOUT) | bit(VIRTIO_F_INDIRECT_DESC) | bit(VIRTIO_F_EVENT_IDX)
    )
    driver.init(wanted=bit(VIRTIO_F_INDIRECT_DESC))
    assert device.get_status() == ACKNOWLEDGE | DRIVER | DRIVER_OK
    assert device.driver_features == bit(VIRTIO_F_INDIRECT_DESC)
    assert not device.queues[0].event_idx and device.queues[0].indirect
    assert len(RngDriver(driver).read(32)) == 32


def test_a_legacy_driver_cannot_enable_unoffered_features(memory):
    device, transport, _ = setup(memory, legacy=True)
    device.set_status(ACKNOWLEDGE | DRIVER)
    device.set_driver_features(0xFFFF_FFFF)
    assert device.driver_features == transport.get_device_features()


def test_a_legacy_only_transport_never_offers_version_1(memory):
    device = VirtioRng(memory)
    device.attach(DirectTransport(VirtioRng(memory)).interrupts, modern_capable=False)
    device.set_legacy(False)
    assert device.legacy
    assert not device.device_features & bit(VIRTIO_F_VERSION_1)


def test_features_ok_is_refused_for_unoffered_features(memory):
    device, transport, driver = setup(memory)
    device.set_status(ACKNOWLEDGE | DRIVER)
    transport.set_driver_features(transport.get_device_features() | bit(50))
    device.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK)
    assert not device.get_status() & FEATURES_OK


def test_features_ok_is_refused_without_version_1(memory):
    device, transport, driver = setup(memory)
    device.set_status(ACKNOWLEDGE | DRIVER)
    transport.set_driver_features(bit(VIRTIO_F_EVENT_IDX))
    device.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK)
    assert not device.get_status() & FEATURES_OK


def test_feature_writes_after_features_ok_are_ignored(memory):
    device, transport, driver = setup(memory)
    features = driver.negotiate(bit(VIRTIO_F_EVENT_IDX))
    transport.set_driver_features(features | bit(VIRTIO_F_INDIRECT_DESC))
    assert device.driver_features == features


def test_driver_ok_without_features_ok_breaks_a_modern_device(memory, caplog):
    device, transport, driver = setup(memory)
    device.set_status(ACKNOWLEDGE | DRIVER)
    with caplog.at_level(logging.WARNING):
        device.set_status(ACKNOWLEDGE | DRIVER | DRIVER_OK)
    assert device.get_status() & DEVICE_NEEDS_RESET
    assert "DRIVER_OK without FEATURES_OK" in caplog.text


def test_writing_zero_resets_status_features_and_queues(memory):
    device, transport, driver = setup(memory)
    driver.init()
    RngDriver(driver).read(8)
    transport.set_status(0)
    assert device.get_status() == 0
    assert device.driver_features == 0
    queue = device.queues[0]
    assert not queue.ready and queue.last_avail_idx == 0 and queue.used_idx == 0
    assert queue.size == queue.max_size


def test_kicks_before_driver_ok_are_served_at_driver_ok(memory):
    device, transport, driver = setup(memory)
    driver.negotiate(~0)
    driver.setup_queue(0)
    request = driver.submit(0, [], [16])
    assert not request.done and driver.poll(0) == []
    driver.driver_ok()
    assert driver.wait(request).used_len == 16


def test_a_queue_outside_ram_breaks_the_device(memory):
    device, transport, driver = setup(memory)
    driver.negotiate(~0)
    transport.setup_queue(0, 256, 8 * MiB - 16, 0x1000, 0x2000)
    assert device.get_status() & DEVICE_NEEDS_RESET
    assert not device.queues[0].ready


def test_a_guest_error_sets_needs_reset_and_signals_config_once(memory, caplog):
    device, transport, driver = setup(memory)
    driver.init()
    q = driver.queues[0]
    q.publish(q.size + 3)  # a head outside the table
    with caplog.at_level(logging.WARNING):
        driver.kick(0)
        driver.kick(0)
    assert device.get_status() & DEVICE_NEEDS_RESET
    assert transport.interrupts.config == 1
    assert len(caplog.records) == 1 and "head index out of range" in caplog.text
    # The device stays broken until reset; then it works again.
    assert device.broken
    driver.buffers.release(driver.buffers.start)
    driver.rings.release(driver.rings.start)
    driver.init()
    assert not device.get_status() & DEVICE_NEEDS_RESET
    assert len(RngDriver(driver).read(8)) == 8


def test_a_guest_error_stops_a_legacy_queue_until_reset(memory, caplog):
    device, transport, driver = setup(memory, legacy=True)
    driver.init()
    q = driver.queues[0]
    q.publish(q.size)
    with caplog.at_level(logging.WARNING):
        driver.kick(0)
    assert "queue stopped" in caplog.text
    assert device.queues[0].stopped
    assert not device.get_status() & DEVICE_NEEDS_RESET
    assert transport.interrupts.config == 0
    driver.rings.release(driver.rings.start)
    driver.init()
    assert not device.queues[0].stopped
    assert len(RngDriver(driver).read(8)) == 8


def test_notify_for_a_queue_that_does_not_exist_is_ignored(memory):
    device, transport, driver = setup(memory)
    driver.init()
    for index in (1, -1, 0xFFFF):
        device.notify(index)
    assert not device.broken


def test_config_reads_outside_the_space_are_zero_and_updates_bump_the_generation(memory):
    device = ConfigDevice(memory)
    transport = DirectTransport(device)
    assert device.read_config(6, 4) == bytes([6, 7, 0, 0])
    assert device.read_config(100, 2) == b"\0\0"
    assert device.read_config(-5, 2) == bytes([0, 1])
    device.write_config(0, b"\xff")
    assert device.read_config(0, 1) == b"\0"
    VirtioDriver(transport, memory).init()
    generation = device.config_generation
    device.update_config(2, b"\xaa")
    assert device.config_generation == generation + 1
    assert device.read_config(2, 1) == b"\xaa"
    assert transport.interrupts.config == 1


def test_modern_feature_windows(memory):
    device = ConfigDevice(memory)
    DirectTransport(device)
    assert device.read_device_features(0) & bit(3)
    assert device.read_device_features(1) == 1  # VERSION_1 is bit 32
    assert device.read_device_features(7) == 0
    device.write_driver_features(1, 1)
    device.write_driver_features(0, bit(3))
    device.write_driver_features(5, 0xFFFF)
    assert device.driver_features == bit(VIRTIO_F_VERSION_1) | bit(3)


def test_queues_are_processed_safely_from_several_threads(memory):
    device, transport, driver = setup(memory)
    driver.init()
    q = driver.queues[0]
    requests = [driver.submit(0, [], [8], kick=False) for _ in range(200)]
    threads = [threading.Thread(target=device.notify, args=(0,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = driver.poll(0)
    assert sorted(r.head for r in done) == sorted(r.head for r in requests)
    assert q.used_idx() == 200 and device.queues[0].last_avail_idx == 200
