"""Where a guest's sequential 1 MiB read spends its time, phase by phase, under pcivm and
under QEMU, from the kernel's own trace events.

Boots each VMM in turn (`--rounds` times) with a raw image in /dev/shm and the guest
reading it over and over with dd in 1 MiB O_DIRECT reads, lets it settle, and records a
few seconds of the kernel's trace events (ftrace): KVM's, the scheduler's and the
VMM's read system calls. Per request, from one kick of the queue to the next:

  wake    the kick (the guest's write to the notify register: kvm_mmio or kvm_pio)
          -> the VMM's first read system call for it begins: waking the thread that
          serves kicks, popping and checking the chain, starting the read
  copy    -> the last read system call before the interrupt ends (preadv, preadv2,
          io_uring_enter: pcivm's hand-over of a cut read's back part and its wait)
  finish  -> the interrupt is injected (kvm_msi_set_irq): used ring, irqfd
  resume  -> the vCPU runs again (kvm_entry)
  guest   -> the next kick: the guest's own turnaround

It changes nothing in either VMM, so both are measured alike; figures are medians over
the requests of a round, then over the rounds. The trace itself costs the VMMs a little:
compare the columns, not with bench/blk.py's figures. Needs root and tracefs (the box
has both):

    pcivm box -- .venv/bin/python bench/blk_trace.py
    pcivm box -- .venv/bin/python bench/blk_trace.py --rounds 3 --seconds 4
"""

from __future__ import annotations

import bisect
import os
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

if not __package__:  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    ArgumentParser,
    format_ratio,
    positive_float,
    positive_int,
    ratio,
    render_table,
    rotate,
)

TRACEFS = Path("/sys/kernel/tracing")
EVENTS = (
    "kvm/kvm_mmio",
    "kvm/kvm_pio",
    "kvm/kvm_msi_set_irq",
    "kvm/kvm_entry",
    "syscalls/sys_enter_preadv",
    "syscalls/sys_exit_preadv",
    "syscalls/sys_enter_preadv2",
    "syscalls/sys_exit_preadv2",
    "syscalls/sys_enter_io_uring_enter",
    "syscalls/sys_exit_io_uring_enter",
)
READS = ("preadv", "preadv2", "io_uring_enter")
PHASES = ("wake", "copy", "finish", "resume", "guest")
IMAGE = Path("/dev/shm/pcivm-blk-trace.img")
GUEST_READS = "while true; do dd if=/dev/vda of=/dev/null bs=1M iflag=direct; done"
VMMS = ("pcivm", "qemu")
# "comm-tid [cpu] flags time: event: args", a system call's entry "...: sys_NAME(args)"
# and its exit "...: sys_NAME -> result".
_LINE = re.compile(r"^\s*.+?-(\d+)\s+\[\d+\]\s+\S+\s+(\d+\.\d+): (\w+)(: |\(| -> )(.*)$")
_SYSCALL_EVENT = {"(": "sys_enter_", " -> ": "sys_exit_"}
_NOTIFY = re.compile(r"(?:mmio write len 2 gpa|pio_write at) (0x[0-9a-f]+)")


@dataclass(frozen=True)
class Event:
    time: float  # seconds
    thread: int
    name: str  # kvm_mmio, sys_enter_preadv2, ...
    args: str


def parse_trace(text: str, threads: set[int]) -> list[Event]:
    """The events of `threads` in ftrace's text output, in time order."""
    events = []
    for line in text.splitlines():
        match = _LINE.match(line)
        if match and int(match.group(1)) in threads:
            tid, when, name, separator, args = match.groups()
            if separator in _SYSCALL_EVENT and name.startswith("sys_"):
                name = _SYSCALL_EVENT[separator] + name[4:]
            events.append(Event(float(when), int(tid), name, args))
    events.sort(key=lambda e: e.time)
    return events


def notify_times(events: list[Event]) -> list[float]:
    """When the guest kicked the queue: its 2-byte writes to the address it writes most
    (the notify register; a few other writes of that size may happen meanwhile)."""
    writes = [(e.time, m.group(1)) for e in events if (m := _NOTIFY.search(e.args))]
    if not writes:
        return []
    address, _ = Counter(a for _, a in writes).most_common(1)[0]
    return [t for t, a in writes if a == address]


def phases(events: list[Event]) -> dict[str, list[float]]:
    """Per request, each phase's seconds (see the module docstring); requests whose
    events are not all there (the trace's ends, a kick answered without a read) are
    left out."""
    kicks = notify_times(events)
    irqs = [e.time for e in events if e.name == "kvm_msi_set_irq"]
    entries = [e.time for e in events if e.name == "kvm_entry"]
    starts = [e.time for e in events if e.name.startswith("sys_enter_") and e.name[10:] in READS]
    ends = [e.time for e in events if e.name.startswith("sys_exit_") and e.name[9:] in READS]
    out: dict[str, list[float]] = {phase: [] for phase in PHASES}
    for kick, next_kick in zip(kicks, kicks[1:], strict=False):
        irq = _first_after(irqs, kick)
        if irq is None or irq > next_kick:
            continue
        start = _first_after(starts, kick)
        end = _last_before(ends, irq)
        entry = _first_after(entries, irq)
        if start is None or end is None or entry is None or not kick < start < end < irq:
            continue
        if entry > next_kick:
            continue
        for phase, seconds in zip(
            PHASES,
            (start - kick, end - start, irq - end, entry - irq, next_kick - entry),
            strict=True,
        ):
            out[phase].append(seconds)
    return out


