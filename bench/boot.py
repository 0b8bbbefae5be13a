"""Boot time: from process start to the guest's probe report, pcivm against QEMU.

Every configuration boots the same guest image (kernel, initramfs and kernel command line
`console=ttyS0 quiet pcivm.probe=1`) to the end marker of its probe report:

  qemu-pc         QEMU -enable-kvm -M pc, the reference runner's command line (SeaBIOS)
  qemu-microvm    QEMU -M microvm (qboot firmware, no PCI), when it boots this kernel
  pcivm-bzImage   pcivm with the same options and the compressed kernel
  pcivm-vmlinux   pcivm with the ELF vmlinux (no decompression in the guest)

and two Python processes show what pcivm's start costs in the box:

  python-start    python -c pass
  pcivm-import    python -c 'import pcivm.vmm'

All run in one box, in rotating order, round after round; a small wrapper inside the box
starts each process, timestamps the marker line on its console and samples KVM's debugfs
counters of its VM. With --exit-cost-rounds (default 1) the first rounds also boot pcivm
and QEMU with a verbose console (`loglevel=7`): the extra time over the extra exits that
reached the VMM is the cost of one exit.

The machines are shared and noisy: compare the ratios of one run, not absolute times.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

if not __package__:  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    ArgumentParser,
    format_count,
    format_micros,
    format_ratio,
    format_seconds,
    median,
    non_negative_int,
    open_bench_box,
    parse_pcivm_exit_total,
    per_round,
    positive_float,
    positive_int,
    progress,
    ratio,
    render_table,
    rotate,
    slope,
    vmm_exits,
)

WRAPPER = Path(__file__).resolve().parent / "_time_to_marker.py"
MARKER = "===PCIVM-PROBE-END==="
MICROVM = "microvm,x-option-roms=off,isa-serial=on,rtc=on"
VERBOSE = ("loglevel=7",)
TARGET_RATIO = 0.5  # the goal: pcivm boots in at most half the time of QEMU -M pc
# A configuration that timed out this often is not tried again in later rounds.
MAX_TIMEOUTS = 2

BASELINE = "qemu-pc"
MICROVM_NAME = "qemu-microvm"
PCIVM_NAMES = ("pcivm-bzImage", "pcivm-vmlinux")
PCIVM_VERBOSE = "pcivm-verbose"
QEMU_VERBOSE = "qemu-pc-verbose"
PY_START = "python-start"
PY_IMPORT = "pcivm-import"
PY_IMPORT_SOURCE = "pcivm-import-nocache"
IMPORT = "import pcivm.vmm"


@dataclass(frozen=True)
class Config:
    name: str
    argv: list[str]
    label: str
    timeout: float
    marker: str | None = MARKER  # None: timed to the process's end
    env: dict | None = None  # variables to set (None: unset) for this process

    def job(self) -> dict:
        return {
            "name": self.name,
            "argv": self.argv,
            "marker": self.marker,
            "timeout": self.timeout,
            "env": self.env,
        }


def pycache_dir() -> Path:
    from pcivm.guest.cache import cache_dir

    return cache_dir() / "bench-pycache"


def bytecode_env(cached: bool) -> dict:
    """Python's bytecode settings for pcivm's processes.

    cached: compiled modules are read from (and written to) a cache of the benchmark's own,
    as an installed pcivm reads those its installation compiled. Otherwise nothing is
    written and, where no __pycache__ lies beside the sources, every start compiles them.
    """
    if cached:
        return {"PYTHONDONTWRITEBYTECODE": None, "PYTHONPYCACHEPREFIX": str(pycache_dir())}
    return {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": None}


def with_env(changes: dict) -> dict:
    env = dict(os.environ)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def warm_bytecode_cache() -> None:
    """Fill the bytecode cache with what a VM run imports (here, where Python is fast)."""
    env = with_env(bytecode_env(True))
    for argv in (
        [sys.executable, "-m", "pcivm", "--version"],
        [sys.executable, "-c", "import pcivm.vmm, pcivm.run, pcivm.options, pcivm.cli"],
    ):
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=False)


def build_configs(image, timeout: float, microvm: bool) -> tuple[list[Config], list[Config]]:
    """(the configurations of every round, the extras of the first --extra-rounds rounds)"""
    from pcivm.reference import GuestBoot, pcivm_argv, qemu_argv

    bz = GuestBoot(kernel=image.kernel.bzimage, initrd=image.initrd)
    elf = replace(bz, kernel=image.vmlinux)
    loud = replace(bz, append=VERBOSE)
    py = sys.executable
    cached = bytecode_env(True)
    configs = [
        Config(BASELINE, qemu_argv(bz), "QEMU -M pc", timeout),
        Config("pcivm-bzImage", [*pcivm_argv(bz), "-d"], "pcivm bzImage", timeout, env=cached),
        Config("pcivm-vmlinux", [*pcivm_argv(elf), "-d"], "pcivm vmlinux", timeout, env=cached),
        Config(PY_START, [py, "-c", "pass"], "python -c pass", timeout, None, cached),
        Config(PY_IMPORT, [py, "-c", IMPORT], f"python -c '{IMPORT}'", timeout, None, cached),
    ]
    if microvm:
        config = Config(
            MICROVM_NAME, qemu_argv(replace(bz, machine=MICROVM)), "QEMU -M microvm", timeout
        )
        configs.insert(1, config)
    extras = [
        Config(
            PCIVM_VERBOSE,
            [*pcivm_argv(loud), "-d"],
            "pcivm bzImage, loglevel=7",
            2 * timeout,
            env=cached,
        ),
        Config(QEMU_VERBOSE, qemu_argv(loud), "QEMU -M pc, loglevel=7", 3 * timeout),
        Config(
            PY_IMPORT_SOURCE,
            [py, "-c", IMPORT],
            f"python -c '{IMPORT}', no bytecode cache",
            timeout,
            None,
            bytecode_env(False),
        ),
    ]
    return configs, extras


# -- running ----------------------------------------------------------------------------


def ensure_qemu() -> None:
    from pcivm.reference import QEMU

    if shutil.which(QEMU):
        return
    progress(f"{QEMU} is missing: installing Debian's qemu-system-x86")
    done = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "qemu-system-x86"],
        stdout=subprocess.DEVNULL,
        check=False,
    )
    if done.returncode != 0 or not shutil.which(QEMU):
        raise SystemExit(f"boot.py: {QEMU} is not installed (apt-get install qemu-system-x86)")


class _Flushing:
    """stderr for the box's output: each write shown at once (progress lines)."""

    def write(self, data: bytes) -> int:
        sys.stderr.buffer.write(data)
        sys.stderr.buffer.flush()
        return len(data)

    def flush(self) -> None:
        sys.stderr.buffer.flush()


