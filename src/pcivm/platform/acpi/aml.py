"""A small AML encoder (ACPI 6.4, chapter 20): just the terms pcivm's DSDT uses.

Each function returns the encoded bytes of one term, so a table is built by nesting calls.
"""

from __future__ import annotations

import struct
import uuid

ZERO_OP, ONE_OP, ONES_OP = 0x00, 0x01, 0xFF
BYTE_PREFIX, WORD_PREFIX, DWORD_PREFIX, QWORD_PREFIX = 0x0A, 0x0B, 0x0C, 0x0E
STRING_PREFIX = 0x0D
NAME_OP, SCOPE_OP, BUFFER_OP, PACKAGE_OP, METHOD_OP = 0x08, 0x10, 0x11, 0x12, 0x14
RETURN_OP = 0xA4
EXT_OP_PREFIX, DEVICE_OP = 0x5B, 0x82
ROOT_CHAR, PARENT_PREFIX, DUAL_NAME_PREFIX, MULTI_NAME_PREFIX = 0x5C, 0x5E, 0x2E, 0x2F


def pkg_length(body_len: int) -> bytes:
    """PkgLength (20.2.4) for a body of `body_len` bytes; the length counts itself."""
    if body_len + 1 < 0x40:
        return bytes((body_len + 1,))
    for extra in (1, 2, 3):
        total = body_len + 1 + extra
        if total < 1 << (4 + 8 * extra):
            lead = (extra << 6) | (total & 0x0F)
            rest = (total >> 4).to_bytes(extra, "little")
            return bytes((lead,)) + rest
    raise ValueError("AML package too long")


def _name_seg(seg: str) -> bytes:
    if not 1 <= len(seg) <= 4 or not (seg[0].isupper() or seg[0] == "_"):
        raise ValueError(f"bad AML name segment {seg!r}")
    return seg.ljust(4, "_").encode("ascii")


def name_string(path: str) -> bytes:
    """'\\_SB.PCI0', '_S5', '^FOO' -> NameString (20.2.2)."""
    prefix = b""
    while path.startswith(("\\", "^")):
        prefix += bytes((ROOT_CHAR if path[0] == "\\" else PARENT_PREFIX,))
        path = path[1:]
    segs = [_name_seg(s) for s in path.split(".")] if path else []
    if not segs:
        return prefix + b"\x00"
    if len(segs) == 1:
        return prefix + segs[0]
    if len(segs) == 2:
        return prefix + bytes((DUAL_NAME_PREFIX,)) + b"".join(segs)
    return prefix + bytes((MULTI_NAME_PREFIX, len(segs))) + b"".join(segs)


def integer(value: int) -> bytes:
    if value == 0:
        return bytes((ZERO_OP,))
    if value == 1:
        return bytes((ONE_OP,))
    for prefix, width in ((BYTE_PREFIX, 1), (WORD_PREFIX, 2), (DWORD_PREFIX, 4)):
        if value < 1 << (8 * width):
            return bytes((prefix,)) + value.to_bytes(width, "little")
    return bytes((QWORD_PREFIX,)) + value.to_bytes(8, "little")


def string(text: str) -> bytes:
    return bytes((STRING_PREFIX,)) + text.encode("ascii") + b"\x00"


def name(path: str, value: bytes) -> bytes:
    return bytes((NAME_OP,)) + name_string(path) + value


def package(*elements: bytes) -> bytes:
    body = bytes((len(elements),)) + b"".join(elements)
    return bytes((PACKAGE_OP,)) + pkg_length(len(body)) + body


def scope(path: str, *terms: bytes) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes((SCOPE_OP,)) + pkg_length(len(body)) + body


def device(path: str, *terms: bytes) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes((EXT_OP_PREFIX, DEVICE_OP)) + pkg_length(len(body)) + body


def method(path: str, arg_count: int, *terms: bytes, serialized: bool = False) -> bytes:
    flags = (arg_count & 7) | (0x08 if serialized else 0)
    body = name_string(path) + bytes((flags,)) + b"".join(terms)
    return bytes((METHOD_OP,)) + pkg_length(len(body)) + body


def return_(value: bytes) -> bytes:
    return bytes((RETURN_OP,)) + value


