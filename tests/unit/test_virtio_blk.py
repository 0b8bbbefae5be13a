"""virtio-blk against a raw image: request round trips on both interfaces, bounds and
read-only checks, flush, discard and write-zeroes, several requests in flight, the
image lock, and hostile rings that must never escape guest RAM."""

import errno
import fcntl
import os
import struct
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcivm.errors import PcivmError
from pcivm.iovec import IoVec
from pcivm.memory import GuestMemory, MiB
from pcivm.uring import ReadRing, RingUnavailable
from pcivm.virtio import split_read
from pcivm.virtio.blk import AT_ONCE_MAX_BYTES, BlockBackend, BlockImageError, VirtioBlk
from pcivm.virtio.constants import (
    DEVICE_NEEDS_RESET,
    VIRTIO_BLK_F_DISCARD,
    VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_WRITE_ZEROES,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    VIRTIO_F_VERSION_1,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
)
from pcivm.virtio.rng import VirtioRng
from pcivm.virtio.split_read import (
    FRONT_SHARE_MAX,
    FRONT_SHARE_MIN,
    PROBE_RUN_EVERY,
    RUN,
    SPLIT_READ_MIN,
    BackParts,
    SplitPolicy,
)
from pcivm.virtio.testing import BlkDriver, DirectTransport, RngDriver, VirtioDriver

IMAGE_SIZE = 4 * MiB
SECTORS = IMAGE_SIZE // 512


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(IMAGE_SIZE)
    return path


def needs_page_cache_nowait(image) -> None:
    """Skip unless the image's filesystem answers RWF_NOWAIT the way a disk filesystem's
    page cache does (tmpfs, NFS or FUSE would take the other paths these tests are not
    about)."""
    from pcivm.virtio.blk import RAM_FILESYSTEMS, filesystem_type

    fd = os.open(image, os.O_RDONLY)
    try:
        if filesystem_type(fd) in RAM_FILESYSTEMS:
            pytest.skip("the test's image is in RAM (tmpfs): no RWF_NOWAIT path")
        try:
            os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)
        except BlockingIOError:
            pass
        except OSError as error:
            # What BlockBackend itself takes as "this file or kernel cannot".
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            pytest.skip(f"the test's filesystem refuses RWF_NOWAIT: {error}")
    finally:
        os.close(fd)


@pytest.fixture
def memory():
    return GuestMemory(16 * MiB)


def start(memory, image, *, legacy=False, read_only=False, cache="writeback", **kw):
    backend = BlockBackend(image, read_only=read_only, cache=cache)
    device = VirtioBlk(memory, backend, **kw)
    transport = DirectTransport(device, legacy=legacy)
    driver = VirtioDriver(transport, memory)
    driver.init()
    return device, BlkDriver(driver)


def image_bytes(image, offset, length):
    with open(image, "rb") as f:
        f.seek(offset)
        return f.read(length)


@pytest.fixture
def blk(memory, image):
    device, drv = start(memory, image)
    yield device, drv
    device.close()


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("shape", [{}, {"split": 700}, {"indirect": True}])
def test_write_then_read_round_trips_through_the_image(memory, image, legacy, shape):
    device, drv = start(memory, image, legacy=legacy)
    data = os.urandom(4096)
    assert drv.write(16, data, **shape).status == VIRTIO_BLK_S_OK
    assert image_bytes(image, 16 * 512, 4096) == data
    result = drv.read(16, 8, **shape)
    assert result.status == VIRTIO_BLK_S_OK
    assert result.data == data
    assert result.used_len == 4096 + 1
    device.close()


def test_config_and_features_describe_the_disk(blk):
    device, drv = blk
    capacity, size_max, seg_max = struct.unpack_from("<QII", device.read_config(0, 16))
    assert capacity == SECTORS and seg_max == 254 and size_max == 0
    assert struct.unpack("<I", device.read_config(20, 4))[0] == 512  # blk_size
    max_discard, max_discard_seg, alignment = struct.unpack("<III", device.read_config(36, 12))
    assert max_discard > 0 and max_discard_seg >= 1 and alignment == 1
    features = drv.driver.features
    for feature in (VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES):
        assert features & (1 << feature)
    assert features & (1 << VIRTIO_F_VERSION_1)
    assert not features & (1 << VIRTIO_BLK_F_RO)


@pytest.mark.parametrize("sector,count", [(SECTORS - 1, 2), (SECTORS, 1), (2**63, 1)])
def test_a_read_past_the_end_fails_and_reads_nothing(blk, sector, count):
    device, drv = blk
    result = drv.read(sector, count)
    assert result.status == VIRTIO_BLK_S_IOERR
    assert result.data == b"\xee" * count * 512  # the guest buffer is untouched
    assert result.used_len == 1


def test_a_write_past_the_end_fails_and_writes_nothing(blk, image):
    device, drv = blk
    assert drv.write(SECTORS - 1, b"z" * 1024).status == VIRTIO_BLK_S_IOERR
    assert image_bytes(image, IMAGE_SIZE - 512, 512) == bytes(512)
    assert os.path.getsize(image) == IMAGE_SIZE


def test_a_partial_sector_is_refused(blk, image):
    device, drv = blk
    assert drv.write(0, b"q" * 100).status == VIRTIO_BLK_S_IOERR
    assert image_bytes(image, 0, 100) == bytes(100)


