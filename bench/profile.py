"""Where a running pcivm's threads spend their time: py-spy samples of the VMM while its
guest reads its disk as bench/blk.py's sequential test does.

In the box, pcivm boots the guest image with bench/blk.py's 1 GiB raw image (copied into
the box's tmpfs, attached read-only) and the guest command

    while true; do dd if=/dev/vda of=/dev/null bs=1M count=1024 iflag=direct; done

After `--wait` seconds (the boot) py-spy records the VMM for `--seconds`, without
stopping it to sample (`--nonblocking`), and the VMM is stopped. Printed: every thread's
share of the samples, then for the busiest thread the functions it was in (the innermost
frame: where the time went) and the functions on its stack (inclusive shares).

py-spy counts a thread's sample whenever the thread is not sleeping: time in a system
call (a read's copy, an eventfd write) counts, and so does time runnable while another
thread has the CPU. Sampling costs the box CPU too: compare shares, not times, and keep
the rate low (py-spy says when it falls behind).

    python bench/profile.py                       # needs py-spy: .venv/bin/pip install py-spy
    python bench/profile.py --rate 50 --seconds 20 --raw /tmp/spy.txt
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

if not __package__:  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    ArgumentParser,
    open_bench_box,
    positive_float,
    positive_int,
    progress,
)

GUEST_COMMAND = "while true; do dd if=/dev/vda of=/dev/null bs=1M count=1024 iflag=direct; done"


# -- the summary (pure) -------------------------------------------------------------------


def parse_raw(raw: str) -> list[tuple[list[str], int]]:
    """py-spy's raw format, one stack a line: "thread (tid): name;frame;...;frame count"."""
    stacks = []
    for line in raw.splitlines():
        line = line.strip()
        if not line or " " not in line:
            continue
        stack, count = line.rsplit(" ", 1)
        if count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def function_of(frame: str) -> str:
    """A frame without its line number: "f (path/file.py:12)" -> "f (path/file.py)"."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def summarize(raw: str, top: int = 25) -> str:
    stacks = parse_raw(raw)
    if not stacks:
        return "no samples"
    threads: Counter[str] = Counter()
    for frames, count in stacks:
        threads[frames[0]] += count
    total = sum(threads.values())
    lines = [f"{total:,} samples; by thread:"]
    lines += [f"  {n:7,} {100 * n / total:5.1f}%  {name}" for name, n in threads.most_common()]
    busiest, busy_total = threads.most_common(1)[0]
    innermost: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        if frames[0] != busiest or len(frames) < 2:
            continue
        innermost[function_of(frames[-1])] += count
        for function in {function_of(frame) for frame in frames[1:]}:
            inclusive[function] += count
    for title, counts in (("innermost frame", innermost), ("on the stack", inclusive)):
        lines.append(f"{busiest}, {title} (share of its {busy_total:,} samples):")
        lines += [
            f"  {n:7,} {100 * n / busy_total:5.1f}%  {name}" for name, n in counts.most_common(top)
        ]
    return "\n".join(lines)


# -- in the box ------------------------------------------------------------------------------


def profile_in_box(spec: dict) -> int:
    """Boot pcivm, sample it, print py-spy's raw output."""
    from bench.blk import drive_arg
    from pcivm.reference import GuestBoot, pcivm_argv

    boot = GuestBoot(
        kernel=Path(spec["kernel"]),
        initrd=Path(spec["initrd"]),
        probe=False,
        run=GUEST_COMMAND,
        extra_args=["-drive", drive_arg(Path(spec["disk"]))],
    )
    output = Path(spec["disk"]).with_suffix(".spy")
    # The VMM's messages go to a file: a pipe nobody reads would stop it once full.
    log = Path(spec["disk"]).with_suffix(".log")
    with log.open("wb") as stderr:
        vmm = subprocess.Popen(pcivm_argv(boot), stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        time.sleep(spec["wait"])
        if vmm.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            message = f"profile.py: pcivm exited ({vmm.returncode}) before sampling: {tail}"
            print(message, file=sys.stderr)
            return 1
        record = [
            spec["py_spy"], "record", "--pid", str(vmm.pid), "--nonblocking", "--threads",
            "--rate", str(spec["rate"]), "--duration", str(spec["seconds"]),
            "--format", "raw", "--output", str(output),
        ]  # fmt: skip
        done = subprocess.run(record, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if done.returncode or not output.exists():
            why = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
            print(f"profile.py: py-spy failed: {why}", file=sys.stderr)
            return 1
        sys.stdout.write(output.read_text())
        return 0
    finally:
        vmm.kill()
        vmm.wait()
        output.unlink(missing_ok=True)
        log.unlink(missing_ok=True)


# -- the host side ---------------------------------------------------------------------------


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"  # installed into this venv
    return str(beside) if beside.exists() else shutil.which("py-spy")


def parse_args(argv: list[str]):
    parser = ArgumentParser(prog="profile.py", description=__doc__.splitlines()[0])
    parser.add_argument("--wait", type=positive_float, default=40.0, help="boot time, s")
    parser.add_argument("--seconds", type=positive_int, default=15, help="sampling time, s")
    parser.add_argument("--rate", type=positive_int, default=50, help="samples a second")
    parser.add_argument("--top", type=positive_int, default=25, help="functions listed")
    parser.add_argument("--raw", type=Path, metavar="PATH", help="also keep py-spy's output")
    parser.add_argument(
        "--box", choices=("auto", "tcg", "direct"), default="auto", help="where to run"
    )
    parser.add_argument("--in-box", help=argparse.SUPPRESS)  # the in-box side
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.in_box is not None:
        return profile_in_box(json.loads(args.in_box))
    py_spy = find_py_spy()
    if py_spy is None:
        print("profile.py: needs py-spy (.venv/bin/pip install py-spy)", file=sys.stderr)
        return 1
    from bench.blk import ensure_disk_image, image_in_ram, remove_quietly
    from pcivm.box.errors import BoxError
    from pcivm.errors import PcivmError
    from pcivm.guest.image import ensure_image

    try:
        image = ensure_image()
        disk = ensure_disk_image(1024)
        progress("starting the box")
        with open_bench_box(args.box) as box:
            ram_image = image_in_ram(box, disk)
            try:
                spec = {
                    "kernel": str(image.kernel.bzimage), "initrd": str(image.initrd),
                    "disk": str(ram_image), "wait": args.wait, "seconds": args.seconds,
                    "rate": args.rate, "py_spy": py_spy,
                }  # fmt: skip
                progress(f"booting pcivm, sampling it for {args.seconds} s")
                command = [sys.executable, str(Path(__file__).resolve()), "--in-box"]
                status, out, err = box.run_capture(
                    [*command, json.dumps(spec)],
                    env=dict(os.environ, PYTHONUNBUFFERED="1"),
                    timeout=args.wait + args.seconds + 300,
                )
            finally:
                remove_quietly(box, ram_image)
    except (PcivmError, BoxError) as exc:
        print(f"profile.py: {exc}", file=sys.stderr)
        return 1
    if status:
        message = err.decode(errors="replace").strip()
        print(message or f"profile.py: the in-box side failed ({status})", file=sys.stderr)
        return 1
    raw = out.decode(errors="replace")
    if args.raw:
        args.raw.write_text(raw)
    print(summarize(raw, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
