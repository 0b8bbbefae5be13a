"""Large reads cut in two or done whole: which is faster on this machine, and what pcivm chose.

virtio-blk may cut a read of 512 KiB or more that the page cache holds in two, a kernel
io_uring worker reading the back part while the caller reads the front; `SplitPolicy`
(pcivm/virtio/split_read.py) measures which way is faster where pcivm runs. This
drives `BlockBackend.try_preadv` in process, 1 MiB reads of 256 scattered guest pages
from a file in /dev/shm, three ways, alternating:

- `whole`: every read done by the calling thread;
- `cut`: every read cut in two (where `SplitPolicy` places the cut);
- `policy`: what `SplitPolicy` chooses (its probes included);

and `ping`, an empty read handed to an io_uring worker and waited for (what a cut read
pays besides its copy). Per read, medians over the rounds.

    .venv/bin/python bench/split_read.py                 # this host
    pcivm box -- .venv/bin/python bench/split_read.py    # the box's emulated CPUs
"""

from __future__ import annotations

import os
import struct
import sys
import time
from pathlib import Path

if not __package__:  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ArgumentParser, measured_rounds, positive_int, rotate  # noqa: E402

MiB = 1 << 20
PAGES = 256


class _Forced:
    """A SplitPolicy that always (or never) cuts, the cut still placed as pcivm does."""

    enabled = True

    def __init__(self, cut: bool):
        from pcivm.virtio.split_read import SplitPolicy

        self._policy = SplitPolicy(enabled=True)
        self._cut = cut

    def cut_at(self, nbytes: int, offset: int) -> int | None:
        return self._policy.cut_point(nbytes, offset) if self._cut else None

    def record(self, was_cut: bool, seconds: float, nbytes: int) -> None:
        pass

    def front_done(self, back_still_running: bool) -> None:
        self._policy.front_done(back_still_running)


def measure(count: int, file_mib: int, first: int = 0) -> dict:
    """Microseconds per 1 MiB read each way, and per io_uring ping; the ways in turn from
    the `first`-th (rounds rotate them: an io_uring worker's first start, and the box's
    speed, drift through a round)."""
    from pcivm.memory import GuestMemory
    from pcivm.uring import ReadRing
    from pcivm.virtio.blk import BlockBackend
    from pcivm.virtio.split_read import SplitPolicy

    path = f"/dev/shm/pcivm-split-read-{os.getpid()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    memory = GuestMemory(4 * MiB)
    backend = None
    try:
        for i in range(file_mib):
            os.pwrite(fd, os.urandom(MiB), i * MiB)  # in the page cache, no holes
        memory.write(0, b"\1" * (4 * MiB))  # guest RAM faulted in before timing
        table = b"".join(struct.pack("<QII", 2 * 4096 * p, 4096, 0) for p in range(PAGES))
        iov = memory.iovec_of_table(table)
        backend = BlockBackend(path, locking=False)
        result = {}
        ways = [
            ("whole", _Forced(False)),
            ("cut", _Forced(True)),
            ("policy", SplitPolicy(enabled=True)),
        ]
        for name, policy in rotate(ways, first):
            backend.split_policy = policy
            started = time.perf_counter()
            for i in range(count):
                if backend.try_preadv(iov, (i % file_mib) * MiB) != MiB:
                    raise RuntimeError("a read of the file in /dev/shm came back short")
            result[name] = (time.perf_counter() - started) / count * 1e6
        result = {name: result[name] for name, _ in ways}
        ring = ReadRing()
        try:
            started = time.perf_counter()
            for _ in range(count):
                ring.start_readv(fd, b"", 0, 0, 0, keep=None)
                ring.wait()
            result["ping"] = (time.perf_counter() - started) / count * 1e6
        finally:
            ring.close()
        return result
    finally:
        if backend is not None:
            backend.close()
        memory.close()
        os.close(fd)
        os.unlink(path)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=positive_int, default=6, help="repetitions (default 6)")
    parser.add_argument(
        "--count", type=positive_int, default=150, help="reads per figure (default 150)"
    )
    parser.add_argument(
        "--file-mib", type=positive_int, default=32, help="size of the file read (default 32)"
    )
    args = parser.parse_args(argv)
    med = measured_rounds(
        args.rounds, lambda round_index: measure(args.count, args.file_mib, first=round_index)
    )
    print(
        f"medians per 1 MiB read: whole {med['whole']:.0f} us, cut {med['cut']:.0f} us "
        f"({med['cut'] / med['whole']:.2f}x), policy {med['policy']:.0f} us "
        f"({med['policy'] / med['whole']:.2f}x); io_uring ping {med['ping']:.0f} us"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
