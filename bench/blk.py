"""Block I/O: virtio-blk reads of a raw image, pcivm against QEMU `-drive if=virtio`.

Both VMMs boot the same guest (the image's kernel and initramfs, plus a small uncompressed
initramfs in front that adds bench/guest_tools' `randread` and `blkbench`) with the same
raw image (1 GiB, made once on the host, copied into the box's tmpfs for the run so that
every read comes from RAM, as from a warm page cache) attached as

    -drive file=IMAGE,if=virtio,format=raw,readonly=on

and the guest command `blkbench`, which runs two tests back to back:

  sequential  dd if=/dev/vda of=/dev/null bs=1M count=1024 iflag=direct
  random      randread /dev/vda THREADS SECONDS: THREADS threads, each with one O_DIRECT
              4 KiB read at a random aligned offset in flight (default 4 threads, 10 s)

A small runner inside the box starts each VMM, watches its console for the short marker
lines that bracket each test and, at each, samples KVM's debugfs counters of the VM and the
VMM process's CPU time (user + system, less the time the vCPU spent in the guest). The
guest prints its block layer's counters (/sys/block/vda/stat) before and after each test:
requests are the reads the guest's block layer completed, after merging. pcivm and QEMU
alternate within each round, several rounds; medians and ratios pcivm/QEMU are printed.
The machines are shared and noisy: compare ratios, not absolute figures.

`--baseline CHECKOUT` adds a third VMM to every round: pcivm run from another checkout's
src/ (same interpreter, same options), so that a change is measured against the code
before it in the same box, side by side; every boot's figures are then listed too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

if not __package__:  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    ArgumentParser,
    format_ratio,
    median,
    open_bench_box,
    parse_pcivm_exit_total,
    positive_float,
    positive_int,
    progress,
    ratio,
    render_table,
    rotate,
    spread,
)

TOOLS = Path(__file__).resolve().parent / "guest_tools"
MARKERS = ("=S0=", "=S1=", "=R0=", "=R1=")
# KVM's counters sampled at each marker (sums over the VM's vCPUs)
STATS = ("exits", "io_exits", "mmio_exits", "halt_exits", "irq_injections", "signal_exits")
CONSOLE_BYTES = 64 << 10
BLOCK = 4096
MB = 1_000_000
IMAGE_SEED = b"pcivm bench/blk.py image"
BASELINE = "pcivm-baseline"  # the job of --baseline: pcivm from another checkout
RAM_DIR = "/dev/shm"  # a tmpfs in the box (and on a host, with --box direct)


# -- the guest side (pure helpers) -------------------------------------------------------


def guest_command(seq_mib: int, threads: int, seconds: float) -> str:
    return f"blkbench /dev/vda {seq_mib} {threads} {seconds:g}"


def drive_arg(image: Path) -> str:
    return f"file={image},if=virtio,format=raw,readonly=on"


def parse_guest(console: str) -> dict:
    """The guest's lines: {"stat": {label: [fields]}, "dd": (status, text), "rr": {...}}."""
    out: dict = {"stat": {}, "dd": None, "rr": None, "queue": {}}
    for raw in console.splitlines():
        line = raw.strip()
        words = line.split()
        if not words:
            continue
        if words[0] == "BLK-STAT" and len(words) >= 3:
            out["stat"][words[1]] = [int(w) for w in words[2:] if w.isdigit()]
        elif words[0] == "BLK-QUEUE":
            out["queue"] = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        elif words[0] == "BLK-DD" and len(words) >= 2:
            out["dd"] = (_int(words[1]), " ".join(words[2:]))
        elif words[0] == "BLK-RR" and len(words) >= 2:
            fields = dict(w.split("=", 1) for w in words[2:] if "=" in w)
            out["rr"] = {"status": _int(words[1]), **fields}
    return out


def _int(text: str) -> int | None:
    return int(text) if text.lstrip("-").isdigit() else None


