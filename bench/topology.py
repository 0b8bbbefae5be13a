"""Topology: plan and boot to the probe report with 1, 32 and 256 PCI devices.

Each topology is `-M pc` with `pci-testdev` functions (QEMU's test device: a 4 KiB memory
BAR0 and a 256-byte IO BAR1). Up to 30 devices sit on the root bus (slots 2-31; 0 and 1 are
the host and ISA bridges); beyond that, `pci-bridge`s on the root bus hold 31 devices each
(slots 1-31: QEMU's SHPC hot-plug controller refuses slot 0) and the rest stays on the root
bus. 32 devices: one bridge of 31 and one device on the root bus; 256: eight bridges
(248) and eight on the root bus.

IO space: 0x1000-0xffff is 60 KiB; a bridge holding 31 IO BARs of 256 bytes needs an 8 KiB
window (4 KiB granular), so at most seven such bridges fit beside the root bus's own IO
BARs. For pcivm the devices behind the bridges that IO cannot hold get `bar1=none` (a
memory-only device), so that every BAR of the 256-device machine has an address; nothing
else differs. QEMU's pci-testdev has no such property: QEMU gets the plain devices and
its firmware (SeaBIOS) has to fit 256 IO BARs in the same 60 KiB.

Per topology the benchmark measures:

- plan: `parse_options` + `build_plan` in this process (on the host, no KVM);
- pcivm boot: process start to the probe report's end marker, in the box (the in-box timing
  wrapper bench/_time_to_marker.py), with `-d` for pcivm's exit counts, KVM's debugfs
  counters of the VM, and the process's peak RSS (GNU time's %M, i.e. VmHWM);
- QEMU's boot of the same topology in the same box, or why it does not boot;
- that the guest saw every function of the plan (the report's `pci` entries against it).

All boots of a round run in one box, in rotating order. Medians over the rounds, ratios
to the 1-device topology; the machines are shared and noisy: compare ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if not __package__:  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    ArgumentParser,
    format_count,
    format_ratio,
    format_seconds,
    median,
    open_bench_box,
    parse_pcivm_exit_total,
    positive_float,
    positive_int,
    progress,
    ratio,
    render_table,
    rotate,
    vmm_exits,
)

WRAPPER = Path(__file__).resolve().parent / "_time_to_marker.py"
MARKER = "===PCIVM-PROBE-END==="
COUNTS = (1, 32, 256)
BIG = 32  # larger topologies boot in the first --big-rounds rounds only
MACHINE = "pc"
ROOT_SLOTS = 30  # -M pc: slots 2..31 of bus 0 are free
PER_BRIDGE = 31  # slots 1..31 behind a pci-bridge
IO_BAR = 256  # pci-testdev's BAR1
IO_SPACE = 0x10000 - 0x1000  # what PCI may use (docs/pci.md)
IO_GRANULE = 4096  # a bridge's IO window granularity
TIME = "/usr/bin/time"
RSS_TAG = "topology-maxrss-kib"
# The GNU time line a job's stderr ends with: the peak resident set of the VMM in KiB.
TIME_FORMAT = f"{RSS_TAG} %M"
# SeaBIOS's debug output (QEMU's debug console at port 0x402), for a QEMU that fails.
FIRMWARE_LOG = "/tmp/pcivm-bench-topology-seabios.log"
# Each VMM may open many eventfds per device (QEMU's pci-testdev: one per ioeventfd):
# the default limit of 1024 files stops QEMU with 256 test devices.
RAISE_FD_LIMIT = ("sh", "-c", 'ulimit -n 65536 2>/dev/null; exec "$@"', "sh")
REPORT_BYTES = 4 << 20  # keep the whole console: the report is checked on the host


# -- topologies (pure) ------------------------------------------------------------------


@dataclass(frozen=True)
class Topology:
    count: int
    bridges: int
    root_devices: int
    io_bridges: int  # bridges whose devices keep their IO BAR under pcivm

    def devices(self, io_less: bool) -> list[str]:
        """The -device values; io_less: `bar1=none` for the devices IO cannot hold."""
        out = []
        for b in range(1, self.bridges + 1):
            out.append(f"pci-bridge,id=br{b},chassis_nr={b}")
            extra = ",bar1=none" if io_less and b > self.io_bridges else ""
            for slot in range(1, PER_BRIDGE + 1):
                out.append(f"pci-testdev,id=td{b}.{slot},bus=br{b},addr={slot:#x}{extra}")
        out += [f"pci-testdev,id=td0.{i}" for i in range(1, self.root_devices + 1)]
        return out

    @property
    def io_less_devices(self) -> int:
        return (self.bridges - self.io_bridges) * PER_BRIDGE


def topology(count: int) -> Topology:
    """Where `count` test devices go on -M pc, and how many bridges' devices IO can hold."""
    if count < 1:
        raise ValueError("at least one device")
    bridges = 0 if count <= ROOT_SLOTS else count // PER_BRIDGE
    root = count - bridges * PER_BRIDGE
    if bridges + root > ROOT_SLOTS:
        # fewer full bridges would leave more on the root bus: one more, partly filled, is
        # not modelled; the counts used here never need it
        raise ValueError(f"{count} devices do not fit {ROOT_SLOTS} root slots with full bridges")
    left = IO_SPACE - _round_up(root * IO_BAR, IO_GRANULE)
    window = _round_up(PER_BRIDGE * IO_BAR, IO_GRANULE)
    io_bridges = min(bridges, max(0, left // window))
    return Topology(count, bridges, root, io_bridges)


def _round_up(value: int, granule: int) -> int:
    return math.ceil(value / granule) * granule


def plan_argv(devices: list[str]) -> list[str]:
    argv = ["-M", MACHINE, "-kernel", "(none)"]
    for device in devices:
        argv += ["-device", device]
    return argv


def parse_maxrss(stderr: str) -> int | None:
    """GNU time's peak RSS line (bytes), the last one in stderr."""
    for line in reversed(stderr.splitlines()):
        words = line.split()
        if len(words) == 2 and words[0] == RSS_TAG and words[1].isdigit():
            return int(words[1]) * 1024
    return None


def parse_exit_groups(stderr: str) -> tuple[dict[str, int], float | None]:
    """pcivm -d's exits by device ({"port IO PCI conf1": count, ...}) and the seconds the
    VMM had run when it printed them."""
    groups: dict[str, int] = {}
    seconds = None
    inside = False
    for line in stderr.splitlines():
        if "exits by device" in line:
            inside, groups = True, {}
            inner = line[line.find("(") + 1 : line.find(" s)")]
            seconds = float(inner) if inner.replace(".", "", 1).isdigit() else None
            continue
        words = line.split()
        if not inside or not words:
            continue
        if words[0] == "total" or words[0].startswith("busiest"):
            inside = False
        elif len(words) >= 2 and words[-1].isdigit():
            groups[" ".join(words[:-1])] = int(words[-1])
    return groups, seconds


def config_exits(groups: dict[str, int]) -> int | None:
    """Exits at PCI configuration space (conf1 ports, ECAM)."""
    if not groups:
        return None
    return sum(n for name, n in groups.items() if any(w in name.lower() for w in ("conf1", "ecam")))


def compare_functions(report: dict | None, plan_bdfs: list[str]) -> tuple[int, list[str]]:
    """(functions in the report, the plan's functions the guest did not see)."""
    if report is None:
        return 0, list(plan_bdfs)
    seen = {_short_bdf(p["bdf"]) for p in report.get("pci", [])}
    return len(report.get("pci", [])), [b for b in plan_bdfs if _short_bdf(b) not in seen]


def _short_bdf(bdf: str) -> str:
    # "0000:00:04.0" and "00:04.0" name the same function
    return bdf[5:] if bdf.count(":") == 2 else bdf


# -- the in-box side --------------------------------------------------------------------


def run_jobs_in_box(jobs_json: str) -> int:
    """The timing wrapper's jobs with two changes: each VMM runs under GNU time (and pcivm
    under timeout), so its VM belongs to a descendant of the process started (the debugfs
    lookup follows it), and the
    whole console is kept (the probe report is checked on the host)."""
    import os

    import bench._time_to_marker as wrapper

    plain = wrapper.find_vm_dir

    def find_vm_dir(pid: int, depth: int = 3):
        # GNU time -> (sh exec'd into) timeout -> the VMM: look down the process tree
        found = plain(pid)
        if found is not None or depth == 0:
            return found
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        for child in children:
            found = find_vm_dir(int(child), depth - 1)
            if found is not None:
                return found
        return None

    wrapper.find_vm_dir = find_vm_dir
    wrapper.TAIL_BYTES = REPORT_BYTES
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return wrapper.main([jobs_json])


# -- jobs and results -------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    name: str  # "pcivm-32", "qemu-256"
    vmm: str
    count: int
    argv: list[str]
    timeout: float
    env: dict | None = None

    def spec(self) -> dict:
        # pcivm is stopped with SIGTERM at its timeout, so that -d still prints its exits
        stop = ["timeout", "-s", "TERM", f"{self.timeout:g}"] if self.vmm == "pcivm" else []
        return {
            "name": self.name,
            "argv": [TIME, "-f", TIME_FORMAT, *RAISE_FD_LIMIT, *stop, *self.argv],
            "marker": MARKER,
            "timeout": self.timeout + 30,
            "env": self.env,
        }


def build_jobs(image, counts, timeout: float) -> list[Job]:
    from bench.boot import bytecode_env
    from pcivm.reference import GuestBoot, pcivm_argv, qemu_argv

    jobs = []
    for count in counts:
        topo = topology(count)
        for vmm in ("pcivm", "qemu"):
            boot = GuestBoot(
                kernel=image.kernel.bzimage,
                initrd=image.initrd,
                machine=MACHINE,
                devices=topo.devices(io_less=vmm == "pcivm"),
            )
            argv = [*pcivm_argv(boot), "-d"] if vmm == "pcivm" else qemu_argv(boot)
            # the guest's work grows with the device count; so does the console
            env = bytecode_env(True) if vmm == "pcivm" else None  # as bench/boot.py's
            # pcivm's config-space exits cost more with more devices (docs/performance.md)
            scale = 1 + count / (32 if vmm == "pcivm" else 64)
            jobs.append(Job(f"{vmm}-{count}", vmm, count, argv, timeout * scale, env))
    return jobs


def time_plans(counts, rounds: int) -> dict[int, dict]:
    """In-process plan times (median of `rounds` after one warm-up) and each plan."""
    from pcivm.options import parse_options
    from pcivm.plan_command import build_plan

    out = {}
    for count in counts:
        argv = plan_argv(topology(count).devices(io_less=True))
        build_plan(parse_options(argv))  # warm-up: imports, first-use caches
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            plan = build_plan(parse_options(argv))
            times.append(time.perf_counter() - started)
        document = plan.to_json()
        out[count] = {
            "times": times,
            "bdfs": [f["bdf"] for f in document["pci"]],
            "warnings": document.get("warnings") or [],
        }
    return out


def run_round(box, jobs: list[Job], budget: float) -> tuple[list[dict], str | None]:
    import io

    from pcivm.box.errors import BoxError

    out, err = io.BytesIO(), _Progress()
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--run-jobs",
        json.dumps([j.spec() for j in jobs]),
    ]
    problem = None
    try:
        status = box.run(argv, stdout=out, stderr=err, timeout=budget)
        if status != 0:
            problem = f"the timing wrapper ended with status {status}"
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
    """stderr for the box's output: the timing wrapper's progress lines, shown at once."""

    def write(self, data: bytes) -> int:
        sys.stderr.buffer.write(data)
        sys.stderr.buffer.flush()
        return len(data)

    def flush(self) -> None:
        sys.stderr.buffer.flush()


@dataclass
class Boot:
    """One boot's figures, from the wrapper's result."""

    name: str
    ok: bool
    marker_s: float | None
    exits_d: int | None  # pcivm -d total
    config_exits: int | None
    kvm_exits: int | None
    vmm_exits: int | None  # io + mmio exits KVM passed to the VMM
    maxrss: int | None
    console_bytes: int
    functions: int
    missing: list[str]
    uptime: float | None  # the guest's clock when it made its report
    vmm_s: float | None = None  # how long the VMM had run when -d printed its exits
    why: str = ""


def digest(result: dict, plan_bdfs: list[str]) -> Boot:
    from pcivm.guest.probe import ProbeReportError, parse_probe_report, tail

    stderr = result.get("stderr") or ""
    console = result.get("stdout_tail") or ""
    report = None
    why = ""
    if result["timed_out"]:
        why = "timed out"
    elif result["marker_s"] is None:
        why = f"status {result['status']}, no probe report"
    if not why:
        try:
            report = parse_probe_report(console)
        except ProbeReportError as exc:
            why = f"report unreadable: {exc}"
    functions, missing = compare_functions(report, plan_bdfs)
    groups, vmm_s = parse_exit_groups(stderr)
    config = config_exits(groups)
    if why and vmm_s and config:
        why += (
            f"; stopped after {vmm_s:.0f} s of the VMM with {config:,} config-space exits "
            f"handled ({config / vmm_s:.0f} a second over its whole run)"
        )
    if why:
        errors = [ln for ln in stderr.splitlines() if "qemu-system" in ln or "error" in ln.lower()]
        last = (errors and errors[-1]) or tail(console, 3).strip() or stderr.strip()[-300:]
        why = f"{why}; console/stderr ends: {' | '.join(last.splitlines()[-3:])[:300]}"
    kvm = result.get("kvm") or None
    return Boot(
        name=result["name"],
        ok=not why,
        marker_s=result["marker_s"],
        exits_d=parse_pcivm_exit_total(stderr),
        config_exits=config,
        kvm_exits=(kvm or {}).get("exits"),
        vmm_exits=vmm_exits(kvm),
        maxrss=parse_maxrss(stderr),
        console_bytes=result.get("stdout_bytes") or 0,
        functions=functions,
        missing=missing,
        uptime=(report or {}).get("uptime"),
        vmm_s=vmm_s,
        why=why,
    )


def qemu_failure(box, job: Job, result: dict, boot: Boot) -> str:
    """Why QEMU did not boot: its own error when it stopped at start, else SeaBIOS's."""
    errors = [ln.strip() for ln in (result.get("stderr") or "").splitlines() if "qemu" in ln]
    if errors and not result.get("stdout_bytes"):
        return f"QEMU stops before the guest runs (status {result['status']}): {errors[-1]}"[:300]
    progress(f"{job.name} did not boot: asking SeaBIOS why")
    return f"{boot.why.split(';')[0]}; SeaBIOS: {firmware_diagnosis(box, job)}"


def firmware_diagnosis(box, job: Job) -> str:
    """Boot `job` once more with SeaBIOS's debug console on, and quote its last words."""
    from pcivm.box.errors import BoxError

    argv = [
        *job.argv,
        "-chardev",
        f"file,id=fwlog,path={FIRMWARE_LOG}",
        "-device",
        "isa-debugcon,iobase=0x402,chardev=fwlog",
    ]
    try:
        box.run_capture(["rm", "-f", FIRMWARE_LOG], timeout=30)
        box.run_capture(["timeout", "-s", "KILL", "60", *RAISE_FD_LIMIT, *argv], timeout=120)
        _, out, _ = box.run_capture(["tail", "-c", "4000", FIRMWARE_LOG], timeout=30)
    except BoxError as exc:
        return f"(no firmware log: {exc})"
    lines = [ln.strip() for ln in out.decode(errors="replace").splitlines() if ln.strip()]
    telling = [ln for ln in lines if "panic" in ln.lower() or "out of" in ln.lower()]
    return "; ".join((telling or lines[-2:])[-2:])[:300] or "(the firmware log is empty)"


# -- report -----------------------------------------------------------------------------


@dataclass
class Figures:
    count: int
    plan_s: float | None = None
    plan_functions: int = 0
    plan_warnings: list[str] = field(default_factory=list)
    boots: dict[str, list[Boot]] = field(default_factory=dict)  # vmm -> boots
    qemu_failure: str = ""

    def ok(self, vmm: str) -> list[Boot]:
        return [b for b in self.boots.get(vmm, []) if b.ok]

    def med(self, vmm: str, key: str) -> float | None:
        return median(getattr(b, key) for b in self.ok(vmm))


def format_mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / (1 << 20):.0f} MiB"


