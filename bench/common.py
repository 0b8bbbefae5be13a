"""What the benchmarks share: statistics, KVM's debugfs counters, tables, arguments, the box.

This module is also imported by the timing wrapper that runs inside the box, so it uses
the standard library only and imports pcivm lazily.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

# KVM keeps one directory per VM here, named "<pid>-<vm fd>"; it goes when the VM does.
KVM_DEBUGFS = Path("/sys/kernel/debug/kvm")
# The counters sampled from a VM's directory (each the sum over its vCPUs). `exits` counts
# every exit from the guest; io_exits and mmio_exits those that reached the VMM process.
KVM_STATS = (
    "exits",
    "io_exits",
    "mmio_exits",
    "halt_exits",
    "irq_exits",
    "irq_window_exits",
    "signal_exits",
    "insn_emulation",
    "pf_taken",  # nested page faults KVM handled (guest RAM touched for the first time...)
    "pages_4k",  # guest RAM mapped with 4 KiB pages (at the last sample)
    "pages_2m",  # ... and with 2 MiB pages
)


# -- statistics -------------------------------------------------------------------------


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not None; None when there are none."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def format_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def format_seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def format_count(value: float | None) -> str:
    return "n/a" if value is None else f"{round(value):,}"


def format_micros(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1e6:.0f} us"


def spread(values: Iterable[float | None]) -> str:
    """min..max of the values that are not None, as ratios."""
    present = [v for v in values if v is not None]
    if not present:
        return "n/a"
    return f"{min(present):.2f}..{max(present):.2f}"


def per_round(values: Iterable[float | None]) -> str:
    """A ratio's median over the rounds with its range: "1.38x (0.88..2.76)"."""
    present = [v for v in values if v is not None]
    if not present:
        return "n/a"
    return f"{format_ratio(median(present))} ({spread(present)})"


def slope(points: Sequence[tuple[float, float]]) -> float | None:
    """The least-squares slope dy/dx of (x, y) points; None without two distinct x."""
    if len({x for x, _ in points}) < 2:
        return None
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    num = sum((x - mean_x) * (y - mean_y) for x, y in points)
    den = sum((x - mean_x) ** 2 for x, _ in points)
    return num / den


def rotate(items: Sequence, offset: int) -> list:
    """`items` starting at position `offset` (mod its length): round r runs them so."""
    if not items:
        return []
    offset %= len(items)
    return list(items[offset:]) + list(items[:offset])


def measured_rounds(rounds: int, measure: Callable[[int], dict[str, float]], label: str = ""):
    """`measure(round_index)` `rounds` times, each round's figures (microseconds) printed
    as it ends, after `label`; the median of each figure over the rounds."""
    results = []
    for round_index in range(rounds):
        result = measure(round_index)
        results.append(result)
        figures = "  ".join(f"{name} {us:7.0f} us" for name, us in result.items())
        print(f"round {round_index + 1}: {label}{figures}", flush=True)
    return {name: statistics.median(r[name] for r in results) for name in results[0]}


# -- KVM's debugfs ----------------------------------------------------------------------


def ensure_debugfs(root: Path = KVM_DEBUGFS) -> bool:
    """Mount debugfs when KVM's directory is missing; whether the directory is there."""
    if root.is_dir():
        return True
    subprocess.run(
        ["mount", "-t", "debugfs", "none", str(root.parent)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return root.is_dir()


def find_vm_dir(pid: int, root: Path = KVM_DEBUGFS) -> Path | None:
    """The debugfs directory of a VM created by process `pid` (the first, if several)."""
    prefix = f"{pid}-"
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return None
    for name in names:
        fd = name[len(prefix) :]
        if name.startswith(prefix) and fd.isdigit():
            return root / name
    return None


def read_kvm_stats(vm_dir: Path, names: Iterable[str] = KVM_STATS) -> dict[str, int]:
    """The counters of a VM's debugfs directory; those missing or unreadable are left out
    (the directory vanishes while it is read when the VM is destroyed)."""
    stats = {}
    for name in names:
        try:
            text = (vm_dir / name).read_text()
        except OSError:
            continue
        text = text.strip()
        if text.lstrip("-").isdigit():
            stats[name] = int(text)
    return stats


def vmm_exits(stats: dict[str, int] | None) -> int | None:
    """Exits that reached the VMM process: port IO plus MMIO."""
    if not stats or "io_exits" not in stats:
        return None
    return stats["io_exits"] + stats.get("mmio_exits", 0)


def parse_pcivm_exit_total(stderr: str) -> int | None:
    """The total of pcivm's `-d` exit report ("pcivm: exits by device ...", "  total N")."""
    if "exits by device" not in stderr:
        return None
    for line in reversed(stderr.splitlines()):
        words = line.split()
        if len(words) == 2 and words[0] == "total" and words[1].isdigit():
            return int(words[1])
    return None


# -- output -----------------------------------------------------------------------------


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, its columns padded so that it also reads well as plain text.
    The first column is aligned left, the others right."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(
        ("-" * (w + 1) + ":") if i else (":" + "-" * (w + 1)) for i, w in enumerate(widths)
    )
    return "\n".join([line(headers), rule + "|", *(line(row) for row in rows)])


# -- command line -----------------------------------------------------------------------


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line: "<prog>: <message>"."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


# -- the box ----------------------------------------------------------------------------


def open_bench_box(mode: str = "auto", cache: str = "auto"):
    """The box (a context manager giving a runner) with the guest image's kernel.

    cache is virtiofsd's cache mode. The box's own default, none, sends every read to the
    host (no page cache in the box); a benchmark reads the same unchanging files over and
    over, as a host with a warm page cache does, so it asks for auto.
    """
    from pcivm.box.api import open_box
    from pcivm.box.qemu import MachineConfig
    from pcivm.box_command import kernel_provider

    return open_box(kernel_provider, mode=mode, config=MachineConfig(cache=cache))


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