def test_a_read_only_drive_refuses_writes_and_offers_ro(memory, image):
    with open(image, "r+b") as f:
        f.write(b"original")
    device, drv = start(memory, image, read_only=True)
    assert drv.driver.features & (1 << VIRTIO_BLK_F_RO)
    assert not drv.driver.features & (1 << VIRTIO_BLK_F_DISCARD)
    assert drv.write(0, b"w" * 512).status == VIRTIO_BLK_S_IOERR
    assert drv.discard([(0, 1)]).status == VIRTIO_BLK_S_UNSUPP
    assert drv.write_zeroes([(0, 1)]).status == VIRTIO_BLK_S_UNSUPP
    assert image_bytes(image, 0, 8) == b"original"
    assert drv.read(0, 1).data[:8] == b"original"
    device.close()


def test_an_unknown_request_type_is_unsupported(blk):
    device, drv = blk
    result = drv.result(drv.submit(99, 0, read_len=0))
    assert result.status == VIRTIO_BLK_S_UNSUPP


def test_get_id_returns_the_serial_padded_to_20_bytes(memory, image):
    device, drv = start(memory, image, serial="pcivm-disk-0")
    assert drv.get_id().data == b"pcivm-disk-0".ljust(20, b"\0")
    device.close()
    device, drv = start(memory, image, serial="x" * 30)
    result = drv.get_id()
    assert result.data == b"x" * 20 and result.used_len == 21
    short = drv.result(drv.submit(8, read_len=6))
    assert short.data == b"x" * 6
    device.close()


def test_flush_calls_fdatasync(blk, monkeypatch):
    device, drv = blk
    calls = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), real(fd)))
    assert drv.flush().status == VIRTIO_BLK_S_OK
    assert calls == [device.backend.fd]


def allocated(image):
    return os.stat(image).st_blocks * 512


def test_discard_punches_a_hole(blk, image):
    device, drv = blk
    assert drv.write(0, b"\x5a" * MiB).status == VIRTIO_BLK_S_OK
    assert drv.flush().status == VIRTIO_BLK_S_OK
    before = allocated(image)
    assert before >= MiB
    assert drv.discard([(0, 1024), (1536, 512)]).status == VIRTIO_BLK_S_OK
    assert allocated(image) <= before - 768 * 1024
    with open(image, "rb") as f:
        assert os.lseek(f.fileno(), 0, os.SEEK_HOLE) == 0
    assert drv.read(1024, 1).data == b"\x5a" * 512  # between the two segments: kept
    assert os.path.getsize(image) == IMAGE_SIZE


def test_a_bad_discard_segment_fails_before_anything_is_discarded(blk, image):
    device, drv = blk
    drv.write(0, b"\x5a" * 4096)
    assert drv.discard([(0, 8), (SECTORS, 8)]).status == VIRTIO_BLK_S_IOERR
    assert image_bytes(image, 0, 4096) == b"\x5a" * 4096
    # The unmap flag is not allowed on discard (5.2.6.3).
    payload = struct.pack("<QII", 0, 8, 1)
    result = drv.result(drv.submit(VIRTIO_BLK_T_DISCARD, data=payload))
    assert result.status == VIRTIO_BLK_S_UNSUPP
    assert image_bytes(image, 0, 4096) == b"\x5a" * 4096


@pytest.mark.parametrize("unmap", [False, True])
def test_write_zeroes_reads_back_zeros(blk, image, unmap):
    device, drv = blk
    drv.write(0, b"\x77" * 8192)
    drv.flush()
    assert drv.write_zeroes([(0, 8)], unmap=unmap).status == VIRTIO_BLK_S_OK
    assert image_bytes(image, 0, 8192) == bytes(4096) + b"\x77" * 4096


def test_write_zeroes_falls_back_to_writing_zeros(blk, image, monkeypatch):
    import pcivm.virtio.blk as blk_module

    def unsupported(fd, mode, offset, length):
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(blk_module, "fallocate", unsupported)
    device, drv = blk
    drv.write(0, b"\x77" * 4096)
    assert drv.write_zeroes([(0, 4)]).status == VIRTIO_BLK_S_OK
    assert image_bytes(image, 0, 4096) == bytes(2048) + b"\x77" * 2048
    # Discard is advisory: without hole punching it succeeds and keeps the data.
    assert drv.discard([(4, 4)]).status == VIRTIO_BLK_S_OK


