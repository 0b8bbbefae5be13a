"""The split virtqueue: layout, chain resolution, every guest-controlled check, used ring
and notification suppression in both directions."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcivm.memory import GuestMemory, MiB
from pcivm.virtio.constants import (
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    VIRTQ_USED_F_NO_NOTIFY,
)
from pcivm.virtio.queue import (
    RECENT_TABLE_BYTES,
    RECENT_TABLES,
    SplitQueue,
    VirtqueueError,
    legacy_layout,
    legacy_ring_bytes,
    vring_need_event,
)
from pcivm.virtio.testing import DriverQueue

DESC, AVAIL, USED = 0x10000, 0x11000, 0x12000
R, W, N, IND = 0, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_INDIRECT


@pytest.fixture
def memory():
    return GuestMemory(4 * MiB)


def make(memory, size=8, *, event_idx=False, indirect=False):
    device = SplitQueue(memory, 16)
    device.set_size(size)
    device.set_addresses(DESC, AVAIL, USED)
    device.enable()
    device.event_idx, device.indirect = event_idx, indirect
    driver = DriverQueue(memory, 0, size, DESC, AVAIL, USED, event_idx=event_idx)
    return device, driver


def put_desc(memory, i, addr, length, flags, nxt=0, table=DESC):
    memory.write(table + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))


def test_legacy_layout_puts_the_used_ring_on_the_next_page():
    desc, avail, used = legacy_layout(0x10, 256)
    assert desc == 0x10000
    assert avail == 0x10000 + 16 * 256
    assert used == 0x10000 + 0x2000  # 4096 + 518 bytes round up to two pages
    assert legacy_ring_bytes(256) == 0x2000 + 6 + 8 * 256
    assert legacy_layout(1, 8, align=64)[2] == 0x1000 + 128 + 64


def test_a_chain_resolves_to_readable_then_writable_buffers(memory):
    q, drv = make(memory)
    request = drv.add([(0x20000, 16), (0x20100, 100)], [(0x30000, 512), (0x31000, 1)])
    drv.publish(request.head)
    chain = q.pop()
    assert chain.head == request.head
    assert chain.readable == [(0x20000, 16), (0x20100, 100)]
    assert chain.writable == [(0x30000, 512), (0x31000, 1)]
    assert (chain.readable_len, chain.writable_len) == (116, 513)
    assert q.pop() is None


def test_views_skip_and_limit_across_buffers(memory):
    q, drv = make(memory)
    memory.write(0x20000, b"abcd")
    memory.write(0x20100, b"efgh")
    drv.publish(drv.add([(0x20000, 4), (0x20100, 4)], [(0x30000, 4), (0x30100, 4)]).head)
    chain = q.pop()
    assert [bytes(v) for v in chain.readable_views(2, 4)] == [b"cd", b"ef"]
    assert chain.read(3, 100) == b"defgh"
    assert chain.write(3, b"XYZ") == 3
    assert memory.read(0x30000, 4)[3:] == b"X" and memory.read(0x30100, 2) == b"YZ"
    # Views are of guest RAM itself: no copy.
    chain.writable_views()[0][0:1] = b"!"
    assert memory.read(0x30000, 1) == b"!"
    chain.write_last_byte(0x5A)
    assert memory.read(0x30100 + 3, 1) == b"Z"


@pytest.mark.parametrize("skip", range(0, 10))
@pytest.mark.parametrize("limit", [None, 0, 1, 3, 4, 5, 8, 9])
def test_views_slice_the_stream_like_bytes_would(memory, skip, limit):
    q, drv = make(memory)
    memory.write(0x20000, b"abc")
    memory.write(0x20100, b"d")
    memory.write(0x20200, b"efgh")
    drv.publish(drv.add([(0x20000, 3), (0x20100, 1), (0x20200, 4)], [(0x30000, 1)]).head)
    chain = q.pop()
    stream = b"abcdefgh"
    want = stream[skip:] if limit is None else stream[skip : skip + limit]
    views = chain.readable_views(skip, limit)
    assert b"".join(bytes(v) for v in views) == want
    assert all(len(v) for v in views)


def test_indirect_table_after_direct_descriptors(memory):
    q, drv = make(memory, indirect=True)
    table = 0x40000
    put_desc(memory, 0, 0x20000, 16, R | N, 1)
    put_desc(memory, 1, table, 32, IND)
    put_desc(memory, 0, 0x21000, 8, R | N, 1, table=table)
    put_desc(memory, 1, 0x30000, 64, W, 0, table=table)
    drv.publish(0)
    chain = q.pop()
    assert chain.readable == [(0x20000, 16), (0x21000, 8)]
    assert chain.writable == [(0x30000, 64)]


def test_the_write_flag_of_an_indirect_descriptor_is_ignored(memory):
    q, drv = make(memory, indirect=True)
    put_desc(memory, 0, 0x40000, 16, IND | W)
    put_desc(memory, 0, 0x20000, 8, R, table=0x40000)
    drv.publish(0)
    assert q.pop().readable == [(0x20000, 8)]


def test_zero_length_buffers_are_skipped(memory):
    q, drv = make(memory)
    put_desc(memory, 0, 0x20000, 0, R | N, 1)
    put_desc(memory, 1, 0x30000, 4, W)
    drv.publish(0)
    chain = q.pop()
    assert chain.readable == [] and chain.writable == [(0x30000, 4)]


def broken(memory, setup, message, **kw):
    q, drv = make(memory, **kw)
    setup()
    drv.publish(0)
    with pytest.raises(VirtqueueError, match=message):
        q.pop()


@pytest.mark.parametrize(
    "descs,message",
    [
        ([(0x20000, 8, R | N, 0)], "longer than its table"),  # a loop onto itself
        ([(0x20000, 8, R | N, 1), (0x20000, 8, R | N, 0)], "longer than its table"),
        ([(0x20000, 8, R | N, 9)], "next index 9 out of range"),
        ([(4 * MiB - 4, 8, R, 0)], "outside RAM"),
        ([(2**64 - 8, 16, W, 0)], "outside RAM"),
        ([(0x30000, 8, W | N, 1), (0x20000, 8, R, 0)], "readable buffer after a writable"),
        ([(0x40000, 16, IND, 0)], "indirect descriptor not negotiated"),
    ],
)
def test_a_broken_chain_is_refused(memory, descs, message):
    def setup():
        for i, d in enumerate(descs):
            put_desc(memory, i, *d)

    broken(memory, setup, message)


@pytest.mark.parametrize(
    "outer,inner,message",
    [
        ((0x40000, 16, IND | N, 1), [], "indirect descriptor with NEXT"),
        ((0x40000, 24, IND, 0), [], "indirect table length"),
        ((0x40000, 0, IND, 0), [], "indirect table length"),
        ((4 * MiB - 16, 32, IND, 0), [], "outside RAM"),
        ((0x40000, 16, IND, 0), [(0x41000, 16, IND, 0)], "nested indirect"),
        ((0x40000, 32, IND, 0), [(0x20000, 8, R | N, 1), (0x20000, 8, R | N, 0)], "longer"),
        ((0x40000, 32, IND, 0), [(0x20000, 8, R | N, 2)], "next index 2 out of range"),
    ],
)
def test_a_broken_indirect_table_is_refused(memory, outer, inner, message):
    def setup():
        put_desc(memory, 0, *outer)
        for i, d in enumerate(inner):
            put_desc(memory, i, *d, table=0x40000)

    broken(memory, setup, message, indirect=True)


def test_a_head_outside_the_table_is_refused(memory):
    q, drv = make(memory)
    drv.publish(8)
    with pytest.raises(VirtqueueError, match="head index out of range"):
        q.pop()


def test_a_chain_over_4_gib_is_refused(memory):
    q, drv = make(memory, indirect=True)
    # Every buffer is the same 3 MiB of RAM: each one is valid, their sum is not.
    big, table, entries = 3 * MiB, 0x40000, 1400
    for i in range(entries):
        put_desc(memory, i, 0x100000, big, R | N, i + 1, table=table)
    put_desc(memory, entries - 1, 0x100000, big, R, table=table)
    put_desc(memory, 0, table, 16 * entries, IND)
    drv.publish(0)
    with pytest.raises(VirtqueueError, match="more than 4 GiB"):
        q.pop()


def test_the_available_index_cannot_run_ahead_more_than_the_queue_size(memory):
    q, drv = make(memory, size=8)
    memory.write_u16(AVAIL + 2, 9)
    with pytest.raises(VirtqueueError, match="9 entries ahead"):
        q.pop()


def test_the_available_index_wraps_at_16_bits(memory):
    q, drv = make(memory, size=8)
    q.last_avail_idx = drv.avail_idx = 0xFFFF
    put_desc(memory, 3, 0x20000, 4, R)
    drv.publish(3)
    assert drv.avail_idx == 0
    assert q.pop().head == 3
    assert q.last_avail_idx == 0


@pytest.mark.parametrize("size", [0, 3, 32])
def test_queue_size_must_be_a_power_of_two_up_to_the_maximum(memory, size):
    q = SplitQueue(memory, 16)
    q.set_size(size)
    q.set_addresses(DESC, AVAIL, USED)
    with pytest.raises(VirtqueueError, match="not a power of two"):
        q.enable()
    assert not q.ready


@pytest.mark.parametrize(
    "desc,avail,used,message",
    [
        (DESC + 8, AVAIL, USED, "descriptor table .* misaligned"),
        (DESC, AVAIL + 1, USED, "available ring .* misaligned"),
        (DESC, AVAIL, USED + 2, "used ring .* misaligned"),
        (4 * MiB - 16, AVAIL, USED, "descriptor table .* outside RAM"),
        (DESC, AVAIL, 4 * MiB - 8, "used ring .* outside RAM"),
    ],
)
def test_rings_must_be_aligned_and_inside_ram(memory, desc, avail, used, message):
    q = SplitQueue(memory, 16)
    q.set_addresses(desc, avail, used)
    with pytest.raises(VirtqueueError, match=message):
        q.enable()


def test_an_enabled_queue_cannot_be_moved(memory):
    q, _ = make(memory)
    with pytest.raises(VirtqueueError, match="while enabled"):
        q.set_addresses(0, 0, 0)


def test_used_entries_carry_head_and_length(memory):
    q, drv = make(memory)
    request = drv.add([], [(0x30000, 10)])
    drv.publish(request.head)
    chain = q.pop()
    q.add_used(chain.head, 7)
    assert drv.collect() == [request]
    assert request.used_len == 7


def test_no_interrupt_flag_without_event_idx(memory):
    q, drv = make(memory)
    assert not q.should_interrupt()  # nothing used yet
    for flags, wanted in [(0, True), (VIRTQ_AVAIL_F_NO_INTERRUPT, False)]:
        memory.write_u16(AVAIL, flags)
        request = drv.add([], [(0x30000, 4)])
        drv.publish(request.head)
        q.add_used(q.pop().head, 0)
        assert q.should_interrupt() is wanted
        drv.collect()


def test_event_idx_interrupts_exactly_when_used_event_is_crossed(memory):
    q, drv = make(memory, event_idx=True)
    drv.rearm = False
    drv.set_used_event(2)  # interrupt when the entry with index 2 is written
    results = []
    for _ in range(5):
        request = drv.add([], [(0x30000, 4)])
        drv.publish(request.head)
        q.add_used(q.pop().head, 0)
        results.append(q.should_interrupt())
        drv.collect()
    # The first decision always interrupts (nothing signalled yet), then only at idx 2->3.
    assert results == [True, False, True, False, False]


def test_event_idx_batch_decision_matches_vring_need_event(memory):
    q, drv = make(memory, event_idx=True)
    drv.rearm = False
    drv.set_used_event(0)
    for _ in range(1):
        drv.publish(drv.add([], [(0x30000, 4)]).head)
        q.add_used(q.pop().head, 0)
    assert q.should_interrupt()
    drv.collect()
    drv.set_used_event(3)
    for _ in range(3):  # used idx 1 -> 4 crosses 3
        drv.publish(drv.add([], [(0x30000, 4)]).head)
        q.add_used(q.pop().head, 0)
    assert q.should_interrupt()
    drv.collect()
    for _ in range(2):  # 4 -> 6 does not cross 3
        drv.publish(drv.add([], [(0x30000, 4)]).head)
        q.add_used(q.pop().head, 0)
    assert not q.should_interrupt()


@given(event=st.integers(0, 0xFFFF), old=st.integers(0, 0xFFFF), step=st.integers(0, 0x7FFF))
def test_vring_need_event_is_crossing_in_16_bit_arithmetic(event, old, step):
    new = (old + step) & 0xFFFF
    crossed = any((old + k) & 0xFFFF == event for k in range(step))
    assert vring_need_event(event, new, old) is crossed


def test_no_notify_flag_and_avail_event(memory):
    q, drv = make(memory)
    q.set_notification(False)
    assert memory.read_u16(USED) == VIRTQ_USED_F_NO_NOTIFY
    drv.publish(drv.add([], [(0x30000, 4)]).head)
    assert not drv.kick_needed(0)
    q.set_notification(True)
    assert drv.kick_needed(0)

    q, drv = make(memory, event_idx=True)
    drv.publish(drv.add([], [(0x30000, 4)]).head)
    assert drv.kick_needed(0)  # avail_event 0: the first entry kicks
    q.pop()  # avail_event follows what the device has seen
    assert memory.read_u16(USED + 4 + 8 * 8) == 1
    drv.publish(drv.add([], [(0x30000, 4)]).head)
    assert drv.kick_needed(1)
    q.set_notification(False)
    q.pop()  # while busy, avail_event stays behind: the driver does not kick
    drv.publish(drv.add([], [(0x30000, 4)]).head)
    assert not drv.kick_needed(2)


@settings(max_examples=300)
@given(
    descs=st.lists(
        st.tuples(
            st.sampled_from([0x20000, 0x3FFFF0, 4 * MiB, 2**64 - 1, 0]),
            st.integers(0, 2**32 - 1) | st.integers(0, 64),
            st.integers(0, 0xFFFF),
            st.integers(0, 0xFFFF) | st.integers(0, 9),
        ),
        min_size=8,
        max_size=8,
    ),
    head=st.integers(0, 0xFFFF) | st.integers(0, 8),
    avail_idx=st.integers(0, 0xFFFF),
)
def test_random_rings_pop_a_valid_chain_or_raise_virtqueue_error(descs, head, avail_idx):
    memory = GuestMemory(4 * MiB)
    q, drv = make(memory, indirect=True)
    for i, d in enumerate(descs):
        put_desc(memory, i, *d)
        put_desc(memory, i, *d, table=0x20000)
    memory.write_u16(AVAIL + 4, head)
    memory.write_u16(AVAIL + 2, avail_idx)
    try:
        chain = q.pop()
    except VirtqueueError:
        return
    if chain is not None:
        for addr, length in chain.readable + chain.writable:
            assert addr >= 0 and addr + length <= 4 * MiB


BULK_LOW_END = 40 * MiB


@st.composite
def _linear_tables(draw):
    # A table shaped like Linux's (entry i links to i + 1, readable entries first), in low
    # RAM or all above 4 GiB, sometimes with one entry bent: empty, outside RAM, across
    # the end of RAM, INDIRECT, an unknown flag, a readable one after the writable ones,
    # a link elsewhere.
    readable, writable = draw(st.integers(0, 4)), draw(st.integers(0, 30))
    # Well inside low RAM (where tables are checked as byte columns), close to its end
    # (where the columns cannot vouch for them), above 4 GiB.
    base = draw(st.sampled_from([0x100000, BULK_LOW_END - 0x40000, 1 << 32]))
    entries = [[base + 0x1000 * i, draw(st.sampled_from([1, 16, 4096])), R, None]
               for i in range(max(1, readable + writable))]  # fmt: skip
    for entry in entries[readable:]:
        entry[2] = W
    bend = draw(st.none() | st.tuples(st.integers(0, len(entries) - 1), st.integers(0, 7)))
    if bend is not None:
        i, kind = bend
        if kind == 0:
            entries[i][1] = 0
        elif kind == 1:
            entries[i][0] = 2**64 - 16
        elif kind == 2:
            entries[i][0:2] = [BULK_LOW_END - 8, 16]
        elif kind == 3:
            entries[i][2] = IND
        elif kind == 4:
            entries[i][2] |= 0x80
        elif kind == 5:
            entries[i][2] = R
        elif kind == 6:
            entries[i][3] = 0
        else:
            entries[i][3] = 200
    return entries


def _put_table(memory, entries, table=0x20000):
    for i, (addr, length, flags, link) in enumerate(entries):
        more = N if i + 1 < len(entries) else 0
        put_desc(memory, i, addr, length, flags | more, i + 1 if link is None else link, table)
    put_desc(memory, 0, table, 16 * len(entries), IND)


def _resolved(q, memory):
    try:
        chain = q._walk(0)
    except VirtqueueError as exc:
        return str(exc)
    views = [bytes(v) == bytes(memory.read(a, n)) for v, (a, n) in zip(
        chain.readable_views() + chain.writable_views(), chain.readable + chain.writable,
        strict=True)]  # fmt: skip
    return chain.readable, chain.writable, chain.readable_len, chain.writable_len, views


@settings(max_examples=300)
@given(entries=_linear_tables())
def test_an_indirect_table_in_bulk_resolves_as_the_walk_does(entries):
    # The bulk path for Linux-shaped tables must take exactly what the descriptor-by-
    # descriptor walk takes, and refuse (through the walk) exactly what it refuses.
    memory = GuestMemory(BULK_LOW_END + 4 * MiB, lowmem_limit=BULK_LOW_END)  # 4 MiB above 4 GiB
    q, drv = make(memory, indirect=True)
    _put_table(memory, entries)
    bulk = _resolved(q, memory)
    q._take_linear_table = lambda *_: None  # the walk alone
    assert bulk == _resolved(q, memory)


@settings(max_examples=200)
@given(base=_linear_tables(), data=st.data())
def test_tables_seen_before_resolve_as_a_fresh_queue_resolves_them(base, data):
    # A queue keeps the tables it took in bulk (`_RecentTables`): one seen before is taken
    # again as it was, and one with the same ends and another middle, or any entry
    # changed, must be judged afresh (an entry moved outside RAM refused again).
    memory = GuestMemory(BULK_LOW_END + 4 * MiB, lowmem_limit=BULK_LOW_END)
    shared, _ = make(memory, indirect=True)
    variants = [base]
    for _ in range(data.draw(st.integers(1, 3))):
        entries = [list(entry) for entry in base]
        i = data.draw(st.integers(0, len(entries) - 1))
        entries[i][0] = data.draw(st.sampled_from([0x200000, 2**64 - 16, BULK_LOW_END - 8]))
        variants.append(entries)
    order = data.draw(st.lists(st.integers(0, len(variants) - 1), min_size=2, max_size=12))
    for k in order:
        fresh, _ = make(memory, indirect=True)  # (its driver side clears the ring first)
        _put_table(memory, variants[k])
        assert _resolved(shared, memory) == _resolved(fresh, memory)


def test_a_table_seen_before_is_taken_without_checking_it_again(memory, monkeypatch):
    q, _ = make(memory, indirect=True)
    entries = [[0x30000, 16, R, None], *([0x100000 + 0x1000 * i, 4096, W, None] for i in range(64))]
    entries.append([0x40000, 1, W, None])
    _put_table(memory, entries)
    first = _resolved(q, memory)
    assert first[3] == 64 * 4096 + 1

    def checked(records):
        raise AssertionError("checked again")

    monkeypatch.setattr(memory, "iovec_of_table", checked)
    assert _resolved(q, memory) == first  # the same bytes: taken as before
    entries[5][0] = 0x3FF000  # the same ends, another middle: checked
    _put_table(memory, entries)
    with pytest.raises(AssertionError, match="checked again"):
        q._walk(0)


def test_the_tables_kept_are_bounded_in_number_and_bytes(memory):
    q, _ = make(memory, indirect=True)
    for n in range(RECENT_TABLES + 8):  # many small tables, each with other ends
        _put_table(memory, [[0x100000 + 16 * n, 16, R, None]] * 12 + [[0x40000, 1, W, None]])
        q._walk(0)
    assert len(q._recent_tables._by_key) == RECENT_TABLES
    big = 100  # entries of a large table
    for n in range(RECENT_TABLE_BYTES // (16 * big) + 8):
        _put_table(memory, [[0x100000 + 16 * n, 16, R, None]] * (big - 1) + [[0x40000, 1, W, None]])
        q._walk(0)
    assert q._recent_tables._bytes <= RECENT_TABLE_BYTES
    assert q._recent_tables._bytes == sum(len(t) for t, _ in q._recent_tables._by_key.values())


def test_a_linux_shaped_table_is_taken_in_bulk(memory):
    q, drv = make(memory, indirect=True)
    buffers = [(0x30000, 16, R), *((0x100000 + 0x3000 * i, 4096, W) for i in range(32))]
    buffers.append((0x40000, 1, W))
    for i, (addr, length, flags) in enumerate(buffers):
        put_desc(
            memory, i, addr, length, flags | (N if i + 1 < len(buffers) else 0), i + 1, 0x20000
        )
    put_desc(memory, 0, 0x20000, 16 * len(buffers), IND)
    chain = q._take_linear_table(0, memory.view(0x20000, 16 * len(buffers)))
    assert chain is not None
    assert chain.readable == [(0x30000, 16)]
    assert chain.writable == [(a, n) for a, n, _ in buffers[1:]]
    assert (chain.readable_len, chain.writable_len) == (16, 32 * 4096 + 1)
