"""Helper processes (QEMU, virtiofsd) that never outlive the process that started them."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _detach_and_die_with_parent() -> None:
    # Own session: a ^C at the terminal reaches the command in the box (through the
    # host's handler), not QEMU. PDEATHSIG: if the host process is killed outright, the
    # kernel kills the helper too, so no machine is ever left behind.
    os.setsid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def start_helper(argv: list[str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            preexec_fn=_detach_and_die_with_parent,
            close_fds=True,
        )


def stop_helper(proc: subprocess.Popen | None, grace: float = 3.0) -> None:
    """Let `proc` end by itself within `grace` seconds, then terminate, then kill it."""
    if proc is None or proc.poll() is not None:
        return
    for action in (None, proc.terminate, proc.kill):
        if action is not None:
            action()
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path | None, lines: int = 15) -> str:
    if path is None:
        return ""  # a machine already torn down has no log left to show
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])