class GatedBackend(BlockBackend):
    """Reads wait until the test opens the gate of their offset."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.gates: dict[int, threading.Event] = {}
        self.started = threading.Semaphore(0)

    def try_preadv(self, views, offset):
        return None  # like a disk's: every read waits

    def preadv(self, views, offset):
        self.started.release()
        self.gates.setdefault(offset, threading.Event()).wait(5)
        return super().preadv(views, offset)


def test_requests_in_flight_complete_out_of_order(memory, image):
    with open(image, "r+b") as f:
        for sector in (0, 8, 16):
            f.seek(sector * 512)
            f.write(bytes([sector + 1]) * 4096)
    backend = GatedBackend(image)
    for sector in (0, 8, 16):
        backend.gates[sector * 512] = threading.Event()
    device = VirtioBlk(memory, backend, workers=4)
    transport = DirectTransport(device)
    driver = VirtioDriver(transport, memory)
    driver.init()
    drv = BlkDriver(driver)
    requests = [drv.submit(VIRTIO_BLK_T_IN, sector, read_len=4096) for sector in (0, 8, 16)]
    for _ in requests:
        assert backend.started.acquire(timeout=5)  # all three are in flight together
    assert driver.poll(0) == []
    order = []
    for sector, request in zip((16, 0, 8), (requests[2], requests[0], requests[1]), strict=True):
        backend.gates[sector * 512].set()
        drv.result(request)
        order.append(request.head)
    assert [r.head for r in driver.completed] == order
    for sector, request in zip((0, 8, 16), requests, strict=True):
        payload = driver.read_writable(request)
        assert payload[:-1] == bytes([sector + 1]) * 4096 and payload[-1] == VIRTIO_BLK_S_OK
    device.close()


def test_reset_waits_for_io_in_flight_and_drops_its_completion(memory, image):
    backend = GatedBackend(image)
    device = VirtioBlk(memory, backend, workers=2)
    transport = DirectTransport(device)
    driver = VirtioDriver(transport, memory)
    driver.init()
    request = BlkDriver(driver).submit(VIRTIO_BLK_T_IN, 0, read_len=512)
    assert backend.started.acquire(timeout=5)
    threading.Timer(0.1, lambda: backend.gates[0].set()).start()
    transport.set_status(0)  # returns only once the read has finished
    assert backend.gates[0].is_set()
    assert driver.queues[0].used_idx() == 0 and not request.done
    device.close()


def test_several_writers_in_flight_all_land(memory, image):
    device, drv = start(memory, image, workers=4)
    requests = [drv.submit(VIRTIO_BLK_T_OUT, 8 * i, bytes([i]) * 4096) for i in range(32)]
    assert all(drv.result(r).status == VIRTIO_BLK_S_OK for r in requests)
    for i in range(32):
        assert image_bytes(image, 4096 * i, 4096) == bytes([i]) * 4096
    device.close()


def test_a_request_without_a_status_byte_breaks_the_device(blk):
    device, drv = blk
    drv.driver.submit(0, [struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, 0)], [])
    assert device.get_status() & DEVICE_NEEDS_RESET


# --- the image file ---------------------------------------------------------------------


def test_a_second_writer_is_refused_with_qemus_message(image):
    first = BlockBackend(image)
    with pytest.raises(BlockImageError) as error:
        BlockBackend(image)
    message = str(error.value)
    assert message.startswith('Failed to get "write" lock')
    assert "Is another process using the image" in message or "is another process" in message
    assert str(image) in message and "\n" not in message
    with pytest.raises(BlockImageError, match='shared "write" lock'):
        BlockBackend(image, read_only=True)
    BlockBackend(image, locking=False).close()
    first.close()
    BlockBackend(image).close()  # the lock went with the first opener


def test_two_readers_share_the_image(image):
    a = BlockBackend(image, read_only=True)
    b = BlockBackend(image, read_only=True)
    with pytest.raises(BlockImageError, match='Failed to get "write" lock'):
        BlockBackend(image)
    a.close()
    b.close()


def test_a_missing_image_is_one_line_naming_the_file(tmp_path):
    missing = tmp_path / "nope.img"
    with pytest.raises(BlockImageError) as error:
        BlockBackend(missing)
    assert isinstance(error.value, PcivmError)
    assert str(missing) in str(error.value) and "No such file" in str(error.value)
    with pytest.raises(BlockImageError, match="cache mode"):
        BlockBackend(missing, cache="unsafe")


def test_cache_modes_open_the_image_with_the_right_flags(image):
    for cache, flag in (("writethrough", os.O_DSYNC), ("none", os.O_DIRECT)):
        try:
            backend = BlockBackend(image, cache=cache)
        except BlockImageError as error:
            pytest.skip(f"the filesystem under the test refuses {cache}: {error}")
        assert fcntl.fcntl(backend.fd, fcntl.F_GETFL) & flag
        backend.close()


def test_cache_none_bounces_misaligned_buffers(memory, image):
    try:
        device, drv = start(memory, image, cache="none")
    except BlockImageError as error:
        pytest.skip(f"no O_DIRECT here: {error}")
    data = os.urandom(8192)
    assert drv.write(8, data, split=1000).status == VIRTIO_BLK_S_OK  # misaligned buffers
    assert drv.read(8, 16).data == data
    assert drv.read(8, 16, split=1000).data == data
    assert image_bytes(image, 4096, 8192) == data
    device.close()


# --- hostile guests ------------------------------------------------------------------------

GUARD = b"\xa5"
RINGS, TABLES, DATA, DATA_END = 0x100000, 0x110000, 0x200000, 0x300000
HOSTILE_RAM = 4 * MiB
QSIZE = 16


@st.composite
def descriptor(draw):
    flags = draw(
        st.sampled_from([0, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_INDIRECT])
        | st.integers(0, 7)
        | st.integers(0, 0xFFFF)
    )
    if flags & VIRTQ_DESC_F_INDIRECT and draw(st.booleans()):
        addr = TABLES + 16 * draw(st.integers(0, 8))
        length = 16 * draw(st.integers(0, 20)) + draw(st.sampled_from([0, 0, 8]))
    elif flags & VIRTQ_DESC_F_WRITE and not flags & VIRTQ_DESC_F_INDIRECT:
        # Writable buffers are in the data area or not in RAM at all: any byte the device
        # writes elsewhere is a bug the guard pattern shows.
        addr = draw(
            st.integers(DATA, DATA_END - 1)
            | st.sampled_from([HOSTILE_RAM, HOSTILE_RAM - 1, 2**64 - 1, 2**63])
        )
        room = max(DATA_END - addr, 1) if addr < DATA_END else 2**32 - 1
        length = draw(st.integers(0, min(room, 1 << 16)) | st.sampled_from([room, 2**32 - 1]))
        if addr < DATA_END:
            length = min(length, DATA_END - addr)
        elif addr == HOSTILE_RAM - 1:
            length = max(length, 2)  # the last byte of RAM alone would be a fair buffer
    else:
        addr = draw(st.integers(0, HOSTILE_RAM + 16) | st.sampled_from([DATA, 2**64 - 16]))
        length = draw(st.integers(0, 4096) | st.sampled_from([16, 17, 528, 2**32 - 1]))
    nxt = draw(st.integers(0, QSIZE + 2) | st.integers(0, 0xFFFF))
    return addr, length, flags, nxt


def _request(draw, first: int, header: int, table_base: int = 0) -> list[tuple]:
    """Three descriptors of a plausible request: header, data, status byte."""
    data_flags = draw(st.sampled_from([0, VIRTQ_DESC_F_WRITE]))
    data_len = draw(st.sampled_from([0, 512, 1024, 4096, 100]))
    data = DATA + 0x10000 * draw(st.integers(1, 8))
    status = DATA + 0xF0000 + 16 * first
    return [
        (DATA + 0x1000 * header, 16, VIRTQ_DESC_F_NEXT, table_base + first + 1),
        (data, data_len, data_flags | VIRTQ_DESC_F_NEXT, table_base + first + 2),
        (status, 1, VIRTQ_DESC_F_WRITE, 0),
    ]


@st.composite
def plausible_table(draw, entries: int):
    table = []
    while len(table) + 3 <= entries:
        table += _request(draw, len(table), draw(st.integers(0, 3)))
    table += [(0, 0, 0, 0)] * (entries - len(table))
    # Break some of it: each descriptor has a one-in-ten chance of being replaced.
    return [d if draw(st.integers(0, 9)) else draw(descriptor()) for d in table]


@st.composite
def hostile_ring(draw):
    plausible = draw(st.booleans())
    if plausible:
        table = draw(plausible_table(QSIZE))
        if draw(st.booleans()):  # one request through an indirect table
            table[QSIZE - 1] = (TABLES, 16 * 3, VIRTQ_DESC_F_INDIRECT, 0)
        indirect = draw(plausible_table(6))
        heads = [draw(st.sampled_from([0, 3, 6, 9, 12, 15])) for _ in range(QSIZE)]
        heads = [h if draw(st.integers(0, 7)) else draw(st.integers(0, 0xFFFF)) for h in heads]
        avail_idx = draw(st.integers(0, QSIZE + 1))
    else:
        table = draw(st.lists(descriptor(), min_size=QSIZE, max_size=QSIZE))
        indirect = draw(st.lists(descriptor(), min_size=0, max_size=28))
        heads = draw(st.lists(st.integers(0, QSIZE + 1), min_size=QSIZE, max_size=QSIZE))
        avail_idx = draw(st.integers(0, QSIZE + 2) | st.integers(0, 0xFFFF))
    return {
        "table": table,
        "indirect": indirect,
        "heads": heads,
        "avail_idx": avail_idx,
        "headers": draw(
            st.lists(
                st.tuples(
                    st.sampled_from([0, 1, 4, 8, 11, 13, 2, 99, 0xFFFFFFFF]),
                    st.sampled_from([0, 1, 7, 8, 255, 256, 2**63, 2**64 - 1]),
                ),
                min_size=4,
                max_size=4,
            )
        ),
        "used_event": draw(st.integers(0, 0xFFFF)),
        "avail_flags": draw(st.integers(0, 0xFFFF)),
    }


def _play_hostile(make_device, ring, legacy, event_idx):
    memory = GuestMemory(HOSTILE_RAM)
    memory.write(0, GUARD * HOSTILE_RAM)
    device = make_device(memory)
    transport = DirectTransport(device, legacy=legacy)
    driver = VirtioDriver(transport, memory, arena=(RINGS, TABLES), data=(DATA, DATA_END))
    wanted = ~0 if event_idx else ~(1 << 29)
    driver.init(wanted)
    q = driver.queues[0]
    used_area = (q.used, q.used + 6 + 8 * q.size)
    before = memory.read(0, HOSTILE_RAM)
    for i, d in enumerate(ring["table"][: q.size]):
        memory.write(q.desc + 16 * i, struct.pack("<QIHH", *d))
    for i, d in enumerate(ring["indirect"]):
        memory.write(TABLES + 16 * i, struct.pack("<QIHH", *d))
    # Request headers where readable descriptors are likely to point.
    for i, (kind, sector) in enumerate(ring["headers"]):
        memory.write(DATA + 0x1000 * i, struct.pack("<IIQ", kind, 0, sector))
    for i, head in enumerate(ring["heads"][: q.size]):
        memory.write_u16(q.avail + 4 + 2 * i, head)
    memory.write_u16(q.avail + 4 + 2 * q.size, ring["used_event"])
    memory.write_u16(q.avail, ring["avail_flags"])
    before = memory.read(0, HOSTILE_RAM)
    memory.write_u16(q.avail + 2, ring["avail_idx"])
    device.notify(0)
    device.notify(0)

    after = memory.read(0, HOSTILE_RAM)
    # Outside the used ring, the avail idx the test wrote and the data area: untouched.
    for start, end in [(0, q.avail + 2), (q.avail + 4, used_area[0]), (used_area[1], DATA)]:
        assert after[start:end] == before[start:end], f"device wrote into {start:#x}-{end:#x}"
    assert after[DATA_END:] == before[DATA_END:]

    # A valid state: working, NEEDS_RESET (modern) or a stopped queue (legacy).
    status = device.get_status()
    stopped = device.queues[0].stopped
    if legacy:
        assert not status & DEVICE_NEEDS_RESET
    else:
        assert not stopped
        assert bool(status & DEVICE_NEEDS_RESET) == device.broken
    # Whatever happened, a reset brings the device back.
    driver.rings.release(RINGS)
    driver.buffers.release(DATA)
    driver.init(wanted)
    return device, driver


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(ring=hostile_ring(), legacy=st.booleans(), event_idx=st.booleans())
def test_hostile_rings_never_escape_the_blk_device(tmp_path_factory, ring, legacy, event_idx):
    path = tmp_path_factory.mktemp("hostile") / "disk.img"
    with open(path, "wb") as f:
        f.truncate(128 * 1024)
    holder = []

    def make(memory):
        device = VirtioBlk(memory, BlockBackend(path), queue_size=QSIZE, workers=0)
        holder.append(device)
        return device

    try:
        device, driver = _play_hostile(make, ring, legacy, event_idx)
        drv = BlkDriver(driver)
        assert drv.write(0, b"\x11" * 512).status == VIRTIO_BLK_S_OK
        assert drv.read(0, 1).data == b"\x11" * 512
        assert device.get_status() & DEVICE_NEEDS_RESET == 0
    finally:
        for device in holder:
            device.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ring=hostile_ring(), legacy=st.booleans(), event_idx=st.booleans())
def test_hostile_rings_never_escape_the_rng_device(ring, legacy, event_idx):
    def make(memory):
        return VirtioRng(memory, queue_size=QSIZE)

    device, driver = _play_hostile(make, ring, legacy, event_idx)
    assert len(RngDriver(driver).read(16)) == 16


def test_hostile_rings_with_io_threads_never_escape(image):
    # The same game with the thread pool: requests finish on workers after notify returns.
    ring = {
        "table": [(DATA, 16, VIRTQ_DESC_F_NEXT, 1), (DATA + 0x8000, 4097, VIRTQ_DESC_F_WRITE, 0)]
        + [(DATA + 0x1000 * i, 16, VIRTQ_DESC_F_NEXT, i + 1) for i in range(2, QSIZE)],
        "indirect": [],
        "heads": [0, 2, 0, 15, 3, 0, 1, 17, 0, 0, 0, 0, 0, 0, 0, 0],
        "avail_idx": 9,
        "headers": [(VIRTIO_BLK_T_IN, 8), (VIRTIO_BLK_T_OUT, 0), (4, 0), (8, 0)],
        "used_event": 0,
        "avail_flags": 0,
    }
    holder = []

    def make(memory):
        device = VirtioBlk(memory, BlockBackend(image), queue_size=QSIZE, workers=3)
        holder.append(device)
        return device

    for legacy in (False, True):
        device, driver = _play_hostile(make, ring, legacy, True)
        assert BlkDriver(driver).read(0, 1).status == VIRTIO_BLK_S_OK
        device.close()


def _at_most_150_bytes_a_read(source: bytes, calls: list[int]):
    """A read into views that stops after 150 bytes, as a signal or a pipe might."""

    def read(views, offset):
        calls.append(offset)
        n = 0
        for view in views:
            take = min(len(view), 150 - n, len(source) - offset - n)
            view[:take] = source[offset + n : offset + n + take]
            n += take
            if n == 150 or take < len(view):
                break
        return n

    return read


def test_transfers_go_on_after_short_transfers(memory):
    from pcivm.virtio.blk import _transfer

    source = bytes(range(256)) * 4
    lengths = [100, 1, 300, 623]
    calls = []
    read = _at_most_150_bytes_a_read(source, calls)
    # The VMM's own buffers (bounce buffers)...
    buffers = [bytearray(n) for n in lengths]
    own = IoVec.over([memoryview(b) for b in buffers])
    assert _transfer(lambda part, fd, offset: read(part.views(), offset), -1, own, 0) == 1024
    assert b"".join(buffers) == source
    assert calls == list(range(0, 1024, 150))
    # ... and guest RAM.
    calls.clear()
    addrs = [0x10000 * (i + 1) for i in range(4)]
    iov = memory.iovec(addrs, lengths)
    done = _transfer(lambda part, fd, offset: read(part.views(), offset), -1, iov, 0)
    assert done == 1024
    assert b"".join(memory.read(a, n) for a, n in zip(addrs, lengths, strict=True)) == source
    assert calls == list(range(0, 1024, 150))
    # A read stops at the end of the file.
    assert _transfer(lambda part, fd, offset: 0, -1, iov, 0) == 0


def test_transfer_stops_at_end_of_file():
    from pcivm.virtio.blk import _transfer

    def eof_after_10(part, fd, offset):
        view = part.views()[0]
        n = max(0, min(10 - offset, len(view)))
        view[:n] = b"x" * n
        return n

    assert _transfer(eof_after_10, -1, IoVec.over([memoryview(bytearray(64))]), 0) == 10


def test_a_kick_thread_does_the_first_request_itself_and_hands_on_the_rest(memory, image):
    device, drv = start(memory, image, workers=2)
    threads, read = [], device.backend.preadv
    device.backend.try_preadv = lambda views, offset: None  # every read would wait

    def recording_read(views, offset):
        threads.append((offset, threading.current_thread().name))
        return read(views, offset)

    device.backend.preadv = recording_read
    q = drv.driver.queues[0]
    requests = [
        drv.driver.submit(
            0, [struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, 8 * i)], [4096, 1], kick=False
        )
        for i in range(3)
    ]
    assert q.kicks == 0
    kicker = threading.Thread(target=device.notify, args=(0,), kwargs={"on_kick_thread": True},
                              name="kicks")  # fmt: skip
    kicker.start()
    kicker.join(5)
    for request in requests:
        assert drv.result(request).status == VIRTIO_BLK_S_OK
    by_offset = dict(threads)
    assert by_offset[0] == "kicks"
    assert by_offset[4096] != "kicks" and by_offset[8192] != "kicks"
    # A kick from any other thread (a vCPU's, without an ioeventfd) blocks on nothing.
    threads.clear()
    drv.read(0, 8)
    assert [name for _, name in threads] != [threading.current_thread().name]
    device.close()


def test_a_read_the_page_cache_holds_completes_on_the_kicking_thread(memory, image):
    needs_page_cache_nowait(image)
    device, drv = start(memory, image, workers=2)
    with open(image, "r+b") as f:
        f.write(b"cached" * 1000)  # in the page cache now
    header = struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, 0)
    request = drv.driver.submit(0, [header], [4096, 1], kick=False)
    device.notify(0, on_kick_thread=True)
    assert drv.driver.poll(0) == [request]  # used before the kick returned
    assert drv.result(request).data[:12] == b"cachedcached"
    assert device._workers._threads == []  # no request needed a worker
    # More than AT_ONCE_MAX_BYTES is not done at once under the device lock: the kick
    # thread keeps it and reads it (blocking preadv) once the lock is released.
    blocking, read = [], device.backend.preadv
    device.backend.preadv = lambda views, offset: blocking.append(offset) or read(views, offset)
    big = drv.driver.submit(0, [header], [AT_ONCE_MAX_BYTES + 4096, 1], kick=False)
    device.notify(0, on_kick_thread=True)
    assert drv.result(big).status == VIRTIO_BLK_S_OK
    assert blocking == [0]
    assert device._workers._threads == []
    # A kick taken on a vCPU's thread (no ioeventfd) leaves even that to a worker.
    assert drv.read(0, 8).data[:12] == b"cachedcached"
    assert len(device._workers._threads) == 1
    assert drv.write(8, b"w" * 4096).status == VIRTIO_BLK_S_OK
    assert image_bytes(image, 8 * 512, 4096) == b"w" * 4096
    device.close()


def test_try_transfers_refuse_what_would_wait_and_stop_asking_a_file_that_cannot(image):
    needs_page_cache_nowait(image)
    memory = GuestMemory(4 * MiB)
    data = memory.iovec([0x1000], [4096])
    try:
        direct = BlockBackend(image, cache="none", locking=False)
    except BlockImageError:
        pass  # no O_DIRECT on this filesystem
    else:
        assert direct.try_preadv(data, 0) is None  # O_DIRECT waits for the disk
        direct.close()
    through = BlockBackend(image, cache="writethrough", locking=False)
    assert through.try_pwritev(data, 0) is None  # O_DSYNC waits too
    through.close()
    backend = BlockBackend(image, locking=False)
    assert backend.try_preadv(data, 0) == 4096
    calls = []

    def unsupported(iov, fd, offset, flags=0):
        calls.append(flags)
        raise OSError(errno.EOPNOTSUPP, "not supported")

    real = IoVec.preadv
    IoVec.preadv = unsupported
    try:
        assert backend.try_preadv(data, 0) is None
        assert backend.try_preadv(data, 0) is None
    finally:
        IoVec.preadv = real
    assert len(calls) == 1  # asked once, then no more
    backend.close()


def test_try_transfers_back_off_while_they_would_wait_and_resume_on_a_hit(image):
    needs_page_cache_nowait(image)
    backend = BlockBackend(image, locking=False)
    data = GuestMemory(4 * MiB).iovec([0x1000], [4096])
    cached, attempts = False, []
    real = IoVec.preadv

    def page_cache(iov, fd, offset, flags=0):
        if flags & os.RWF_NOWAIT:
            attempts.append(offset)
            if not cached:
                raise BlockingIOError(errno.EAGAIN, "would block")
        return real(iov, fd, offset, flags)

    IoVec.preadv = page_cache
    try:
        assert all(backend.try_preadv(data, 0) is None for _ in range(300))
        # Asked after 0, 1, 2, 4, ... 64 skipped requests, then once in 65.
        assert len(attempts) == 8 + (300 - 127 - 1) // 65
        cached = True
        results = [backend.try_preadv(data, 0) for _ in range(200)]
    finally:
        IoVec.preadv = real
    assert results[-100:] == [4096] * 100  # once one attempt hit, every request is tried
    backend.close()


def test_an_image_in_ram_is_read_and_written_at_once():
    from pcivm.virtio.blk import RAM_FILESYSTEMS, filesystem_type

    path = f"/dev/shm/pcivm-test-{os.getpid()}.img"
    try:
        with open(path, "wb") as f:
            f.write(b"ram" * 4096)
            in_ram = filesystem_type(f.fileno()) in RAM_FILESYSTEMS
    except (FileNotFoundError, PermissionError) as error:  # no /dev/shm, or not ours
        pytest.skip(f"no tmpfs at /dev/shm: {error}")
    if not in_ram:
        os.unlink(path)
        pytest.skip("no tmpfs at /dev/shm")
    try:
        backend = BlockBackend(path, cache="writethrough", locking=False)
        assert backend.in_ram and filesystem_type(backend.fd) in RAM_FILESYSTEMS
        memory = GuestMemory(4 * MiB)
        data = memory.iovec([0x1000], [4096])
        for _ in range(3):
            assert backend.try_preadv(data, 0) == 4096
        assert memory.read(0x1000, 6) == b"ramram"
        memory.write(0x2000, b"w" * 512)
        assert backend.try_pwritev(memory.iovec([0x2000], [512]), 512) == 512  # O_DSYNC: no disk
        backend.close()
        assert image_bytes(path, 512, 512) == b"w" * 512
    finally:
        os.unlink(path)
    with open("/proc/self/stat", "rb") as f:
        assert filesystem_type(f.fileno()) not in RAM_FILESYSTEMS


def scattered_mib(memory):
    """1 MiB of guest RAM as 256 pages with a gap after each: a 1 MiB read's table."""
    addrs = [0x100000 + 2 * 4096 * i for i in range(256)]
    return addrs, memory.iovec(addrs, [4096] * 256)


