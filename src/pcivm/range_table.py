"""Many guest ranges checked and translated at once, without a Python object per range.

A table of ranges here is an array of 16-byte little-endian records, each a 64-bit
address, a 32-bit length and 32 bits of anything: the layout of a virtqueue descriptor
(the rest being its flags and next fields) and, the rest zero, of `struct iovec` on a
64-bit host. A 1 MiB virtio-blk read is a table of 256 such ranges.

Checking and translating them one by one (a Python int for every field, a comparison for
every bound) cost ~2,000 instructions a range, more than everything else a 1 MiB request
does. Here the whole table is read as one Python integer in which each record is a
128-bit lane, and every step is one arithmetic operation on that integer: a C loop over
its digits that acts on every lane at once. A 258-entry table costs ~1,000 instructions
a range (valgrind), two fifths of them reading the table into the integer and writing
the array out of it, the two conversions CPython does a byte at a time.

Lanes do not leak into each other: every value a lane holds stays far below its top,
with a guard bit set above it before anything is subtracted, so a carry or borrow
never crosses into the next lane, and each lane's guard bit tells afterwards whether
that lane's subtraction went below zero.
"""

from __future__ import annotations

RECORD = 16
# A guard bit above every value a lane holds (addresses below 2**64, an address plus a
# length below 2**65), below the lane's top.
GUARD_BIT = 100


class _Lanes:
    """Constants with one value repeated in each of `count` lanes."""

    __slots__ = ("ones", "address", "length", "length_field", "guard", "regions")

    def __init__(self, count: int, regions):
        self.ones = ones = int.from_bytes((b"\1" + bytes(RECORD - 1)) * count, "little")
        self.address = ones * ((1 << 64) - 1)  # the address field, bits 0-63
        self.length = ones * ((1 << 32) - 1)  # a length moved down to bits 0-31
        self.length_field = self.length << 64  # the length where a record keeps it
        self.guard = guard = ones << GUARD_BIT
        # Per region, in every lane: its first address (None for 0: every address is at
        # least that), guard + its end, and its delta.
        self.regions = tuple(
            (first * ones or None, end * ones | guard, delta * ones)
            for first, end, delta in regions
        )


class RangeChecker:
    """Checks and translates tables of ranges against guest RAM's regions: (first, end,
    delta) triples, a range being inside a region when first <= address and address +
    length <= end, and its host address then address + delta."""

    def __init__(self, regions):
        self._regions = tuple(regions)
        self._lanes_by_count: dict[int, _Lanes] = {}

    def _lanes(self, count: int) -> _Lanes:
        lanes = self._lanes_by_count.get(count)
        if lanes is None:
            if len(self._lanes_by_count) >= 16:  # a guest varying its tables' sizes
                self._lanes_by_count.clear()
            lanes = self._lanes_by_count[count] = _Lanes(count, self._regions)
        return lanes

    def translate(self, records) -> tuple[bytes, int] | None:
        """The table `records` as a `struct iovec` array, and the sum of its lengths.
        Every range must be inside the same region, and none may be empty; otherwise
        None (the caller then looks at the ranges one by one, and can say which is
        wrong)."""
        count = len(records) // RECORD
        if not count or len(records) % RECORD:
            return None
        m = self._lanes(count)
        table = int.from_bytes(records, "little")
        addresses = table & m.address
        lengths = (table >> 64) & m.length
        ends = addresses + lengths
        guard = m.guard
        # Each lane of (lengths | guard) - ones is guard + length - 1: the guard bit is
        # clear exactly where the length is 0. Likewise guard + end - (address + length)
        # and guard + address - first for each region: the guard bit stays set in every
        # lane exactly when every range is inside the region.
        nonempty = ((lengths | guard) - m.ones) & guard
        for firsts, guarded_end, deltas in m.regions:
            inside = nonempty & (guarded_end - ends)
            if firsts is not None:
                inside &= (addresses | guard) - firsts
            if inside != guard:
                continue
            # Each lane's host address is at least 0 (a region starts at host address
            # first + delta >= 0), so even a negative delta borrows across no lane.
            vector = ((addresses + deltas) | (table & m.length_field)).to_bytes(
                RECORD * count, "little"
            )
            # Summed from the array made (one C loop), not from `records` again: the guest
            # may be changing its table meanwhile, and everything here must come from
            # the one copy int.from_bytes took.
            return vector, sum(memoryview(vector).cast("Q")[1::2])
        return None


def unpack(records) -> tuple[list[int], list[int]]:
    """The addresses and lengths of a table, a Python int each: for a few records, where
    that costs less than the lanes."""
    words = memoryview(records).cast("Q")
    return words[0::2].tolist(), [word & 0xFFFF_FFFF for word in words[1::2].tolist()]


def aligned(vector, alignment: int) -> bool:
    """Whether every address and length of a `struct iovec` array is a multiple of
    `alignment` (a power of two)."""
    count = len(vector) // RECORD
    if not count:
        return True
    mask = int.from_bytes((b"\1" + bytes(7)) * (2 * count), "little") * (alignment - 1)
    return not int.from_bytes(vector, "little") & mask