def format_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1e3:.1f} ms"


def report(figures: list[Figures], command: str, topo_notes: list[str]) -> str:
    base = figures[0]

    def rel(f: Figures, vmm: str, key: str) -> str:
        return format_ratio(ratio(f.med(vmm, key), base.med(vmm, key)))

    rows = []
    for f in figures:
        pc = f.boots.get("pcivm", [])
        seen = median(b.functions for b in f.ok("pcivm"))
        rows.append(
            [
                str(f.count),
                format_ms(f.plan_s),
                format_ratio(ratio(f.plan_s, base.plan_s)),
                f"{len(f.ok('pcivm'))}/{len(pc)}",
                format_seconds(f.med("pcivm", "marker_s")),
                rel(f, "pcivm", "marker_s"),
                format_seconds(f.med("pcivm", "uptime")),
                format_count(f.med("pcivm", "exits_d")),
                rel(f, "pcivm", "exits_d"),
                format_count(f.med("pcivm", "config_exits")),
                format_count(f.med("pcivm", "kvm_exits")),
                format_mib(f.med("pcivm", "maxrss")),
                rel(f, "pcivm", "maxrss"),
                format_count(f.med("pcivm", "console_bytes")),
                f"{format_count(seen)}/{f.plan_functions}",
            ]
        )
    pcivm_table = render_table(
        [
            "devices",
            "plan",
            "/1",
            "ok",
            "pcivm boot",
            "/1",
            "guest up",
            "exits (-d)",
            "/1",
            "config",
            "KVM exits",
            "peak RSS",
            "/1",
            "console B",
            "functions seen/plan",
        ],
        rows,
    )
    qrows = []
    qemu_notes: list[str] = []
    for f in figures:
        q = f.boots.get("qemu", [])
        if not f.ok("qemu"):
            reason = f.qemu_failure or (q[0].why if q else "not run")
            qemu_notes.append(f"QEMU with {f.count} devices does not boot: {reason}")
            note = f"see note {len(qemu_notes)}"
            qrows.append([str(f.count), f"0/{len(q)}", "does not boot", "", "", "", "", "", note])
            continue
        qrows.append(
            [
                str(f.count),
                f"{len(f.ok('qemu'))}/{len(q)}",
                format_seconds(f.med("qemu", "marker_s")),
                rel(f, "qemu", "marker_s"),
                format_seconds(f.med("qemu", "uptime")),
                format_mib(f.med("qemu", "maxrss")),
                format_ratio(ratio(f.med("pcivm", "marker_s"), f.med("qemu", "marker_s"))),
                format_ratio(ratio(f.med("pcivm", "maxrss"), f.med("qemu", "maxrss"))),
                "",
            ]
        )
    qemu_table = render_table(
        [
            "devices",
            "ok",
            "QEMU boot",
            "/1",
            "guest up",
            "peak RSS",
            "pcivm/QEMU time",
            "pcivm/QEMU RSS",
            "note",
        ],
        qrows,
    )
    lines = [
        f"Topology: {command}",
        "Medians over the rounds; /1: ratio to the 1-device topology. plan: parse_options +",
        "build_plan on the host; boot: process start to the probe report's end marker in the box;",
        "guest up: the guest's uptime when it began the report (boot without the VMM's start",
        "and the report's printing); exits (-d): pcivm's own count, config: those at PCI",
        "config space (conf1); peak RSS: GNU time's maximum resident set of the VMM process;",
        "console B: serial bytes the guest wrote (each costs an exit); functions: PCI functions",
        "in the guest's report / the plan. Every VMM runs with a limit of 65536 open files.",
        "",
        *topo_notes,
        "",
        pcivm_table,
        "",
        qemu_table,
        *(f"note {i}: {text}" for i, text in enumerate(qemu_notes, 1)),
    ]
    for f in figures:
        for b in f.boots.get("pcivm", []):
            if b.ok and b.missing:
                lines.append(
                    f"{b.name}: the guest did not see {len(b.missing)} planned "
                    f"functions: {', '.join(b.missing[:8])}"
                )
            elif not b.ok:
                lines.append(f"{b.name}: failed: {b.why}")
        if f.plan_warnings:
            lines.append(f"plan of {f.count}: {'; '.join(f.plan_warnings)[:300]}")
    return "\n".join(lines)