def run_round(box, jobs: list[dict]) -> tuple[list[dict], str | None]:
    """The results of the jobs that ended, and why the others did not (None: all ended)."""
    import io

    from pcivm.box.errors import BoxError

    out = io.BytesIO()
    budget = sum(job["timeout"] for job in jobs) + 120
    problem = None
    try:
        status = box.run(
            [sys.executable, str(WRAPPER), json.dumps(jobs)],
            stdout=out,
            stderr=_Flushing(),
            timeout=budget,
        )
        if status != 0:
            problem = f"the timing wrapper ended with status {status}"
    except BoxError as exc:
        problem = f"the box failed: {exc}"
    results = []
    for line in out.getvalue().decode(errors="replace").splitlines():
        try:
            results.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a box that died
    return results, problem


def succeeded(result: dict, config: Config) -> bool:
    if result["timed_out"]:
        return False
    if config.marker is None:
        return result["status"] == 0
    return result["marker_s"] is not None


def elapsed(result: dict) -> float | None:
    return result["marker_s"] if result["marker_s"] is not None else result["end_s"]


# -- summary ----------------------------------------------------------------------------


def _span(start: str, end: str):
    def span(r: dict) -> float | None:
        if r[start] is None or r[end] is None:
            return None
        return r[end] - r[start]

    return span


vm_created = _span("zero_s", "vm_seen_s")  # process start to KVM_CREATE_VM (+ a poll)
setup = _span("vm_seen_s", "first_exit_s")  # VM created to the guest's first exit
guest_run = _span("first_exit_s", "marker_s")  # the guest's first exit to the marker
vm_to_marker = _span("vm_seen_s", "marker_s")


def _stat(name: str):
    return lambda r: (r["kvm"] or {}).get(name)


def _to_vmm(r: dict) -> int | None:
    return vmm_exits(r["kvm"])


def _pcivm_total(r: dict) -> int | None:
    return parse_pcivm_exit_total(r["stderr"])


