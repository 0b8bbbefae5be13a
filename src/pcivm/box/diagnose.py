"""What a box that stopped answering was doing, seen from the host.

When the agent does not answer, nothing can be asked inside the box. QEMU's monitor
still answers while its main loop runs: where each of the box's CPUs is (its RIP, named
from the kernel's symbols, which the box's /init copies out at start), and the
host CPU time of QEMU's threads says whether the box is spinning or idle. The result is
written next to the box's logs and shown with the error.
"""

from __future__ import annotations

import bisect
import os
import re
import socket
import time
from pathlib import Path

PROMPT = b"(qemu) "
MONITOR_TIMEOUT_S = 5.0


def monitor_command(path: Path, command: str, timeout: float = MONITOR_TIMEOUT_S) -> str:
    """Run one human-monitor command on QEMU's unix socket; its output."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        _read_until_prompt(sock, deadline)  # the banner
        sock.sendall(command.encode() + b"\n")
        out = _read_until_prompt(sock, deadline)
    text = out.decode(errors="replace").replace("\r", "")
    # The monitor echoes the command line first (with terminal escapes).
    return text.split("\n", 1)[1] if "\n" in text else ""


def _read_until_prompt(sock: socket.socket, deadline: float) -> bytes:
    data = b""
    while not data.endswith(PROMPT):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data[: -len(PROMPT)] if data.endswith(PROMPT) else data


class SymbolMap:
    """Addresses to `function+offset` from /proc/kallsyms (or System.map) text."""

    def __init__(self, text: str):
        entries = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] in "tTwW":
                entries.append((int(parts[0], 16), parts[2]))
        entries.sort()
        self._addrs = [a for a, _ in entries]
        self._names = [n for _, n in entries]

    def name(self, addr: int) -> str:
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0 or addr - self._addrs[i] > 1 << 20:
            return f"{addr:#x}"
        return f"{self._names[i]}+{addr - self._addrs[i]:#x}"


def cpu_locations(registers: str, symbols: SymbolMap | None) -> list[str]:
    """One line per CPU from `info registers -a`: its RIP (named), privilege and HLT."""
    lines = []
    for number, block in enumerate(re.split(r"\n(?=CPU#\d+)", registers.strip())):
        rip = re.search(r"RIP=([0-9a-f]+)", block)
        if not rip:
            continue
        addr = int(rip.group(1), 16)
        where = symbols.name(addr) if symbols else f"{addr:#x}"
        cpl = re.search(r"CPL=(\d)", block)
        halted = re.search(r"HLT=(\d)", block)
        lines.append(
            f"box CPU {number}: rip {where}"
            + (f", CPL {cpl.group(1)}" if cpl else "")
            + (", halted" if halted and halted.group(1) == "1" else "")
        )
    return lines


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """Host CPU time (user + system) of each thread of `pid`, by `name/tid`."""
    ticks = os.sysconf("SC_CLK_TCK")
    times = {}
    task_dir = Path(f"/proc/{pid}/task")
    for task in task_dir.iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        times[f"{name}/{task.name}"] = (int(fields[11]) + int(fields[12])) / ticks
    return times


def busy_threads(pid: int, interval: float = 1.0) -> list[str]:
    """QEMU's threads that used CPU time over `interval`: a spinning box shows here."""
    before = thread_cpu_seconds(pid)
    time.sleep(interval)
    after = thread_cpu_seconds(pid)
    lines = []
    for name, seconds in sorted(after.items()):
        used = seconds - before.get(name, seconds)
        if used > 0.05 * interval:
            lines.append(f"QEMU thread {name}: {100 * used / interval:.0f}% of a host CPU")
    return lines or [f"QEMU used no host CPU over {interval:g} s (the box is idle or blocked)"]


def describe(monitor: Path, qemu_pid: int | None, kernel_symbols: Path | None) -> str:
    """Every line the host can learn about a box that stopped answering."""
    lines = []
    symbols = None
    if kernel_symbols is not None and kernel_symbols.is_file():
        symbols = SymbolMap(kernel_symbols.read_text(errors="replace"))
    try:
        lines += cpu_locations(monitor_command(monitor, "info registers -a"), symbols)
    except OSError as exc:
        lines.append(f"QEMU's monitor did not answer: {exc}")
    if qemu_pid is not None:
        try:
            lines += busy_threads(qemu_pid)
        except OSError as exc:
            lines.append(f"QEMU's threads cannot be read: {exc}")
    return "\n".join(lines)
