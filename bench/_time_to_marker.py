"""Runs benchmark jobs one after another and times each from process start to a marker line.

Started inside the box (where KVM is hardware-assisted) by bench/boot.py:

    python bench/_time_to_marker.py JOBS_JSON

JOBS_JSON is a list of {"name", "argv", "marker" (or null), "timeout", "env"}, where
"env" (optional) maps variables to set, or to null to unset, in the job's environment.
For each job the process is started, its stdout read line by line and the moment the
marker line appears recorded; meanwhile KVM's debugfs directory of the process's VM is
sampled (it vanishes when the VM is destroyed, so the last whole sample is kept).
Progress goes to stderr; each result, as soon as its job ends, to stdout as one JSON line
(so that the results of a round survive a box that dies in it). All times are seconds
since the process was started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ensure_debugfs, find_vm_dir, read_kvm_stats  # noqa: E402

POLL_S = 0.05
TAIL_BYTES = 4096


class _Stream(threading.Thread):
    """Reads a pipe line by line, keeping its tail and when a line holding `marker` came."""

    def __init__(self, pipe, started: float, marker: bytes | None = None):
        super().__init__(daemon=True)
        self.pipe = pipe
        self.started = started
        self.marker = marker
        self.marker_at: float | None = None
        self.tail = bytearray()
        self.size = 0
        self.data = bytearray()  # everything, for stderr (small)

    def run(self) -> None:
        for line in iter(self.pipe.readline, b""):
            if self.marker is not None and self.marker_at is None and self.marker in line:
                self.marker_at = time.monotonic() - self.started
            self.size += len(line)
            self.tail += line
            del self.tail[:-TAIL_BYTES]
            if self.marker is None and len(self.data) < 1 << 16:
                self.data += line


def run_job(job: dict, kvm_stats: bool) -> dict:
    marker = job.get("marker")
    env = dict(os.environ)
    for name, value in (job.get("env") or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    started = time.monotonic()
    proc = subprocess.Popen(
        job["argv"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    out = _Stream(proc.stdout, started, marker.encode() if marker else None)
    err = _Stream(proc.stderr, started)
    out.start()
    err.start()
    deadline = started + job["timeout"]
    vm_dir = None
    vm_seen = first_exit = None
    stats: dict[str, int] = {}
    stats_at_marker: dict[str, int] | None = None
    timed_out = False
    while proc.poll() is None:
        now = time.monotonic()
        if now > deadline:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            break
        if kvm_stats:
            if vm_dir is None:
                vm_dir = find_vm_dir(proc.pid)
                if vm_dir is not None:
                    vm_seen = now - started
            if vm_dir is not None:
                sample = read_kvm_stats(vm_dir)
                # A sample read while the VM went is partial: keep the last whole one.
                if sample and len(sample) >= len(stats):
                    stats = sample
                    if first_exit is None and sample.get("exits", 0) > 0:
                        first_exit = now - started
                    if stats_at_marker is None and out.marker_at is not None:
                        stats_at_marker = sample
        time.sleep(POLL_S)
    # A process stuck in the kernel (a wedged KVM_RUN) may not die: do not wait forever.
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30 if timed_out else None)
    ended = time.monotonic() - started
    out.join(5)
    err.join(5)
    return {
        "name": job["name"],
        "status": proc.returncode,  # None: it could not be killed
        "timed_out": timed_out,
        "marker_s": out.marker_at,
        "end_s": ended,
        "vm_seen_s": vm_seen,
        "first_exit_s": first_exit,
        "kvm": stats or None,
        "kvm_at_marker": stats_at_marker,
        "stdout_bytes": out.size,
        "stdout_tail": bytes(out.tail).decode(errors="replace"),
        "stderr": bytes(err.data).decode(errors="replace"),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: _time_to_marker.py JOBS_JSON", file=sys.stderr)
        return 2
    jobs = json.loads(argv[0])
    kvm_stats = ensure_debugfs()
    if not kvm_stats:
        print("  (KVM's debugfs is not available: no exit counters)", file=sys.stderr)
    for job in jobs:
        result = run_job(job, kvm_stats)
        print(json.dumps(result), flush=True)
        if result["timed_out"]:
            what = f"timed out after {job['timeout']:g} s"
        elif job.get("marker") and result["marker_s"] is None:
            what = f"no marker (status {result['status']})"
        else:
            what = f"{result['marker_s'] or result['end_s']:.2f} s"
        print(f"  {job['name']:<22} {what}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
