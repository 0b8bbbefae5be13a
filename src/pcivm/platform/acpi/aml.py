"""A small AML encoder (ACPI 6.4, chapter 20): just the terms pcivm's DSDT uses.

Each function returns the encoded bytes of one term, so a table is built by nesting calls.
"""

from __future__ import annotations

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