def buffer(data: bytes) -> bytes:
    body = integer(len(data)) + data
    return bytes((BUFFER_OP,)) + pkg_length(len(body)) + body


def eisa_id(text: str) -> bytes:
    """'PNP0A03' -> the compressed EISA id integer (ACPI 6.4, 6.1.5)."""
    c = [ord(ch) - 0x40 for ch in text[:3]]
    value = (c[0] << 26) | (c[1] << 21) | (c[2] << 16) | int(text[3:], 16)
    return integer(int.from_bytes(value.to_bytes(4, "big"), "little"))


# -- method bodies (ACPI 6.4, 20.2.5 and 20.2.6) ------------------------------------------

ARG0_OP = 0x68  # ArgObj: Arg0-Arg6 are 0x68-0x6e (20.2.6.1)
IF_OP, ELSE_OP = 0xA0, 0xA1  # DefIfElse (20.2.5.3)
LEQUAL_OP = 0x93  # DefLEqual (20.2.5.4)
OR_OP = 0x7D  # DefOr (20.2.5.4)
CREATE_DWORD_FIELD_OP = 0x8A  # DefCreateDWordField (20.2.5.2)
NULL_NAME = 0x00  # a Target that stores nowhere (20.2.2)


def arg(index: int) -> bytes:
    """ArgN, the method's N-th argument (20.2.6.1)."""
    if not 0 <= index <= 6:
        raise ValueError(f"no Arg{index} in AML")
    return bytes((ARG0_OP + index,))


def if_(predicate: bytes, *terms: bytes) -> bytes:
    """If (predicate) { terms } (20.2.5.3: IfOp PkgLength Predicate TermList)."""
    body = predicate + b"".join(terms)
    return bytes((IF_OP,)) + pkg_length(len(body)) + body


def else_(*terms: bytes) -> bytes:
    """Else { terms }; it must follow an If directly (20.2.5.3)."""
    body = b"".join(terms)
    return bytes((ELSE_OP,)) + pkg_length(len(body)) + body


def lequal(left: bytes, right: bytes) -> bytes:
    """LEqual (left, right): integers, strings or buffers compared by value (19.6.71)."""
    return bytes((LEQUAL_OP,)) + left + right


def or_(left: bytes, right: bytes, target: bytes | None = None) -> bytes:
    """Or (left, right, target) (19.6.98); without a target the result is only returned."""
    return bytes((OR_OP,)) + left + right + (target if target is not None else bytes((NULL_NAME,)))


def create_dword_field(source: bytes, byte_index: bytes, field: str) -> bytes:
    """CreateDWordField (source, byte_index, field) (19.6.17)."""
    return bytes((CREATE_DWORD_FIELD_OP,)) + source + byte_index + name_string(field)


def to_uuid(text: str) -> bytes:
    """ToUUID ("aabbccdd-eeff-gghh-iijj-kkllmmnnoopp") (19.6.142): a 16-byte Buffer, the
    first three groups little-endian, the last two in the order written."""
    return buffer(uuid.UUID(text).bytes_le)


def name_ref(path: str) -> bytes:
    """A reference to a named object, as an operand or a target."""
    return name_string(path)


# -- resource descriptors (ACPI 6.4, 6.4) ------------------------------------------------

# Address space descriptors: resource type (6.4.3.5, table "Resource Type").
RESOURCE_MEMORY, RESOURCE_IO, RESOURCE_BUS = 0, 1, 2
# General flags: _MIF and _MAF (min and max fixed), positive decode, producer (bit 0 = 0).
ADDR_MIN_FIXED, ADDR_MAX_FIXED = 1 << 2, 1 << 3
ADDR_CONSUMER = 1 << 0
# Type-specific flags. IO: _RNG = 3, both ISA and non-ISA ranges (6.4.3.5.4).
IO_RANGE_ENTIRE = 0x03
# Memory: _RW (bit 0) and _MEM (bits 2:1): 0 non-cacheable, 1 cacheable, 3 prefetchable.
MEM_READ_WRITE = 1 << 0
MEM_NON_CACHEABLE, MEM_CACHEABLE, MEM_PREFETCHABLE = 0 << 1, 1 << 1, 3 << 1