@dataclass
class Summary:
    config: Config
    results: list[dict]  # every attempt
    ok: list[dict]  # those that reached the marker (or exited 0)

    def med(self, key) -> float | None:
        return median(key(r) for r in self.ok)

    @property
    def time(self) -> float | None:
        return self.med(elapsed)


def summarize(configs: list[Config], results: list[dict]) -> dict[str, Summary]:
    summaries = {}
    for config in configs:
        mine = [{"zero_s": 0.0, **r} for r in results if r["name"] == config.name]
        if mine:
            ok = [r for r in mine if succeeded(r, config)]
            summaries[config.name] = Summary(config, mine, ok)
    return summaries


def paired_ratios(results_by_round: list[list[dict]], name: str, base: str) -> list[float]:
    """name/base within each round where both reached the marker."""
    ratios = []
    for results in results_by_round:
        times = {r["name"]: r["marker_s"] for r in results if not r["timed_out"]}
        value = ratio(times.get(name), times.get(base))
        if value is not None:
            ratios.append(value)
    return ratios


def round_pairs(results_by_round: list[list[dict]], first: Config, second: Config):
    """(first's result, second's result) of each round where both succeeded: on a noisy
    machine, what ran in the same round is what compares."""
    for results in results_by_round:
        a = [r for r in results if r["name"] == first.name and succeeded(r, first)]
        b = [r for r in results if r["name"] == second.name and succeeded(r, second)]
        if a and b:
            yield {"zero_s": 0.0, **a[0]}, {"zero_s": 0.0, **b[0]}


def marginal_cost(results_by_round, quiet: Summary | None, loud: Summary | None, count):
    """Seconds of guest run (first exit to marker) per unit of `count` between the quiet
    and the verbose boot of the same round (the median over such rounds)."""
    if quiet is None or loud is None:
        return None
    slopes = []
    for a, b in round_pairs(results_by_round, quiet.config, loud.config):
        points = [(count(r), guest_run(r)) for r in (a, b)]
        if all(x is not None and y is not None for x, y in points):
            slopes.append(slope(points))
    return median(slopes)


def paired_difference(results_by_round, minuend: Summary | None, subtrahend: Summary | None):
    """The median over rounds of minuend's time minus subtrahend's in the same round."""
    if minuend is None or subtrahend is None:
        return None
    pairs = round_pairs(results_by_round, minuend.config, subtrahend.config)
    return median(elapsed(a) - elapsed(b) for a, b in pairs)


def _console_bytes(r: dict) -> int | None:
    return r.get("stdout_bytes")