def _first_after(times: list[float], when: float) -> float | None:
    i = bisect.bisect_right(times, when)
    return times[i] if i < len(times) else None


def _last_before(times: list[float], when: float) -> float | None:
    i = bisect.bisect_left(times, when)
    return times[i - 1] if i else None


def summary(per_request: dict[str, list[float]]) -> dict[str, float]:
    """Each phase's median in microseconds, the requests counted, and the period as the
    sum of the phases' medians (what the table's last row shows)."""
    count = len(per_request["wake"])
    out = {"requests": float(count)}
    for phase, values in per_request.items():
        out[phase] = statistics.median(values) * 1e6 if values else float("nan")
    out["period"] = sum(out[phase] for phase in PHASES)
    return out


# -- in the box ------------------------------------------------------------------------


def _write(name: str, value: str) -> None:
    (TRACEFS / name).write_text(value)


def prepare_tracing() -> None:
    if not (TRACEFS / "trace").exists():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], check=False)
    if not (TRACEFS / "trace").exists():
        raise SystemExit(f"blk_trace.py: no tracefs at {TRACEFS} (run it as root in the box)")
    _write("tracing_on", "0")
    _write("trace_clock", "mono")
    _write("buffer_size_kb", "30000")
    _write("set_event", "")
    for event in EVENTS:
        enable = TRACEFS / "events" / event / "enable"
        if not enable.exists():
            raise SystemExit(f"blk_trace.py: the kernel has no trace event {event}")
        enable.write_text("1")


def ensure_image(mib: int) -> None:
    if IMAGE.exists() and IMAGE.stat().st_size == mib << 20:
        return
    with open("/dev/urandom", "rb") as random, open(IMAGE, "wb") as image:
        for _ in range(mib):
            image.write(random.read(1 << 20))


def vmm_argv(vmm: str) -> list[str]:
    from pcivm.guest.image import ensure_image as ensure_guest
    from pcivm.reference import GuestBoot, pcivm_argv, qemu_argv

    guest = ensure_guest()
    boot = GuestBoot(
        kernel=guest.kernel.bzimage,
        initrd=guest.initrd,
        probe=False,
        run=GUEST_READS,
        extra_args=["-drive", f"file={IMAGE},if=virtio,format=raw,readonly=on"],
    )
    return pcivm_argv(boot) if vmm == "pcivm" else qemu_argv(boot)


def trace_one(vmm: str, settle: float, seconds: float) -> dict[str, float]:
    _write("trace", "")
    proc = subprocess.Popen(
        vmm_argv(vmm), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(settle)
        if proc.poll() is not None:
            raise SystemExit(f"blk_trace.py: {vmm} exited with status {proc.returncode}")
        _write("tracing_on", "1")
        time.sleep(seconds)
        _write("tracing_on", "0")
        threads = {int(t) for t in os.listdir(f"/proc/{proc.pid}/task")}
    finally:
        proc.kill()
        proc.wait()
    text = (TRACEFS / "trace").read_text(errors="replace")
    return summary(phases(parse_trace(text, threads)))


def report(results: dict[str, list[dict[str, float]]]) -> str:
    def med(vmm: str, key: str) -> float:
        return statistics.median(r[key] for r in results[vmm])

    rows = []
    for key in (*PHASES, "period"):
        a, b = med("pcivm", key), med("qemu", key)
        label = "request period" if key == "period" else key
        rows.append([label, f"{a:,.0f}", f"{b:,.0f}", format_ratio(ratio(a, b))])
    counts = [f"{vmm} {', '.join(str(int(r['requests'])) for r in results[vmm])}" for vmm in VMMS]
    return "\n".join(
        [
            render_table(["us per 1 MiB read (median)", "pcivm", "QEMU", "pcivm/QEMU"], rows),
            f"requests traced per round: {'; '.join(counts)}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=positive_int, default=2, help="boots of each VMM")
    parser.add_argument(
        "--settle", type=positive_float, default=40.0, help="seconds from start to tracing"
    )
    parser.add_argument("--seconds", type=positive_float, default=3.0, help="seconds traced")
    parser.add_argument("--image-mib", type=positive_int, default=256, help="image size")
    args = parser.parse_args(argv)
    prepare_tracing()
    results: dict[str, list[dict[str, float]]] = {vmm: [] for vmm in VMMS}
    try:
        ensure_image(args.image_mib)
        for round_index in range(args.rounds):
            for vmm in rotate(VMMS, round_index):
                result = trace_one(vmm, args.settle, args.seconds)
                results[vmm].append(result)
                figures = "  ".join(f"{p} {result[p]:,.0f}" for p in (*PHASES, "period"))
                print(f"round {round_index + 1} {vmm:5}  us: {figures}", flush=True)
    finally:
        _write("set_event", "")
        IMAGE.unlink(missing_ok=True)  # 256 MiB of RAM, on a host as in the box
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
