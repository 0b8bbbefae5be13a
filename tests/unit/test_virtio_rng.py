"""virtio-rng: entropy into the guest's buffers, and QEMU's max-bytes/period rate limit."""

import time

import pytest

from pcivm.memory import GuestMemory, MiB
from pcivm.virtio.constants import VIRTIO_ID_RNG
from pcivm.virtio.rng import VirtioRng
from pcivm.virtio.testing import DirectTransport, RngDriver, VirtioDriver


@pytest.fixture
def memory():
    return GuestMemory(8 * MiB)


def rng(memory, *, legacy=False, **kw):
    device = VirtioRng(memory, **kw)
    transport = DirectTransport(device, legacy=legacy)
    driver = VirtioDriver(transport, memory)
    driver.init()
    return device, transport, driver


@pytest.mark.parametrize("legacy", [False, True])
def test_random_bytes_fill_the_buffer_and_used_len_says_how_many(memory, legacy):
    device, transport, driver = rng(memory, legacy=legacy)
    first, second = RngDriver(driver).read(256), RngDriver(driver).read(256)
    assert len(first) == len(second) == 256
    assert first != second and first != b"\xee" * 256
    assert device.device_type == VIRTIO_ID_RNG == 4
    assert transport.interrupts.used[0] >= 1


def test_a_chain_of_several_buffers_and_an_indirect_table_are_filled(memory):
    device, transport, driver = rng(memory)
    request = driver.submit(0, [], [3, 5, 4096])
    driver.wait(request)
    assert request.used_len == 4104
    assert b"\xee" * 64 not in driver.read_writable(request)
    assert len(RngDriver(driver).read(100, indirect=True)) == 100


def test_device_readable_buffers_are_left_alone(memory):
    device, transport, driver = rng(memory)
    request = driver.submit(0, [b"keep me"], [16])
    driver.wait(request)
    assert memory.read(driver.buffers.start, 7) == b"keep me"


def test_the_rate_limit_delays_requests_to_the_next_period_without_dropping(memory):
    device, transport, driver = rng(memory, max_bytes=64, period_ms=150)
    start = time.monotonic()
    requests = [driver.submit(0, [], [48]) for _ in range(3)]
    driver.wait(requests[0], timeout=2)
    assert requests[0].used_len == 48
    driver.wait(requests[1], timeout=2)
    # The second got the 16 bytes left in the first period: a partial fill is allowed.
    assert requests[1].used_len == 16
    assert not requests[2].done  # the budget is spent: it waits for the timer
    driver.wait(requests[2], timeout=2)
    assert requests[2].used_len == 48
    assert time.monotonic() - start >= 0.14
    assert device.bytes_served == 112


def test_requests_beyond_the_budget_wait_for_the_next_period(memory):
    device, transport, driver = rng(memory, max_bytes=32, period_ms=100)
    a = driver.submit(0, [], [32])
    b = driver.submit(0, [], [32])
    driver.wait(a)
    t0 = time.monotonic()
    driver.wait(b, timeout=2)
    assert b.used_len == 32
    assert time.monotonic() - t0 >= 0.05


def test_reset_cancels_the_refill_timer(memory):
    device, transport, driver = rng(memory, max_bytes=8, period_ms=10_000)
    driver.wait(driver.submit(0, [], [8]))
    assert device._timer is not None
    transport.set_status(0)
    assert device._timer is None
    device.close()


def test_bad_rate_limit_properties_are_refused(memory):
    with pytest.raises(ValueError):
        VirtioRng(memory, max_bytes=0)
    with pytest.raises(ValueError):
        VirtioRng(memory, max_bytes=10, period_ms=0)