def report(s: dict[str, Summary], results_by_round: list[list[dict]], command: str) -> dict:
    base = s.get(BASELINE)
    micro = s.get(MICROVM_NAME)
    base_time = base.time if base else None
    micro_time = micro.time if micro else None
    base_vm_to_marker = base.med(vm_to_marker) if base else None
    boots = [m for m in s.values() if m.config.marker is not None]

    time_rows = []
    for m in boots:
        paired = paired_ratios(results_by_round, m.config.name, BASELINE)
        time_rows.append(
            [
                m.config.label,
                f"{len(m.ok)}/{len(m.results)}",
                format_ratio(ratio(m.time, base_time)),
                per_round(paired) if m.config.name != BASELINE else "",
                format_ratio(ratio(m.time, micro_time)),
                format_seconds(m.time),
                format_seconds(m.med(vm_created)),
                format_seconds(m.med(setup)),
                format_seconds(m.med(guest_run)),
                format_ratio(ratio(m.med(vm_to_marker), base_vm_to_marker)),
            ]
        )
    times = render_table(
        [
            "configuration",
            "ok",
            "/QEMU pc",
            "per round",
            "/microvm",
            "to marker",
            "VM created",
            "setup",
            "guest run",
            "VM->marker /QEMU pc",
        ],
        time_rows,
    )

    exit_rows = []
    for m in boots:
        is_pcivm = m.config.name.startswith("pcivm")
        exit_rows.append(
            [
                m.config.label,
                format_count(m.med(_stat("exits"))),
                format_count(m.med(_to_vmm)),
                format_count(m.med(_stat("io_exits"))),
                format_count(m.med(_stat("mmio_exits"))),
                format_count(m.med(_stat("irq_exits"))),
                format_count(m.med(_stat("insn_emulation"))),
                format_count(m.med(_stat("pf_taken"))),
                format_count(m.med(_stat("pages_2m"))),
                format_count(m.med(_pcivm_total)) if is_pcivm else "",
                format_count(m.med(_console_bytes)),
            ]
        )
    exits = render_table(
        [
            "configuration",
            "KVM exits",
            "to VMM",
            "io",
            "mmio",
            "irq",
            "emulated",
            "NPF",
            "2M pages",
            "pcivm -d",
            "console B",
        ],
        exit_rows,
    )

    def time_of(name: str) -> float | None:
        return s[name].time if name in s else None

    py_time = time_of(PY_START)
    imports = paired_difference(results_by_round, s.get(PY_IMPORT), s.get(PY_START))
    no_cache = paired_difference(results_by_round, s.get(PY_IMPORT_SOURCE), s.get(PY_IMPORT))
    quiet, loud_pcivm, loud_qemu = s.get("pcivm-bzImage"), s.get(PCIVM_VERBOSE), s.get(QEMU_VERBOSE)
    per_exit = {
        "pcivm": marginal_cost(results_by_round, quiet, loud_pcivm, _to_vmm),
        "qemu": marginal_cost(results_by_round, base, loud_qemu, _to_vmm),
    }
    per_byte = {
        "pcivm": marginal_cost(results_by_round, quiet, loud_pcivm, _console_bytes),
        "qemu": marginal_cost(results_by_round, base, loud_qemu, _console_bytes),
    }
    lines = [
        f"Boot to the probe report's end marker: {command}",
        "Medians over the rounds; 'per round': the ratio within each round, median (min..max).",
        "VM created: process start to its VM's debugfs directory (KVM_CREATE_VM); setup: to the",
        "guest's first exit; guest run: first exit to the marker (QEMU -M pc: firmware too).",
        "",
        times,
        "",
        "KVM's counters of the VM (last sample before it went; medians); NPF: nested page faults",
        "KVM handled; to VMM: io + mmio exits, those the VMM process handled.",
        "",
        exits,
        "",
        "Python in the box (differences within a round, medians):\n"
        f"  python -c pass {format_seconds(py_time)};"
        f" '{IMPORT}' adds {format_seconds(imports)}"
        + (
            f", {format_seconds(no_cache)} more without a bytecode cache."
            if no_cache is not None
            else "."
        ),
        "Marginal cost (verbose vs quiet console: guest run over exits to the VMM, bytes):\n"
        f"  pcivm {format_micros(per_exit['pcivm'])} per exit, "
        f"{format_micros(per_byte['pcivm'])} per console byte; "
        f"QEMU {format_micros(per_exit['qemu'])} per exit, "
        f"{format_micros(per_byte['qemu'])} per console byte.",
    ]
    for name in PCIVM_NAMES:
        m = s.get(name)
        if m is None or not m.ok:
            continue
        r = ratio(m.time, base_time)
        verdict = "n/a" if r is None else ("met" if r <= TARGET_RATIO else "not met")
        exits_to_vmm = m.med(_to_vmm)
        in_exits = None
        if per_exit["pcivm"] is not None and exits_to_vmm is not None:
            in_exits = exits_to_vmm * per_exit["pcivm"]
        lines.append(
            f"{m.config.label} / QEMU -M pc: {format_ratio(r)} "
            f"(target <= {TARGET_RATIO:.2f}x: {verdict}); / QEMU -M microvm: "
            f"{format_ratio(ratio(m.time, micro_time))};\n  its {format_count(exits_to_vmm)} "
            f"exits to the VMM x marginal cost: {format_seconds(in_exits)}."
        )
    if micro is not None and not micro.ok:
        lines.append(
            f"QEMU -M microvm did not reach the marker in any of its {len(micro.results)} "
            "attempts: it does not boot this kernel reliably here; no microvm ratio."
        )
    elif micro is not None and len(micro.ok) < len(micro.results):
        lines.append(
            f"QEMU -M microvm reached the marker in {len(micro.ok)} of {len(micro.results)} "
            "attempts (medians over those that did)."
        )
    print("\n".join(lines))
    return {
        "command": command,
        "summary": {
            name: {
                "ok": len(m.ok),
                "attempts": len(m.results),
                "median_s": m.time,
                "ratio_to_qemu_pc": ratio(m.time, base_time),
            }
            for name, m in s.items()
        },
        "cost_per_exit_s": per_exit,
        "cost_per_console_byte_s": per_byte,
    }


