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

Most tables take a cheaper way still, as byte columns. Where guest RAM's low region is
mapped at a multiple of 4 GiB of the host's address space (`GuestMemory` arranges it), a
guest address below 4 GiB becomes its host address by replacing its upper four bytes,
and whether a range is inside the region can be judged conservatively from single bytes:
an address whose upper five bytes are below a bound and a length whose top byte is zero
cannot reach past the region's end. Taking every record's byte k (`records[k::16]`),
comparing it, translating it and storing it back are C loops over bytes, a few
instructions a byte, where the integer's conversions cost ~20: a 257-entry table costs
~108,000 instructions this way against ~268,000 as lanes (valgrind), ~10 us against ~20
natively, 150-180 us against 200-210 in the box. A table this does not accept (a range
near the region's end, in high RAM, empty) still gets the lanes' exact judgement.
"""

from __future__ import annotations

from zlib import adler32

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
        self._columns = next(filter(None, map(_Columns.of_region, self._regions)), None)

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
        if self._columns is not None:
            done = self._columns.translate(records, count)
            if done is not None:
                return done
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


# Bytes 0-3 of a record: the address's lower half; 4-7 its upper half; 8-11 the length;
# 12-15 the rest, which a `struct iovec`'s length field covers.
_ADDRESS_TOP = 3
_ADDRESS_UPPER = range(4, 8)
_LENGTH_LOW = range(8, 11)
_LENGTH_TOP = 11
_REST = range(12, 16)
_MAX_COLUMN = 1 << 16  # records a column path takes at most (a virtqueue's table)
_ZEROS = bytes(_MAX_COLUMN)
# Per record, its length's three low bytes and a byte that is never zero: three zeros in
# a row can then only be an empty length.
_EMPTY = bytes(3)
_LENGTH_MARKS = (_EMPTY + b"\xff") * _MAX_COLUMN
# The region is judged in steps of 16 MiB: addresses below bound * 16 MiB, lengths below
# 16 MiB (the length's top byte zero).
_STEP_BITS = 24


class _Columns:
    """The byte-column path for one region: `first` 0, a delta that is a multiple of
    4 GiB, room for at least two 16 MiB steps."""

    __slots__ = ("_top_bytes", "_delta_columns")

    def __init__(self, end: int, delta: int):
        # An address < bound * 16 MiB plus a length < 16 MiB ends below (bound + 1) * 16
        # MiB, which is at most the region's end.
        bound = min(end, 1 << 32) // (1 << _STEP_BITS) - 1
        self._top_bytes = bytes(range(bound))  # what an address's byte 3 may hold
        # The delta's nonzero upper bytes, each a column to store: the guest address's
        # upper bytes are zero, so storing them adds the delta.
        self._delta_columns = tuple(
            (k, bytes([byte]) * _MAX_COLUMN)
            for k, byte in zip(_ADDRESS_UPPER, delta.to_bytes(8, "little")[4:], strict=True)
            if byte
        )

    @classmethod
    def of_region(cls, region) -> _Columns | None:
        first, end, delta = region
        usable = first == 0 and delta >= 0 and not delta % (1 << 32) and end >= 2 << _STEP_BITS
        return cls(end, delta) if usable else None

    def translate(self, records, count: int) -> tuple[bytes, int] | None:
        """As `RangeChecker.translate` for ranges all well inside the region; None for any
        table this cannot vouch for."""
        if count > _MAX_COLUMN:
            return None
        table = bytes(records)  # one copy: what is checked is what is translated
        zeros = _ZEROS[:count]
        if table[_LENGTH_TOP::RECORD] != zeros or table[_ADDRESS_TOP::RECORD].translate(
            None, self._top_bytes
        ):
            return None
        for k in _ADDRESS_UPPER:
            if table[k::RECORD] != zeros:
                return None
        # The lengths' three low bytes, as columns: summed as such (no int made per
        # length), and side by side to find an empty one.
        low, middle, high = (table[k::RECORD] for k in _LENGTH_LOW)
        marks = bytearray(_LENGTH_MARKS[: 4 * count])
        marks[0::4], marks[1::4], marks[2::4] = low, middle, high
        if _EMPTY in marks:
            return None
        vector = bytearray(table)
        for k, column in self._delta_columns:
            vector[k::RECORD] = column[:count]
        for k in _REST:
            vector[k::RECORD] = zeros
        nbytes = byte_sum(low) + (byte_sum(middle) << 8) + (byte_sum(high) << 16)
        return bytes(vector), nbytes


# zlib.adler32's lower half is 1 + the sum of the bytes, modulo 65521: exact for up to
# 256 bytes (at most 256 * 255 = 65280). A C loop; sum() over a bytes object makes a
# Python step of every byte, ~45 instructions where this takes about one.
_SUM_CHUNK = 256


def byte_sum(data: bytes) -> int:
    """The sum of the bytes of `data`."""
    if len(data) <= _SUM_CHUNK:
        return (adler32(data) & 0xFFFF) - 1
    return sum(
        (adler32(data[at : at + _SUM_CHUNK]) & 0xFFFF) - 1 for at in range(0, len(data), _SUM_CHUNK)
    )


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
