"""Drive `pcivm -nographic` through a pseudo-terminal, as a person at a terminal would.

Usage: drive_pty.py -- <pcivm command>. Waits for the guest's shell prompt, types a
command, checks its answer, quits with Ctrl-A x, and prints a JSON verdict: what was
seen, the exit status, and whether the terminal came back in cooked mode.
"""

import json
import os
import pty
import select
import sys
import termios
import time


def expect(fd: int, needle: bytes, timeout: float, seen: bytearray) -> bool:
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                return False
            if not chunk:
                return False
            seen.extend(chunk)
    return True


def main() -> int:
    argv = sys.argv[sys.argv.index("--") + 1 :]
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(argv[0], argv)
    seen = bytearray()
    verdict = {"prompt": expect(fd, b"# ", 120, seen)}
    # Let the shell's cursor-position query go unanswered, then type.
    time.sleep(0.5)
    os.write(fd, b"echo answer=$((6*7))\r")
    verdict["answer"] = expect(fd, b"answer=42", 30, seen)
    raw_while_running = not termios.tcgetattr(fd)[3] & termios.ICANON
    os.write(fd, b"\x01x")  # Ctrl-A x: quit, as in QEMU
    deadline = time.monotonic() + 30
    status = None
    while time.monotonic() < deadline:
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(wait_status)
            break
        expect(fd, b"\0never", 0.2, seen)
    lflag = termios.tcgetattr(fd)[3]
    verdict.update(
        status=status,
        raw_while_running=raw_while_running,
        cooked_after=bool(lflag & termios.ICANON and lflag & termios.ECHO),
        tail=seen[-400:].decode(errors="replace"),
    )
    print(json.dumps(verdict))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
