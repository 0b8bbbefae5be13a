"""How fast this machine copies a read's data: the kernel's copy, alone and cut in two.

A virtio-blk read from an image in RAM is, for the host kernel, one copy from the page
cache into guest RAM. Under TCG (the box) that copy is the kernel's `rep movsb`,
emulated byte by byte, and it is most of what a 1 MiB read costs either VMM. This
measures, from a file in /dev/shm into an anonymous mapping:

- `read`: one thread, `preadv` of 1 MiB at a time;
- `read x2`: two threads at once, 512 KiB each (the GIL is released in `preadv`), per
  1 MiB done: whether a second CPU shortens a read cut in two;
- `memcpy`: user space copying 1 MiB (vector moves), for comparison.

    .venv/bin/python bench/box_copy.py                 # this host
    pcivm box -- .venv/bin/python bench/box_copy.py    # the box's emulated CPUs
"""

from __future__ import annotations

import mmap
import os
import sys
import threading
import time
from pathlib import Path

if not __package__:  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ArgumentParser, measured_rounds, positive_int  # noqa: E402

MiB = 1 << 20


def timed_reads(fd: int, buffer: memoryview, part: int, count: int, start: int, file_mib: int):
    for i in range(count):
        os.preadv(fd, [buffer[start : start + part]], ((i % file_mib) << 20) + start)


def measure(count: int, file_mib: int) -> dict:
    path = f"/dev/shm/pcivm-box-copy-{os.getpid()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for i in range(file_mib):
            os.pwrite(fd, os.urandom(MiB), i * MiB)  # data in every page: no holes
        target = mmap.mmap(-1, MiB)
        buffer = memoryview(target)
        buffer[:] = b"\1" * MiB  # faulted in before anything is timed
        source = bytes(MiB)

        started = time.perf_counter()
        timed_reads(fd, buffer, MiB, count, 0, file_mib)
        one = (time.perf_counter() - started) / count

        half = MiB // 2
        threads = [
            threading.Thread(target=timed_reads, args=(fd, buffer, half, count, start, file_mib))
            for start in (0, half)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        two = (time.perf_counter() - started) / count

        started = time.perf_counter()
        for _ in range(count):
            buffer[:] = source
        copy = (time.perf_counter() - started) / count
        buffer.release()
        target.close()
    finally:
        os.close(fd)
        os.unlink(path)
    return {"read": one * 1e6, "read x2": two * 1e6, "memcpy": copy * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=positive_int, default=3, help="repetitions (default 3)")
    parser.add_argument("--count", type=positive_int, default=300, help="MiB copied per figure")
    parser.add_argument("--file-mib", type=positive_int, default=32, help="size of the file read")
    args = parser.parse_args(argv)
    medians = measured_rounds(
        args.rounds, lambda _: measure(args.count, args.file_mib), label="per MiB  "
    )
    print(
        f"medians: read {medians['read']:.0f} us, read x2 {medians['read x2']:.0f} us "
        f"({medians['read x2'] / medians['read']:.2f}x), memcpy {medians['memcpy']:.0f} us"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