def reads_completed(stat: dict, before: str, after: str) -> int | None:
    """Reads the guest's block layer completed between two BLK-STAT lines (field 1)."""
    a, b = stat.get(before), stat.get(after)
    if not a or not b:
        return None
    return b[0] - a[0]


def dd_bytes(text: str, block: int = 1 << 20) -> int | None:
    """Bytes dd copied, from its "N+M records out" line (busybox prints no byte count):
    N whole blocks of `block` bytes; a partial record means a short read (None)."""
    words = text.split()
    if len(words) >= 3 and words[1:3] == ["records", "out"] and "+" in words[0]:
        whole, partial = words[0].split("+", 1)
        if whole.isdigit() and partial == "0":
            return int(whole) * block
    return None


# -- the image and the initramfs ----------------------------------------------------------


def bench_dir() -> Path:
    from pcivm.guest.cache import cache_dir

    path = cache_dir() / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def ensure_disk_image(size_mib: int) -> Path:
    """A raw image of `size_mib` MiB with no holes, each 4 KiB block stamped with its number
    (so no two blocks are alike); made once, on the host (filling it in the box is slow)."""
    path = bench_dir() / f"blk-{size_mib}m.img"
    if path.exists() and path.stat().st_size == size_mib << 20:
        return path
    progress(f"creating {path} ({size_mib} MiB)")
    import hashlib

    filler = bytearray()
    while len(filler) < 1 << 20:
        filler += hashlib.sha256(IMAGE_SEED + len(filler).to_bytes(8, "little")).digest()
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.truncate(size_mib << 20)  # sparse first, then every block written
        for mib in range(size_mib):
            chunk = bytearray(filler)
            for block in range((1 << 20) // BLOCK):
                number = mib * ((1 << 20) // BLOCK) + block
                chunk[block * BLOCK : block * BLOCK + 8] = number.to_bytes(8, "little")
            f.write(chunk)
    os.replace(tmp, path)
    return path


def build_randread(out: Path) -> None:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise SystemExit("blk.py: no C compiler (apt-get install gcc libc6-dev)")
    source = TOOLS / "randread.c"
    done = subprocess.run(
        [cc, "-O2", "-static", "-pthread", "-o", str(out), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"blk.py: building randread failed:\n{done.stderr.strip()}")


def tools_archive(randread: bytes, blkbench: bytes) -> bytes:
    """An uncompressed newc archive adding /bin/randread and /bin/blkbench."""
    from pcivm.guest import cpio

    return cpio.pack(
        [
            cpio.directory("bin"),
            cpio.regular("bin/randread", randread, 0o755),
            cpio.regular("bin/blkbench", blkbench, 0o755),
        ]
    )


def build_initrd(image) -> Path:
    """The tools' archive followed by the image's gzip initramfs (an uncompressed archive
    must come first: the kernel finds no magic after a compressed one)."""
    work = bench_dir()
    binary = work / "randread"
    build_randread(binary)
    archive = tools_archive(binary.read_bytes(), (TOOLS / "blkbench.sh").read_bytes())
    path = work / "blk-initrd"
    path.write_bytes(archive + Path(image.initrd).read_bytes())
    return path


# -- the in-box runner --------------------------------------------------------------------


def _cpu_seconds(pid: int) -> list[float] | None:
    """The process's [user time less guest time, system time] over all its threads, in
    seconds: its own code (Python or QEMU) and the kernel's work for it (KVM's exit
    handling, the copies of preadv, eventfds). The guest's run counts as guest time."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is the state (stat field 3): utime is field 14, stime 15, guest_time 43
    utime, stime, guest = int(fields[11]), int(fields[12]), int(fields[40])
    tick = os.sysconf("SC_CLK_TCK")
    return [(utime - guest) / tick, stime / tick]


def thread_role(comm: str) -> str:
    """What a thread does, from its kernel name: up to the first space or slash, without
    trailing digits ("vcpu0" -> "vcpu", "kick virtio-blk0" -> "kick", "io virtio-blk0"
    -> "io"; QEMU's "CPU 0/KVM" -> "CPU", "worker"; a main thread by its program's name)."""
    return comm.split(" ")[0].split("/")[0].rstrip("0123456789") or comm


def _thread_cpu(pid: int) -> dict[str, list[float]]:
    """[user time less guest time, system time] in seconds of the process's threads,
    summed by `thread_role`."""
    tick = os.sysconf("SC_CLK_TCK")
    roles: dict[str, list[float]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return roles
    for tid in tids:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        utime, stime, guest = int(fields[11]), int(fields[12]), int(fields[40])
        total = roles.setdefault(thread_role(comm), [0.0, 0.0])
        total[0] += (utime - guest) / tick
        total[1] += stime / tick
    return roles


def run_job(job: dict) -> dict:
    """Start the VMM, sample at each marker line, keep the console's tail."""
    import signal
    import threading
    import time

    from bench.common import ensure_debugfs, find_vm_dir, read_kvm_stats

    ensure_debugfs()
    started = time.monotonic()
    proc = subprocess.Popen(
        job["argv"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(job["timeout"], kill)
    timer.start()
    err = bytearray()

    def drain() -> None:
        for chunk in iter(lambda: proc.stderr.read(4096), b""):
            err.extend(chunk[: max(0, CONSOLE_BYTES - len(err))])

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    console = bytearray()
    samples: dict[str, dict] = {}
    vm_dir = None
    for line in iter(proc.stdout.readline, b""):
        text = line.decode(errors="replace").strip()
        if text in MARKERS:
            now = time.monotonic() - started
            vm_dir = vm_dir or find_vm_dir(proc.pid)
            samples[text] = {
                "t": now,
                "kvm": read_kvm_stats(vm_dir, STATS) if vm_dir else {},
                "cpu": _cpu_seconds(proc.pid),
                "threads": _thread_cpu(proc.pid),
            }
        console += line
        del console[:-CONSOLE_BYTES]
    proc.wait()
    timer.cancel()
    reader.join(5)
    return {
        "name": job["name"],
        "status": proc.returncode,
        "timed_out": timed_out.is_set(),
        "end_s": time.monotonic() - started,
        "samples": samples,
        "console": console.decode(errors="replace"),
        "stderr": err.decode(errors="replace"),
    }


def run_jobs_in_box(jobs_json: str) -> int:
    for job in json.loads(jobs_json):
        result = run_job(job)
        print(json.dumps(result), flush=True)
        what = "timed out" if result["timed_out"] else f"status {result['status']}"
        print(f"  {job['name']:<8} {what}, {result['end_s']:.1f} s", file=sys.stderr, flush=True)
    return 0


# -- results ------------------------------------------------------------------------------


@dataclass
class Test:
    """One test of one boot: its window (box clock), requests and counters."""

    seconds: float | None = None
    requests: int | None = None
    work: float | None = None  # bytes (sequential) or reads done (random)
    kvm: dict = field(default_factory=dict)  # counter -> delta
    user: float | None = None  # VMM user CPU seconds outside the guest
    system: float | None = None  # kernel CPU seconds of the VMM process
    threads: dict = field(default_factory=dict)  # thread role -> (user, system) seconds

    def per_request(self, value: float | None) -> float | None:
        return ratio(value, self.requests)

    @property
    def rate(self) -> float | None:
        return ratio(self.work, self.seconds)

    @property
    def exits(self) -> int | None:
        return self.kvm.get("exits")

    @property
    def to_vmm(self) -> int | None:
        if "io_exits" not in self.kvm:
            return None
        return self.kvm["io_exits"] + self.kvm.get("mmio_exits", 0)


@dataclass
class Boot:
    name: str
    vmm: str
    round: int
    seq: Test
    rand: Test
    why: str = ""  # empty when both tests ran
    exits_d: int | None = None
    queue: dict = field(default_factory=dict)  # the guest's block queue limits

    @property
    def ok(self) -> bool:
        return not self.why


def window(samples: dict, begin: str, end: str) -> Test:
    a, b = samples.get(begin), samples.get(end)
    if a is None or b is None:
        return Test()
    kvm = {k: b["kvm"][k] - a["kvm"][k] for k in b["kvm"] if k in a["kvm"]}
    user = system = None
    if a["cpu"] and b["cpu"]:
        user, system = b["cpu"][0] - a["cpu"][0], b["cpu"][1] - a["cpu"][1]
    before, after = a.get("threads", {}), b.get("threads", {})
    threads = {
        role: (after[role][0] - before[role][0], after[role][1] - before[role][1])
        for role in after
        if role in before
    }
    return Test(seconds=b["t"] - a["t"], kvm=kvm, user=user, system=system, threads=threads)


def digest(result: dict, vmm: str, round_index: int, seq_mib: int) -> Boot:
    guest = parse_guest(result["console"])
    seq = window(result["samples"], "=S0=", "=S1=")
    rand = window(result["samples"], "=R0=", "=R1=")
    seq.requests = reads_completed(guest["stat"], "seq0", "seq1")
    rand.requests = reads_completed(guest["stat"], "rand0", "rand1")
    why = []
    if result["timed_out"]:
        why.append("timed out")
    dd = guest["dd"]
    if dd is None or dd[0] != 0:
        why.append(f"dd failed: {dd[1] if dd else 'no result'}")
    else:
        seq.work = dd_bytes(dd[1])
        if seq.work != seq_mib << 20:
            why.append(f"dd read {seq.work} bytes: {dd[1]}")
    rr = guest["rr"]
    if rr is None or rr.get("status") != 0 or "ops" not in rr:
        why.append(f"randread failed: {rr}")
    else:
        rand.work = float(rr["ops"])
    if why and not result["console"].strip():
        why.append(f"stderr: {result['stderr'].strip()[-200:]}")
    elif why:
        why.append(f"console ends: {' | '.join(result['console'].strip().splitlines()[-3:])}")
    return Boot(
        name=result["name"],
        vmm=vmm,
        round=round_index,
        seq=seq,
        rand=rand,
        why="; ".join(why)[:400],
        exits_d=parse_pcivm_exit_total(result["stderr"]),
        queue=guest["queue"],
    )


# -- report -------------------------------------------------------------------------------


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}{unit}"


def per_round_ratios(boots: list[Boot], metric) -> list[float]:
    values = []
    for r in sorted({b.round for b in boots}):
        mine = {b.vmm: metric(b) for b in boots if b.round == r and b.ok}
        value = ratio(mine.get("pcivm"), mine.get("qemu"))
        if value is not None:
            values.append(value)
    return values


METRICS = [
    # (key, label, metric of a boot, digits)
    ("seq_mbs", "sequential 1 MiB: MB/s", lambda b: ratio(b.seq.rate, MB), 1),
    ("seq_req", "  requests (guest block layer)", lambda b: b.seq.requests, 0),
    ("seq_kib", "  KiB per request", lambda b: ratio(ratio(b.seq.work, b.seq.requests), 1024), 0),
    ("seq_exits", "  KVM exits / request", lambda b: b.seq.per_request(b.seq.exits), 2),
    ("seq_vmm", "  io+mmio exits / request", lambda b: b.seq.per_request(b.seq.to_vmm), 2),
    ("seq_cpu", "  VMM user CPU us / request", lambda b: _micros(b.seq.per_request(b.seq.user)), 0),
    (
        "seq_sys",
        "  its kernel CPU us / request",
        lambda b: _micros(b.seq.per_request(b.seq.system)),
        0,
    ),
    ("rand_iops", "random 4 KiB: IOPS", lambda b: b.rand.rate, 0),
    ("rand_req", "  requests (guest block layer)", lambda b: b.rand.requests, 0),
    ("rand_exits", "  KVM exits / request", lambda b: b.rand.per_request(b.rand.exits), 2),
    ("rand_vmm", "  io+mmio exits / request", lambda b: b.rand.per_request(b.rand.to_vmm), 2),
    (
        "rand_irq",
        "  interrupts injected / request",
        lambda b: b.rand.per_request(b.rand.kvm.get("irq_injections")),
        2,
    ),
    (
        "rand_cpu",
        "  VMM user CPU us / request",
        lambda b: _micros(b.rand.per_request(b.rand.user)),
        0,
    ),
    (
        "rand_sys",
        "  its kernel CPU us / request",
        lambda b: _micros(b.rand.per_request(b.rand.system)),
        0,
    ),
]


def _limits(boots: list[Boot]) -> str:
    queue = boots[0].queue
    return " ".join(f"{k}={v}" for k, v in queue.items()) or "n/a"


def _micros(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e6


def per_boot(boots: list[Boot]) -> list[str]:
    """Every boot's figures, for comparing the baseline's with pcivm's and QEMU's."""
    rows = []
    for b in sorted(boots, key=lambda b: (b.round, b.vmm)):
        seq, rand = b.seq, b.rand
        rows.append(
            [
                str(b.round + 1),
                b.vmm,
                _fmt(ratio(seq.rate, MB), "", 1),
                _fmt(rand.rate, "", 0),
                _fmt(_us(rand.per_request(rand.user)), "", 0),
                _fmt(_us(rand.per_request(rand.system)), "", 0),
            ]
        )
    header = ["round", "VMM", "seq MB/s", "rand IOPS", "rand user us/req", "rand kernel us/req"]
    return ["Every boot:", "", render_table(header, rows)]


def _us(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e6


def report(boots: list[Boot], command: str, threads: int, seconds: float) -> str:
    ok = {vmm: [b for b in boots if b.vmm == vmm and b.ok] for vmm in ("pcivm", "qemu")}
    rows = []
    meds: dict[str, tuple[float | None, float | None]] = {}
    for key, label, metric, digits in METRICS:
        p = median(metric(b) for b in ok["pcivm"])
        q = median(metric(b) for b in ok["qemu"])
        meds[key] = (p, q)
        rows.append(
            [
                label,
                _fmt(p, "", digits),
                _fmt(q, "", digits),
                format_ratio(ratio(p, q)),
                spread(per_round_ratios(boots, metric)),
            ]
        )
    table = render_table(["", "pcivm", "QEMU", "pcivm/QEMU", "per round"], rows)
    counts = {vmm: f"{len(ok[vmm])}/{len([b for b in boots if b.vmm == vmm])}" for vmm in ok}
    lines = [
        f"Block I/O: {command}",
        f"Boots that ran both tests: pcivm {counts['pcivm']}, QEMU {counts['qemu']}. Medians;",
        "'per round' is the range of the pcivm/QEMU ratio within each round. Rates over the",
        "box's clock between the marker lines; requests: reads the guest's block layer",
        "completed; exits: KVM's debugfs counters of the VM over the test; VMM user CPU: the",
        "VMM process's user time less its vCPU's guest time (Python or QEMU's own code); its",
        "kernel CPU: the process's system time (KVM's exit handling, the reads' copies, ...).",
        f"Random: {threads} threads x 1 O_DIRECT 4 KiB read in flight each, {seconds:g} s.",
        "",
        table,
        "",
        *bounds(meds, threads),
        *by_thread(ok),
        *(
            f"Guest block queue limits under {vmm}: {_limits(ok[vmm])}"
            for vmm in ("pcivm", "qemu")
            if ok[vmm]
        ),
    ]
    if any(b.vmm == BASELINE for b in boots):
        lines += ["", *per_boot(boots)]
    for b in boots:
        if not b.ok:
            lines.append(f"{b.name} (round {b.round + 1}) failed: {b.why}")
    return "\n".join(lines)


def by_thread(ok: dict[str, list[Boot]]) -> list[str]:
    """Each VMM's CPU per request by thread role (user + kernel, us; medians of its boots):
    which thread the time went to. Roles under 2% of a test's total are left out."""
    out = ["CPU per request by thread (user + kernel us, medians):"]
    for vmm, boots in ok.items():
        for label, tests in (("sequential", [b.seq for b in boots]),
                             ("random", [b.rand for b in boots])):  # fmt: skip
            cells = []
            for role in sorted({role for test in tests for role in test.threads}):
                spent = [test.threads.get(role, (None, None)) for test in tests]
                user = median(t.per_request(u) for t, (u, _) in zip(tests, spent, strict=True))
                system = median(t.per_request(k) for t, (_, k) in zip(tests, spent, strict=True))
                if user is not None and system is not None:
                    cells.append((user + system, f"{role} {_us(user):,.0f} + {_us(system):,.0f}"))
            total = sum(cpu for cpu, _ in cells)
            shown = [text for cpu, text in sorted(cells, reverse=True) if cpu >= 0.02 * total]
            if shown:
                out.append(f"  {vmm} {label}: " + ", ".join(shown))
    return out if len(out) > 1 else []


def bounds(meds: dict, threads: int) -> list[str]:
    """What the medians say bounds pcivm: its CPU per request (its own code, the kernel's
    work for it) against the time between request completions, and exits per request."""
    out = ["What bounds pcivm (per request, pcivm vs QEMU):"]
    for test, prefix, rate_key in (
        ("sequential", "seq", "seq_mbs"),
        ("random", "rand", "rand_iops"),
    ):
        p_rate, q_rate = meds[rate_key]
        kib = meds["seq_kib"] if prefix == "seq" else (4.0, 4.0)
        p_gap, q_gap = _gap(p_rate, kib[0], prefix), _gap(q_rate, kib[1], prefix)
        p_user, q_user = meds[f"{prefix}_cpu"]
        p_sys, q_sys = meds[f"{prefix}_sys"]
        p_exits, q_exits = meds[f"{prefix}_exits"]
        if p_gap is None:
            out.append(f"  {test}: no figures")
            continue
        out.append(
            f"  {test}: a request completes every {_fmt(p_gap, ' us', 0)} vs "
            f"{_fmt(q_gap, ' us', 0)}; VMM user CPU {_fmt(p_user, ' us', 0)} vs "
            f"{_fmt(q_user, ' us', 0)}, its kernel CPU {_fmt(p_sys, ' us', 0)} vs "
            f"{_fmt(q_sys, ' us', 0)}; KVM exits {_fmt(p_exits, '', 2)} vs {_fmt(q_exits, '', 2)}"
            + (
                f"; {_fmt(kib[0], ' KiB', 0)} vs {_fmt(kib[1], ' KiB', 0)} a request"
                if prefix == "seq"
                else ""
            )
        )
        causes = []
        if prefix == "seq" and kib[0] and kib[1] and kib[0] < 0.9 * kib[1]:
            causes.append(
                f"smaller requests: the guest splits each 1 MiB read into {kib[1] / kib[0]:.1f} "
                "requests under pcivm (see its queue limits below)"
            )
        cpu_share = ratio(_sum(p_user, p_sys), p_gap)
        if cpu_share is not None:
            causes.append(
                f"CPU: pcivm's process (user + kernel) uses {cpu_share:.0%} of the time between "
                f"completions, the kernel's part (KVM's nested exit handling"
                + (", the copy of every byte" if prefix == "seq" else "")
                + f") {_fmt(p_sys, ' us', 0)} against QEMU's {_fmt(q_sys, ' us', 0)}"
            )
        extra_gap = None if q_gap is None else p_gap - q_gap
        extra_user = None if p_user is None or q_user is None else p_user - q_user
        if extra_gap and extra_gap > 0 and extra_user is not None:
            causes.append(
                f"pcivm's own code (Python: chain walk, checks, syscalls, used ring) costs "
                f"{extra_user:,.0f} us more per request than QEMU's, for {extra_gap:,.0f} us more "
                f"between completions: {min(extra_user / extra_gap, 9.99):.0%} of the difference"
            )
        if p_exits is not None and q_exits and p_exits > 1.3 * q_exits:
            causes.append(f"{p_exits / q_exits:.1f}x the exits per request of QEMU")
        out.append("    -> " + "; ".join(causes) + ".")
    return out


def _sum(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


def _gap(rate: float | None, kib: float | None, prefix: str) -> float | None:
    """Microseconds between request completions at `rate` (MB/s or IOPS)."""
    if rate is None or not rate or not kib:
        return None
    per_second = rate * MB / (kib * 1024) if prefix == "seq" else rate
    return 1e6 / per_second


# -- command line -------------------------------------------------------------------------


def parse_args(argv: list[str]):
    parser = ArgumentParser(
        prog="blk.py",
        description="virtio-blk reads of a 1 GiB raw image: sequential 1 MiB (dd iflag=direct) "
        "and random 4 KiB with several reads in flight, pcivm against QEMU -drive if=virtio, "
        "in one box, alternating, several rounds. About 1.5 min a round.",
    )
    parser.add_argument("--rounds", type=positive_int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--threads", type=positive_int, default=4, help="random reads in flight (default 4)"
    )
    parser.add_argument(
        "--seconds", type=positive_float, default=10.0, help="random test length (default 10)"
    )
    parser.add_argument(
        "--seq-mib", type=positive_int, default=1024, help="MiB read sequentially (default 1024)"
    )
    parser.add_argument(
        "--timeout", type=positive_float, default=240.0, help="seconds per boot (default 240)"
    )
    parser.add_argument(
        "--box", choices=("auto", "tcg", "direct"), default="auto", help="where to run"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every result here")
    parser.add_argument(
        "--baseline",
        type=baseline_src,
        metavar="CHECKOUT",
        help="also run pcivm from another checkout of the project (its src/), alternating "
        "with the others: a change measured against the code before it, in one box",
    )
    parser.add_argument("--run-jobs", help=argparse.SUPPRESS)  # the in-box side
    return parser.parse_args(argv)


def baseline_src(value: str) -> Path:
    src = Path(value).resolve() / "src"
    if not (src / "pcivm" / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(f"{value} is not a checkout of pcivm (no src/pcivm)")
    return src


def image_in_ram(box, disk: Path) -> Path:
    """The image as both VMMs read it: a copy in the box's tmpfs, so that every read comes
    from RAM, as on a host whose page cache holds the image. Read from the host's files,
    it would come over virtiofs, whose cache=auto drops a file's cached data whenever the
    file is opened again (the VMM's open, after any warm-up read): every read would be a
    round trip to virtiofsd, and the benchmark would time that. The caller removes it."""
    from pcivm.errors import PcivmError

    copy = Path(RAM_DIR) / f"pcivm-bench-{os.getpid()}-{disk.name}"
    progress(f"copying the image into the box's RAM ({copy})")
    try:
        status, _out, err = box.run_capture(["cp", str(disk), str(copy)], timeout=600)
    except BaseException:
        remove_quietly(box, copy)
        raise
    if status != 0:
        remove_quietly(box, copy)
        reason = err.decode(errors="replace").strip().splitlines()[-1:] or ["cp failed"]
        raise PcivmError(f"cannot copy the image into {RAM_DIR}: {reason[0]}")
    return copy


def remove_quietly(box, path: Path) -> None:
    """Remove a file in the box, if the box still answers (a box that died took its
    tmpfs with it; with --box direct the file is the host's)."""
    try:
        box.run_capture(["rm", "-f", str(path)], timeout=60)
    except Exception as exc:  # the report of the rounds done matters more
        progress(f"blk.py: could not remove {path}: {exc}")


def build_jobs(image, initrd: Path, disk: Path, args) -> list[dict]:
    from pcivm.reference import GuestBoot, pcivm_argv, qemu_argv

    boot = GuestBoot(
        kernel=image.kernel.bzimage,
        initrd=initrd,
        probe=False,
        run=guest_command(args.seq_mib, args.threads, args.seconds),
        extra_args=["-drive", drive_arg(disk)],
    )
    pcivm = [*pcivm_argv(boot), "-d"]
    jobs = [
        {"name": "pcivm", "argv": pcivm, "timeout": args.timeout},
        {"name": "qemu", "argv": qemu_argv(boot), "timeout": args.timeout},
    ]
    if args.baseline:
        # The same interpreter and options; the package comes from the other checkout.
        argv = ["env", f"PYTHONPATH={args.baseline}", *pcivm]
        jobs.insert(1, {"name": BASELINE, "argv": argv, "timeout": args.timeout})
    return jobs


def run_round(box, jobs: list[dict]) -> tuple[list[dict], str | None]:
    import io

    from pcivm.box.errors import BoxError

    out = io.BytesIO()
    argv = [sys.executable, str(Path(__file__).resolve()), "--run-jobs", json.dumps(jobs)]
    problem = None
    try:
        status = box.run(
            argv,
            stdout=out,
            stderr=_Progress(),
            timeout=sum(j["timeout"] for j in jobs) + 120,
        )
        if status != 0:
            problem = f"the in-box runner ended with status {status}"
    except BoxError as exc:
        problem = f"the box failed: {exc}"
    results = []
    for line in out.getvalue().decode(errors="replace").splitlines():
        try:
            results.append(json.loads(line))
        except ValueError:
            continue
    return results, problem


class _Progress:
    """stderr for the box's output: the in-box runner's progress lines, shown at once."""

    def write(self, data: bytes) -> int:
        sys.stderr.buffer.write(data)
        sys.stderr.buffer.flush()
        return len(data)

    def flush(self) -> None:
        sys.stderr.buffer.flush()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.run_jobs is not None:
        return run_jobs_in_box(args.run_jobs)
    from bench.boot import ensure_qemu, warm_bytecode_cache
    from pcivm.errors import PcivmError
    from pcivm.guest.image import ensure_image

    command = " ".join(["python bench/blk.py", *argv])
    size_mib = max(1024, args.seq_mib)
    boots: list[Boot] = []
    raw: list[dict] = []
    try:
        image = ensure_image()
        ensure_qemu()
        warm_bytecode_cache()
        disk = ensure_disk_image(size_mib)
        initrd = build_initrd(image)
        progress("starting the box")
        with open_bench_box(args.box) as box:
            progress(f"box: {box.description}")
            ram_image = image_in_ram(box, disk)
            try:
                jobs = build_jobs(image, initrd, ram_image, args)
                for index in range(args.rounds):
                    progress(f"round {index + 1}/{args.rounds}")
                    results, problem = run_round(box, rotate(jobs, index))
                    raw += results
                    boots += [digest(r, r["name"], index, args.seq_mib) for r in results]
                    if args.json:
                        args.json.write_text(json.dumps({"rounds": raw}, indent=1))
                    if problem:
                        progress(f"blk.py: round {index + 1} stopped early ({problem})")
                        break
            finally:
                remove_quietly(box, ram_image)
    except PcivmError as exc:
        print(f"blk.py: {exc}", file=sys.stderr)
        return 1
    print()
    print(report(boots, command, args.threads, args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