def failures(s: dict[str, Summary]) -> list[str]:
    notes = []
    for m in s.values():
        for r in m.results:
            if r in m.ok:
                continue
            why = "timed out" if r["timed_out"] else f"status {r['status']}, no marker"
            if r["status"] is None:
                why += " and could not be killed"
            text = r["stderr"].strip() or r["stdout_tail"].strip()
            last = (text.splitlines() or [""])[-1]
            notes.append(f"  {m.config.label}: {why}: {last[:160]}")
    return notes


# -- command line -----------------------------------------------------------------------


def parse_args(argv: list[str]):
    parser = ArgumentParser(
        prog="boot.py",
        description="Boot time from process start to the probe report: pcivm against QEMU "
        "(-M pc and -M microvm), all in one box, alternating, several rounds. "
        "1-3 min a round depending on the load, plus 1-3 min for the extras.",
    )
    parser.add_argument("--rounds", type=positive_int, default=5, help="rounds (default 5)")
    parser.add_argument(
        "--timeout", type=positive_float, default=90.0, help="seconds per boot (default 90)"
    )
    parser.add_argument(
        "--extra-rounds",
        type=non_negative_int,
        default=1,
        metavar="N",
        help="rounds that also boot pcivm and QEMU with a verbose console (the cost of an "
        "exit) and import pcivm without a bytecode cache (default 1; 0: none)",
    )
    parser.add_argument("--no-microvm", action="store_true", help="leave QEMU -M microvm out")
    parser.add_argument(
        "--box",
        choices=("auto", "tcg", "direct"),
        default="auto",
        help="where to run: auto (the TCG box when the host's KVM cannot boot the guest)",
    )
    parser.add_argument(
        "--box-cache",
        choices=("auto", "none", "always"),
        default="auto",
        help="the box's virtiofs cache mode (default auto: files stay in the box's page cache "
        "between rounds, as on a host)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every result here")
    parser.add_argument(
        "--report",
        type=Path,
        metavar="PATH",
        help="print the report of results saved with --json instead of running",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    from pcivm.errors import PcivmError
    from pcivm.guest.image import ensure_image

    command = " ".join(["python bench/boot.py", *argv])
    if args.report:
        try:
            saved = json.loads(args.report.read_text())
        except (OSError, ValueError) as exc:
            print(f"boot.py: cannot read {args.report}: {exc}", file=sys.stderr)
            return 1
        configs, extras = build_configs(ensure_image(), args.timeout, True)
        rounds = saved["rounds"]
        summaries = summarize(configs + extras, [r for rs in rounds for r in rs])
        report(summaries, rounds, saved.get("command", command))
        return 0
    try:
        image = ensure_image()
        ensure_qemu()
        warm_bytecode_cache()
        configs, extras = build_configs(image, args.timeout, not args.no_microvm)
        results_by_round: list[list[dict]] = []
        timeouts: dict[str, int] = {}
        stopped = None
        progress("starting the box")
        with open_bench_box(args.box, args.box_cache) as box:
            progress(f"box: {box.description}")
            for index in range(args.rounds):
                todo = [c for c in configs if timeouts.get(c.name, 0) < MAX_TIMEOUTS]
                todo = rotate(todo, index)
                if index < args.extra_rounds:
                    todo += extras
                progress(f"round {index + 1}/{args.rounds}")
                results, problem = run_round(box, [c.job() for c in todo])
                for r in results:
                    if r["timed_out"]:
                        timeouts[r["name"]] = timeouts.get(r["name"], 0) + 1
                results_by_round.append(results)
                if args.json:
                    saved = {"command": command, "rounds": results_by_round}
                    args.json.write_text(json.dumps(saved, indent=1))
                if problem:
                    stopped = f"round {index + 1} stopped early ({problem})"
                    progress(f"boot.py: {stopped}; reporting the rounds so far")
                    break
    except PcivmError as exc:
        print(f"boot.py: {exc}", file=sys.stderr)
        return 1
    summaries = summarize(configs + extras, [r for rs in results_by_round for r in rs])
    print()
    summary = report(summaries, results_by_round, command)
    notes = failures(summaries)
    if stopped:
        print(f"\nNote: {stopped}.")
    if notes:
        print("\nFailed attempts:")
        print("\n".join(notes))
    if args.json:
        saved = {**summary, "rounds": results_by_round}
        args.json.write_text(json.dumps(saved, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
