"""range_table: tables of ranges checked and translated as byte columns or as lanes of
one integer, against the same rules applied range by range."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcivm.memory import FOUR_GIB, GuestMemory, MiB
from pcivm.range_table import RangeChecker, _Columns, aligned, byte_sum

LOW_END = 64 * MiB
HIGH_SIZE = 32 * MiB
# As GuestMemory lays RAM out: low RAM at 0, the rest at 4 GiB; deltas of either sign.
# Low RAM at a multiple of 4 GiB of the host takes the byte columns first.
REGIONS = ((0, LOW_END, 0x7F00_0000_0000), (FOUR_GIB, FOUR_GIB + HIGH_SIZE, -0x1000))
# Low RAM elsewhere: the lanes alone.
LANES_ONLY = ((0, LOW_END, 0x7F00_0020_0000), REGIONS[1])
COLUMNS = _Columns.of_region(REGIONS[0])
# What the columns vouch for in REGIONS: addresses below 48 MiB, lengths below 16 MiB.
COLUMN_ADDRESSES, COLUMN_LENGTHS = 48 * MiB, 16 * MiB


def one_by_one(records: list[tuple[int, int, int]], regions=REGIONS):
    """What translate must give, range by range."""
    if not records or any(length == 0 for _addr, length, _rest in records):
        return None
    for first, end, delta in regions:
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


@pytest.mark.parametrize("regions", [REGIONS, LANES_ONLY], ids=["columns", "lanes"])
@settings(max_examples=400, deadline=None)
@given(table=records)
def test_a_table_is_judged_as_range_by_range(regions, table):
    raw = b"".join(struct.pack("<QII", *record) for record in table)
    assert RangeChecker(regions).translate(raw) == one_by_one(table, regions)


def test_columns_serve_a_region_at_0_with_a_delta_of_whole_4_gib():
    assert COLUMNS is not None
    assert RangeChecker(LANES_ONLY)._columns is None
    for region in (
        (0, LOW_END, 0x7F00_0000_1000),  # host address not a multiple of 4 GiB
        (0x1000, LOW_END, 0x7F00_0000_0000),  # not from 0
        (0, 31 * MiB, 0x7F00_0000_0000),  # too small for two 16 MiB steps
        (0, LOW_END, -FOUR_GIB),
    ):
        assert _Columns.of_region(region) is None


@settings(max_examples=400, deadline=None)
@given(records)
def test_the_columns_vouch_for_nothing_wrong(table):
    raw = b"".join(struct.pack("<QII", *record) for record in table)
    got = COLUMNS.translate(raw, len(table)) if table else None
    assert got is None or got == one_by_one(table)


ranges_well_inside = st.tuples(
    st.one_of(st.integers(0, COLUMN_ADDRESSES - 1), st.just(COLUMN_ADDRESSES - 1)),
    st.one_of(st.integers(1, COLUMN_LENGTHS - 1), st.just(COLUMN_LENGTHS - 1), st.just(4096)),
    st.integers(0, (1 << 32) - 1),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(ranges_well_inside, min_size=1, max_size=600))
def test_the_columns_take_every_table_well_inside_low_ram(table):
    raw = b"".join(struct.pack("<QII", *record) for record in table)
    assert COLUMNS.translate(raw, len(table)) == one_by_one(table)


@given(st.binary(max_size=3000))
def test_byte_sum(data):
    assert byte_sum(data) == sum(data)
    assert byte_sum(b"\xff" * 600) == 255 * 600


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


# One checker for every example: nothing of one table may decide another.
SHARED = {regions: RangeChecker(regions) for regions in (REGIONS, LANES_ONLY)}


@pytest.mark.parametrize("regions", [REGIONS, LANES_ONLY], ids=["columns", "lanes"])
@settings(max_examples=300, deadline=None)
@given(
    middle=st.lists(st.tuples(addresses, lengths, st.integers(0, 99)), min_size=14, max_size=30),
    ends=st.lists(st.tuples(records, records), min_size=1, max_size=4),
)
def test_tables_sharing_a_middle_are_each_judged_as_range_by_range(regions, middle, ends):
    # The same middle (a guest's one buffer) between ends that move: a header and a
    # status byte anywhere, in RAM or not, empty or not.
    checker = SHARED[regions]
    for heads, tails in ends:
        if not heads or not tails:
            continue
        table = [heads[0], *middle, tails[-1]]
        raw = b"".join(struct.pack("<QII", *record) for record in table)
        assert checker.translate(raw) == one_by_one(table, regions)
