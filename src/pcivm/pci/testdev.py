"""`pci-testdev`: a function with configurable BARs, for testing every topology before
any real device exists.

By default it has QEMU's pci-testdev identity (1b36:0005, class ff00) and BARs (BAR0:
4 KiB of 32-bit memory, BAR1: 256 IO ports). `barN=` properties change them:
`barN=none|io:SIZE|mem32:SIZE|mem64:SIZE`, with `-pref` after mem32/mem64 for a
prefetchable BAR (e.g. `bar2=mem64-pref:1G`).

Each BAR reads back as scratch memory that starts with the signature below, so a guest
can tell whether a BAR answers.
"""

from __future__ import annotations

from pcivm.pci import regs as R
from pcivm.pci.function import IO, MEM, Bar, PciFunction

PCI_DEVICE_ID_REDHAT_TEST = 0x0005
SIGNATURE = b"PCIVMTST"
# Scratch kept per BAR, whatever its size: a large BAR's tail reads as zeros.
SCRATCH_LIMIT = 4096
DEFAULT_BARS = {0: "mem32:4K", 1: "io:256"}


class BarSpecError(ValueError):
    pass


def parse_bar_spec(text: str) -> tuple[str, int, bool, bool] | None:
    """'mem64-pref:1M' -> (kind, size, prefetch, mem64); 'none' -> None."""
    from pcivm.options import parse_size  # the one place sizes are parsed

    if text == "none":
        return None
    kind_text, sep, size_text = text.partition(":")
    kinds = {
        "io": (IO, False, False),
        "mem32": (MEM, False, False),
        "mem32-pref": (MEM, True, False),
        "mem64": (MEM, False, True),
        "mem64-pref": (MEM, True, True),
    }
    if kind_text not in kinds or not sep:
        raise BarSpecError(f"'{text}' is not none, io:SIZE, mem32[-pref]:SIZE or mem64[-pref]:SIZE")
    kind, prefetch, mem64 = kinds[kind_text]
    size = parse_size(size_text, "bar", default_shift=0)
    if size & (size - 1):
        raise BarSpecError(f"BAR size {size:#x} is not a power of two")
    if kind == IO and not 4 <= size <= 256:
        raise BarSpecError("an IO BAR is 4 to 256 bytes")
    if kind == MEM and size < 16:
        raise BarSpecError("a memory BAR is at least 16 bytes")
    if kind == MEM and not mem64 and size > 1 << 31:
        raise BarSpecError("a 32-bit memory BAR is at most 2 GiB")
    return kind, size, prefetch, mem64


class ScratchBar:
    """What a test BAR answers: a signature, then bytes the guest may write."""

    def __init__(self, size: int):
        self.data = bytearray(min(size, SCRATCH_LIMIT))
        self.data[: len(SIGNATURE)] = SIGNATURE[: len(self.data)]

    def read(self, offset: int, size: int) -> int:
        chunk = self.data[offset : offset + size]
        return int.from_bytes(chunk.ljust(size, b"\0"), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        if offset < len(SIGNATURE):
            return  # the signature is read-only
        end = min(offset + size, len(self.data))
        if offset < end:
            self.data[offset:end] = value.to_bytes(size, "little")[: end - offset]


class PciTestDev(PciFunction):
    def __init__(self, name: str, bars: dict[int, str] | None = None):
        super().__init__(
            name, R.PCI_VENDOR_ID_REDHAT, PCI_DEVICE_ID_REDHAT_TEST, R.PCI_CLASS_OTHERS
        )
        for index, text in sorted((bars or DEFAULT_BARS).items()):
            parsed = parse_bar_spec(text)
            if parsed is None:
                continue
            kind, size, prefetch, mem64 = parsed
            self.add_bar(Bar(index, kind, size, ScratchBar(size), prefetch, mem64))