IO_PORT_TAG = 0x47  # small item 0x08, length 7 (6.4.2.5)
IO_DECODE16 = 0x01
END_TAG = 0x79  # small item 0x0f, length 1 (6.4.2.9)
MEMORY32_FIXED_TAG = 0x86  # large item 0x06 (6.4.3.4)
DWORD_ADDRESS_TAG = 0x87  # large item 0x07 (6.4.3.5.2)
WORD_ADDRESS_TAG = 0x88  # large item 0x08 (6.4.3.5.3)
QWORD_ADDRESS_TAG = 0x8A  # large item 0x0a (6.4.3.5.1)


def _address_space(
    tag: int, width: int, rtype: int, flags: int, type_flags: int, minimum: int, maximum: int
) -> bytes:
    """Word/DWord/QWord address space descriptor: granularity 0, no translation, length
    maximum - minimum + 1 (6.4.3.5: with _MIF and _MAF set, length is the whole range)."""
    if not 0 <= minimum <= maximum < 1 << (8 * width):
        raise ValueError(f"bad address range {minimum:#x}-{maximum:#x}")
    fields = (0, minimum, maximum, 0, maximum - minimum + 1)
    body = bytes((rtype, flags, type_flags)) + b"".join(v.to_bytes(width, "little") for v in fields)
    return bytes((tag,)) + len(body).to_bytes(2, "little") + body


def word_bus_number(minimum: int, maximum: int) -> bytes:
    """WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, ...) (6.4.3.5.3)."""
    return _address_space(
        WORD_ADDRESS_TAG, 2, RESOURCE_BUS, ADDR_MIN_FIXED | ADDR_MAX_FIXED, 0, minimum, maximum
    )


def word_io(minimum: int, maximum: int) -> bytes:
    """WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, ...)."""
    return _address_space(
        WORD_ADDRESS_TAG,
        2,
        RESOURCE_IO,
        ADDR_MIN_FIXED | ADDR_MAX_FIXED,
        IO_RANGE_ENTIRE,
        minimum,
        maximum,
    )


def dword_memory(minimum: int, maximum: int, cacheable: int = MEM_NON_CACHEABLE) -> bytes:
    """DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, ..., ReadWrite)."""
    return _address_space(
        DWORD_ADDRESS_TAG,
        4,
        RESOURCE_MEMORY,
        ADDR_MIN_FIXED | ADDR_MAX_FIXED,
        cacheable | MEM_READ_WRITE,
        minimum,
        maximum,
    )


def qword_memory(
    minimum: int, maximum: int, cacheable: int = MEM_NON_CACHEABLE, consumer: bool = False
) -> bytes:
    """QWordMemory (ResourceProducer or ResourceConsumer, PosDecode, MinFixed, MaxFixed,
    ..., ReadWrite) (6.4.3.5.1)."""
    flags = ADDR_MIN_FIXED | ADDR_MAX_FIXED | (ADDR_CONSUMER if consumer else 0)
    return _address_space(
        QWORD_ADDRESS_TAG, 8, RESOURCE_MEMORY, flags, cacheable | MEM_READ_WRITE, minimum, maximum
    )


def io_port(minimum: int, maximum: int, alignment: int, length: int) -> bytes:
    """IO (Decode16, minimum, maximum, alignment, length) (6.4.2.5)."""
    return (
        bytes((IO_PORT_TAG, IO_DECODE16))
        + minimum.to_bytes(2, "little")
        + maximum.to_bytes(2, "little")
        + bytes((alignment, length))
    )


def memory32_fixed(base: int, length: int, writable: bool = True) -> bytes:
    """Memory32Fixed (ReadWrite, base, length) (6.4.3.4)."""
    body = bytes((1 if writable else 0,)) + struct.pack("<II", base, length)
    return bytes((MEMORY32_FIXED_TAG,)) + len(body).to_bytes(2, "little") + body


def resource_template(*descriptors: bytes) -> bytes:
    """ResourceTemplate () { descriptors }: a Buffer ending with an End Tag whose checksum
    byte is 0, which means "treat the template as correct" (6.4.2.9)."""
    return buffer(b"".join(descriptors) + bytes((END_TAG, 0)))
