"""virtio-blk's request path without KVM: what one read costs the device's own code.

The device (VirtioBlk over a raw image in /dev/shm, so every read is done at once on the
kick thread) is driven in process by the project's test driver. One chain is made once,
a 1 MiB read (`seq`: a Linux-shaped indirect table of 256 pages, header and status
byte) or a 4 KiB read (`rand`: three direct descriptors), then made available again and
kicked the way the kick thread is, over and over: what is timed is the device's walk,
checks, transfer and used ring, plus two ring stores of the driver's.

It prints the time per request (minimum and median of nine batches) and, with
`--instructions`, the user-space instructions per request as valgrind's cachegrind
counts them (the difference of a long and a short run): a figure that does not move
with the machine's load, which the time does on these shared hosts.

    .venv/bin/python bench/blk_path.py                         # this host
    pcivm box -- .venv/bin/python bench/blk_path.py            # the box's emulated CPU
    .venv/bin/python bench/blk_path.py --baseline ../older     # and another checkout's
    .venv/bin/python bench/blk_path.py --instructions          # needs valgrind
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
BATCHES = 9
KINDS = {"seq": 1 << 20, "rand": 4096}
IMAGE_BYTES = 64 << 20


def measure(kind: str, requests: int, image: str) -> dict:
    """Run in the process whose sys.path holds the pcivm under test."""
    import struct

    from pcivm.memory import GuestMemory, MiB
    from pcivm.virtio.blk import BlockBackend, VirtioBlk
    from pcivm.virtio.constants import VIRTIO_BLK_T_IN
    from pcivm.virtio.testing import DirectTransport, VirtioDriver

    size = KINDS[kind]
    memory = GuestMemory(64 * MiB)
    device = VirtioBlk(memory, BlockBackend(image, read_only=True, locking=False), workers=2)
    driver = VirtioDriver(DirectTransport(device), memory, data=(0x400000, 0x3000000))
    driver.init()
    queue = driver.queues[0]
    header = driver.buffer(struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, 8))
    data = driver.buffers.alloc(size, 4096)
    status = driver.buffer(1)
    table = driver.buffers.alloc(16 * 258, 16) if size > 4096 else None
    pages = [(data + at, 4096) for at in range(0, size, 4096)]
    head = queue.add([header], [*pages, status], indirect_table=table).head
    slot = queue.avail + 4  # avail ring entries, after flags and idx
    index = queue.avail_idx

    def run(count: int) -> None:
        nonlocal index
        for _ in range(count):
            memory.write_u16(slot + 2 * (index % queue.size), head)
            index = (index + 1) & 0xFFFF
            memory.write_u16(queue.avail + 2, index)
            device.notify(0, on_kick_thread=True)
        if memory.read(status[0], 1) != b"\0":
            raise RuntimeError("the read failed")

    run(10)
    times = []
    for _ in range(BATCHES):
        started = time.perf_counter()
        run(max(1, requests // BATCHES))
        times.append((time.perf_counter() - started) / max(1, requests // BATCHES))
    device.close()
    memory.close()
    return {"min_us": min(times) * 1e6, "median_us": statistics.median(times) * 1e6}


def child(src: Path, kind: str, requests: int, image: str, valgrind: bool = False) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(requests), image]
    if valgrind:
        argv = ["valgrind", "--tool=cachegrind", "--cache-sim=no",
                "--cachegrind-out-file=/dev/null", *argv]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(src))
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"blk_path.py: {src}: {done.stderr.strip().splitlines()[-1:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if valgrind:
        result["instructions"] = parse_cachegrind(done.stderr)
    return result


def parse_cachegrind(stderr: str) -> int:
    """The instruction count of cachegrind's summary line ("==pid== I   refs:  1,234")."""
    for line in reversed(stderr.splitlines()):
        words = line.split()
        if words[1:3] == ["I", "refs:"]:
            return int(words[-1].replace(",", ""))
    raise ValueError("no instruction count in valgrind's output")


def instructions(src: Path, kind: str, image: str) -> float:
    short, long = (20, 200) if kind == "seq" else (200, 2000)
    few = child(src, kind, short, image, valgrind=True)["instructions"]
    many = child(src, kind, long, image, valgrind=True)["instructions"]
    # Each child runs 10 requests, then `requests // BATCHES` nine times.
    return (many - few) / (BATCHES * (long // BATCHES - short // BATCHES))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternations (default 3)")
    parser.add_argument("--baseline", type=Path, help="another checkout, measured alongside")
    parser.add_argument("--instructions", action="store_true", help="count with valgrind")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, requests, image = args.child
        print(json.dumps(measure(kind, int(requests), image)))
        return 0
    checkouts = {"pcivm": SRC}
    if args.baseline:
        if not (args.baseline / "src" / "pcivm").is_dir():
            parser.error(f"{args.baseline} is not a checkout of pcivm (no src/pcivm)")
        checkouts["baseline"] = args.baseline.resolve() / "src"
    if args.instructions and not shutil.which("valgrind"):
        parser.error("--instructions needs valgrind (apt-get install valgrind)")
    image = f"/dev/shm/pcivm-blk-path-{os.getpid()}.img"
    with open(image, "wb") as f:
        f.truncate(IMAGE_BYTES)
    try:
        for round_index in range(args.rounds):
            for name, src in checkouts.items():
                seq = child(src, "seq", 900, image)
                rand = child(src, "rand", 18000, image)
                print(
                    f"round {round_index + 1} {name:8}  1 MiB read: min {seq['min_us']:8.1f} "
                    f"median {seq['median_us']:8.1f} us   4 KiB read: min {rand['min_us']:6.1f} "
                    f"median {rand['median_us']:6.1f} us",
                    flush=True,
                )
        if args.instructions:
            for name, src in checkouts.items():
                counts = {kind: instructions(src, kind, image) for kind in KINDS}
                print(
                    f"instructions {name:8}  1 MiB read: {counts['seq']:,.0f}   "
                    f"4 KiB read: {counts['rand']:,.0f}",
                    flush=True,
                )
    finally:
        os.unlink(image)
    return 0


if __name__ == "__main__":
    sys.exit(main())
