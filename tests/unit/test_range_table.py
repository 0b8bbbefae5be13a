"""range_table: tables of ranges checked and translated as lanes of one integer, against
the same rules applied range by range."""

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from pcivm.memory import FOUR_GIB, GuestMemory, MiB
from pcivm.range_table import RangeChecker, aligned

LOW_END = 64 * MiB
HIGH_SIZE = 32 * MiB
# As GuestMemory lays RAM out: low RAM at 0, the rest at 4 GiB; deltas of either sign.
REGIONS = ((0, LOW_END, 0x7F00_0000_0000), (FOUR_GIB, FOUR_GIB + HIGH_SIZE, -0x1000))


def one_by_one(records: list[tuple[int, int, int]]):
    """What translate must give, range by range."""
    if not records or any(length == 0 for _addr, length, _rest in records):
        return None
    for first, end, delta in REGIONS:
        if all(first <= addr and addr + length <= end for addr, length, _ in records):
            pairs = [(addr + delta, length) for addr, length, _rest in records]
            return b"".join(struct.pack("<QQ", *pair) for pair in pairs), sum(n for _, n in pairs)
    return None


def near(edge: int):
    return st.integers(max(0, edge - 0x2000), edge + 0x2000)


addresses = st.one_of(
    near(0), near(LOW_END), near(FOUR_GIB), near(FOUR_GIB + HIGH_SIZE),
    st.integers(0, (1 << 64) - 1), st.integers((1 << 64) - 0x2000, (1 << 64) - 1),
)  # fmt: skip
lengths = st.one_of(st.integers(0, 0x3000), st.integers(0, (1 << 32) - 1), st.just(4096))
records = st.lists(st.tuples(addresses, lengths, st.integers(0, (1 << 32) - 1)), max_size=40)


@settings(max_examples=400, deadline=None)
@given(records)
def test_a_table_is_judged_as_range_by_range(table):
    raw = b"".join(struct.pack("<QII", *record) for record in table)
    assert RangeChecker(REGIONS).translate(raw) == one_by_one(table)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, LOW_END - 0x10000), min_size=1, max_size=30), st.data())
def test_tables_inside_one_region_always_translate(addrs, data):
    # Most random tables fail somewhere; these are the ones that must pass.
    table = [(a, data.draw(st.integers(1, 0x10000)), data.draw(st.integers(0, 99))) for a in addrs]
    raw = b"".join(struct.pack("<QII", *record) for record in table)
    result = RangeChecker(REGIONS).translate(memoryview(raw))
    assert result is not None and result == one_by_one(table)


def test_one_range_out_of_place_fails_the_table():
    checker = RangeChecker(REGIONS)
    good = [(0x1000 * i, 0x1000, 3) for i in range(1, 40)]
    assert checker.translate(b"".join(struct.pack("<QII", *r) for r in good)) is not None
    for bad in ((LOW_END - 0xFFF, 0x1000), (FOUR_GIB, 0x10), (0x5000, 0), ((1 << 64) - 1, 1)):
        table = good[:20] + [(*bad, 0)] + good[20:]
        assert checker.translate(b"".join(struct.pack("<QII", *r) for r in table)) is None
    assert checker.translate(b"") is None and checker.translate(bytes(24)) is None


words = st.integers(0, (1 << 64) - 1)


@given(st.lists(st.tuples(words, words), max_size=20), st.sampled_from([1, 2, 512, 4096]))
def test_alignment_of_every_address_and_length(ranges, alignment):
    vector = b"".join(struct.pack("<QQ", *r) for r in ranges)
    expected = all(a % alignment == 0 and n % alignment == 0 for a, n in ranges)
    assert aligned(vector, alignment) == expected


def test_guest_memory_gives_views_for_a_few_ranges_and_an_array_for_many():
    memory = GuestMemory(16 * MiB, lowmem_limit=8 * MiB)
    try:
        memory.write(0x2000, b"head")
        few = memory.iovec_of_table(struct.pack("<QII", 0x2000, 4, 0xFFFF_FFFF))
        assert [bytes(v) for v in few.views()] == [b"head"] and few.nbytes == 4
        many = [(0x10000 + 0x1000 * i, 0x800) for i in range(20)]
        raw = b"".join(struct.pack("<QII", a, n, 0x0001_0003) for a, n in many)
        iov = memory.iovec_of_table(raw)
        assert iov.bases == [memory.host_addr + a for a, _n in many]
        assert iov.lengths == [0x800] * 20 and iov.nbytes == 20 * 0x800
        high = memory.iovec_of_table(struct.pack("<QII", FOUR_GIB, 0x1000, 0) * 10)
        assert high.bases == [memory.host_addr + 8 * MiB] * 10
        # Outside RAM, or empty, or in two regions: for the caller to judge one by one.
        assert memory.iovec_of_table(struct.pack("<QII", 8 * MiB, 1, 0) * 10) is None
        assert memory.iovec_of_table(struct.pack("<QII", 0x1000, 0, 0) * 10) is None
        assert memory.iovec_of_table(struct.pack("<QII", 0x1000, 0, 0)) is None
        mixed = raw[:16] + struct.pack("<QII", FOUR_GIB, 0x10, 0) + raw[32:]
        assert memory.iovec_of_table(mixed) is None
    finally:
        memory.close()