def stamped(first_page: int, pages: int) -> bytes:
    return b"".join(struct.pack("<Q", p) * 512 for p in range(first_page, first_page + pages))


def cutting(backend) -> None:
    """Make `backend` cut large reads: as if cut ones had been measured the faster."""
    backend.split_policy = SplitPolicy(enabled=True)
    for _ in range(RUN - 1):
        backend.split_policy.record(False, 1.0, MiB)
        backend.split_policy.record(True, 0.001, MiB)


def ring_reads(monkeypatch) -> list[tuple[int, int]]:
    """Record (file offset, ranges) of every read handed to an io_uring worker; the reads
    themselves are the real ones."""
    started, real = [], ReadRing.start_readv

    def recording(ring, fd, vector, count, offset, flags, keep):
        started.append((offset, count))
        return real(ring, fd, vector, count, offset, flags, keep)

    monkeypatch.setattr(ReadRing, "start_readv", recording)
    return started


def test_a_large_read_done_at_once_is_cut_with_a_kernel_worker(image, monkeypatch):
    needs_page_cache_nowait(image)
    with open(image, "r+b") as f:
        f.write(stamped(0, IMAGE_SIZE // 4096))  # in the page cache now
    memory = GuestMemory(8 * MiB)
    memory.write(0, b"\xee" * (4 * MiB))
    backend = BlockBackend(image, locking=False)
    cutting(backend)
    fronts, real = [], IoVec.preadv

    def recording(iov, fd, offset, flags=0):
        fronts.append((offset, iov.nbytes))
        return real(iov, fd, offset, flags)

    monkeypatch.setattr(IoVec, "preadv", recording)
    backs = ring_reads(monkeypatch)
    addrs, iov = scattered_mib(memory)
    assert backend.try_preadv(iov, MiB) == MiB
    # The front part on this thread, the back part by the kernel's worker, end to end.
    [(front, front_bytes)], [(back, back_ranges)] = fronts, backs
    assert (front, back, front_bytes + 4096 * back_ranges) == (MiB, MiB + front_bytes, MiB)
    expected = stamped(256, 256)
    for i, addr in enumerate(addrs):
        assert memory.read(addr, 4096) == expected[4096 * i : 4096 * (i + 1)]
        assert memory.read(addr + 4096, 4096) == b"\xee" * 4096  # the gaps are untouched
    # A read the file ends in: the front part is whole, the back part finds the end.
    fronts.clear()
    backs.clear()
    assert backend.try_preadv(iov, IMAGE_SIZE - MiB // 2) == MiB // 2
    assert (len(fronts), len(backs)) == (1, 1)
    # Smaller reads are not cut.
    fronts.clear()
    backs.clear()
    assert backend.try_preadv(iov.trimmed(0, MiB // 4), 0) == MiB // 4
    assert (len(fronts), len(backs)) == (1, 0)
    backend.close()
    assert backend._back_parts._ring is None  # unmapped and closed


def test_a_back_part_is_looked_for_as_long_as_it_has_run_then_slept_on(image, monkeypatch):
    spins, real_wait = [], ReadRing.wait

    def recording(ring, spin=0.0):
        spins.append(spin)
        return real_wait(ring, spin)

    monkeypatch.setattr(ReadRing, "wait", recording)
    parts = BackParts()
    buffer = bytearray(8192)
    fd = os.open(image, os.O_RDONLY)
    try:
        assert parts.start(fd, IoVec.over([memoryview(buffer)]), 0, 0)
        time.sleep(0.05)  # the front part's copy
        assert parts.wait() == 8192
    finally:
        os.close(fd)
        parts.close()
    [spin] = spins
    assert 0.05 <= spin < 5


def test_a_cut_read_is_not_done_at_once_if_either_part_would_wait(image, monkeypatch):
    needs_page_cache_nowait(image)
    memory = GuestMemory(8 * MiB)
    backend = BlockBackend(image, locking=False)
    cutting(backend)
    _, iov = scattered_mib(memory)
    real_read, waits_from = IoVec.preadv, [0]

    def page_cache_from_the_start(iov, fd, offset, flags=0):
        if flags & os.RWF_NOWAIT and offset >= waits_from[0]:
            raise BlockingIOError(errno.EAGAIN, "would block")
        return real_read(iov, fd, offset, flags)

    monkeypatch.setattr(IoVec, "preadv", page_cache_from_the_start)
    back_error, real_wait = [None], BackParts.wait

    def back_part(parts):
        done = real_wait(parts)  # the read itself is finished first, as it would be
        if back_error[0] is not None:
            raise back_error[0]
        return done

    monkeypatch.setattr(BackParts, "wait", back_part)
    back_error[0] = BlockingIOError(errno.EAGAIN, "would block")  # the back part waits
    assert backend.try_preadv(iov, MiB) is None
    back_error[0] = None
    waits_from[0] = 0  # the front part (the backoff skips the next request first)
    assert backend.try_preadv(iov, MiB) is None and backend.try_preadv(iov, MiB) is None
    waits_from[0] = IMAGE_SIZE
    backend._nowait_skip = 0
    back_error[0] = OSError(errno.EIO, "I/O error")
    with pytest.raises(OSError, match="I/O error"):
        backend.try_preadv(iov, MiB)  # raised on this thread once both parts are done
    back_error[0] = None
    assert backend.try_preadv(iov, MiB) == MiB  # and the ring goes on
    backend.close()


def test_reads_are_cut_only_while_cut_ones_are_measured_faster(image, monkeypatch):
    needs_page_cache_nowait(image)
    memory = GuestMemory(8 * MiB)
    backend = BlockBackend(image, locking=False)
    backend.split_policy = SplitPolicy(enabled=True)
    _, iov = scattered_mib(memory)
    real, slow = IoVec.preadv, ["cut"]
    backs = ring_reads(monkeypatch)

    def one_way_slow(iov, fd, offset, flags=0):
        if slow[0] == "cut" and iov.nbytes < MiB:
            threading.Event().wait(0.01)
        elif slow[0] == "whole" and iov.nbytes == MiB:
            threading.Event().wait(0.03)
        return real(iov, fd, offset, flags)

    monkeypatch.setattr(IoVec, "preadv", one_way_slow)

    def cut_or_not(reads: int) -> list[bool]:
        cut = []
        for _ in range(reads):
            before = len(backs)
            assert backend.try_preadv(iov, 0) == MiB
            cut.append(len(backs) > before)
        return cut

    # A run of each way, then whole reads.
    assert cut_or_not(8 * RUN) == [True] * RUN + [False] * 7 * RUN
    slow[0] = "whole"
    # One run of slow whole reads, then cut ones, until the probe run of whole ones.
    cut = cut_or_not(8 * RUN)
    assert cut == [False] * RUN + [True] * 6 * RUN + [False] * RUN
    backend.close()


def test_large_reads_stay_whole_where_there_is_no_io_uring(image, monkeypatch):
    needs_page_cache_nowait(image)

    def refused():
        raise RingUnavailable(errno.EPERM, "io_uring_setup: Operation not permitted")

    monkeypatch.setattr(split_read, "ReadRing", refused)
    memory = GuestMemory(8 * MiB)
    backend = BlockBackend(image, locking=False)
    cutting(backend)
    _, iov = scattered_mib(memory)
    for _ in range(2 * RUN):
        assert backend.try_preadv(iov, 0) == MiB
    assert not backend.split_policy.enabled
    backend.close()


def test_split_policy_tries_each_way_then_keeps_the_faster_and_probes_the_other():
    policy = SplitPolicy(enabled=True)

    def reads(cut_seconds: list[float], whole_seconds: float = 0.004) -> list[bool]:
        cut = []
        for seconds in cut_seconds:
            at = policy.cut_at(MiB, 0)
            cut.append(at is not None)
            policy.record(at is not None, seconds if at else whole_seconds, MiB)
        return cut

    assert policy.cut_at(SPLIT_READ_MIN - 4096, 0) is None  # too small to ask about
    # A run of each way, then cut (the faster), with a probe run of whole reads in
    # every PROBE_RUN_EVERY runs (the 16th here).
    fast = [0.002] * RUN
    assert reads(fast * 2) == [True] * RUN + [False] * RUN
    assert reads(fast * 14) == [True] * 13 * RUN + [False] * RUN
    # A very slow cut read (an interrupt mid-copy) does not move the choice ...
    assert all(reads([0.002, 1.0, 0.002, 0.002] + fast * 3))
    # ... a run of them does: reads are whole from the next run on.
    assert reads([0.008] * RUN + fast) == [True] * RUN + [False] * RUN
    # The cut is at a page of the file, whatever the read's offset.
    assert (512 + SplitPolicy(enabled=True).cut_at(MiB, 512)) % 4096 == 0
    assert SplitPolicy(enabled=False).cut_at(MiB, 0) is None


def test_a_probe_run_is_judged_on_its_own_times_not_older_runs():
    policy = SplitPolicy(enabled=True)

    def read(cut_seconds: float, whole_seconds: float = 0.004) -> bool:
        at = policy.cut_at(MiB, 0)
        policy.record(at is not None, cut_seconds if at else whole_seconds, MiB)
        return at is not None

    for _ in range(2 * RUN):  # a run of each way: cut reads are the faster
        read(0.002)
    # A stretch in which cut reads are slow (the machine busy): whole from the next run.
    assert all(read(0.008) for _ in range(RUN))
    assert not read(0.002)
    # Whole reads until the probe run of cut ones, which are fast again ...
    for _ in range(PROBE_RUN_EVERY * RUN):
        if read(0.002):
            break
    else:
        raise AssertionError("no probe run of cut reads")
    assert all(read(0.002) for _ in range(RUN - 1))
    # ... and cut reads are back at once: the slow run before is not held against them.
    assert all(read(0.002) for _ in range(RUN))


def test_the_first_read_of_a_run_is_not_timed():
    policy = SplitPolicy(enabled=True)
    policy.cut_at(MiB, 0)
    policy.record(True, 1.0, MiB)  # a helper's first start
    for _ in range(RUN - 1):
        policy.cut_at(MiB, 0)
        policy.record(True, 0.001, MiB)
    for i in range(RUN):
        policy.cut_at(MiB, 0)
        policy.record(False, 1.0 if i == 0 else 0.002, MiB)
    assert policy.cut_at(MiB, 0) is not None  # 0.001 s a MiB cut against 0.002 whole


def test_the_front_share_moves_toward_both_parts_finishing_together():
    policy = SplitPolicy(enabled=True)
    shares = []
    for _ in range(64):
        policy.front_done(back_still_running=True)
        shares.append(policy.front_share)
    assert shares == sorted(shares) and shares[-1] == FRONT_SHARE_MAX
    for _ in range(128):
        policy.front_done(back_still_running=False)
    assert policy.front_share == FRONT_SHARE_MIN
    assert policy.cut_at(MiB, 0) == MiB * FRONT_SHARE_MIN