# -- command line -----------------------------------------------------------------------


def parse_args(argv: list[str]):
    parser = ArgumentParser(
        prog="topology.py",
        description="Plan time, boot time to the probe report, exits and peak RSS with 1, 32 "
        "and 256 pci-testdev functions on -M pc (pci-bridges beyond 30), pcivm and QEMU in "
        "one box, alternating. About 3 min a round.",
    )
    parser.add_argument("--rounds", type=positive_int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=60.0,
        help="seconds per boot of one device; larger topologies get more (default 60)",
    )
    parser.add_argument(
        "--counts",
        type=_counts,
        default=COUNTS,
        metavar="N,N,...",
        help="device counts (default 1,32,256; the first is the base of the ratios)",
    )
    parser.add_argument(
        "--big-rounds",
        type=positive_int,
        default=1,
        metavar="N",
        help=f"boot topologies of more than {BIG} devices in the first N rounds only (default 1:"
        " under pcivm the 256-device boot alone takes minutes)",
    )
    parser.add_argument("--no-qemu", action="store_true", help="boot pcivm only")
    parser.add_argument(
        "--box", choices=("auto", "tcg", "direct"), default="auto", help="where to run"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every result here")
    parser.add_argument("--run-jobs", help=argparse.SUPPRESS)  # the in-box side
    return parser.parse_args(argv)


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(positive_int(word) for word in text.split(","))
        for count in counts:
            topology(count)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"bad device counts {text!r}: {exc}") from None
    return counts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.run_jobs is not None:
        return run_jobs_in_box(args.run_jobs)
    from bench.boot import ensure_qemu, warm_bytecode_cache
    from pcivm.errors import PcivmError
    from pcivm.guest.image import ensure_image

    command = " ".join(["python bench/topology.py", *argv])
    figures = {c: Figures(c) for c in args.counts}
    try:
        image = ensure_image()
        if not args.no_qemu:
            ensure_qemu()
        warm_bytecode_cache()
        progress("timing plans")
        plans = time_plans(args.counts, max(args.rounds, 5))
        for count, plan in plans.items():
            figures[count].plan_s = median(plan["times"])
            figures[count].plan_functions = len(plan["bdfs"])
            figures[count].plan_warnings = plan["warnings"]
        jobs = build_jobs(image, args.counts, args.timeout)
        if args.no_qemu:
            jobs = [j for j in jobs if j.vmm == "pcivm"]
        raw: list[dict] = []
        failed_qemu: set[str] = set()
        progress("starting the box")
        with open_bench_box(args.box) as box:
            progress(f"box: {box.description}")
            for index in range(args.rounds):
                todo = [
                    j
                    for j in jobs
                    if j.name not in failed_qemu and (j.count <= BIG or index < args.big_rounds)
                ]
                todo = rotate(todo, index)
                progress(f"round {index + 1}/{args.rounds}")
                budget = sum(j.timeout for j in todo) + 120
                results, problem = run_round(box, todo, budget)
                raw += results
                for r in results:
                    job = next(j for j in jobs if j.name == r["name"])
                    boot = digest(r, plans[job.count]["bdfs"])
                    figures[job.count].boots.setdefault(job.vmm, []).append(boot)
                    if job.vmm == "qemu" and not boot.ok and job.name not in failed_qemu:
                        # one failure is enough for QEMU (it is not tried again)
                        failed_qemu.add(job.name)
                        figures[job.count].qemu_failure = qemu_failure(box, job, r, boot)
                if args.json:
                    args.json.write_text(json.dumps({"rounds": raw}, indent=1))
                if problem:
                    progress(f"topology.py: round {index + 1} stopped early ({problem})")
                    break
    except PcivmError as exc:
        print(f"topology.py: {exc}", file=sys.stderr)
        return 1
    notes = []
    for count in args.counts:
        t = topology(count)
        notes.append(
            f"{count} devices: {t.bridges} pci-bridge(s) x {PER_BRIDGE} + {t.root_devices} on "
            f"the root bus; under pcivm {t.io_less_devices} of them memory-only (bar1=none)"
        )
    print()
    print(report([figures[c] for c in args.counts], command, notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
