"""`pcivm box` end to end: statuses, streams, files, cwd and env cross the box intact."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pcivm.box import BoxTimeoutError

PCIVM = [sys.executable, "-m", "pcivm"]
BOX_START_S = 300  # a cold box on a busy two-core host


def pcivm_box(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*PCIVM, "box", *argv], capture_output=True, timeout=BOX_START_S, check=False
    )


def command_stderr(proc: subprocess.CompletedProcess) -> bytes:
    """The command's stderr: what `pcivm box` logged of the box itself before the command
    ran taken off (a box that had to be started twice says so: box/api.py)."""
    lines = proc.stderr.splitlines(keepends=True)
    while lines and lines[0].startswith(b"pcivm: pcivm.box."):
        lines.pop(0)
    return b"".join(lines)


def test_cli_passes_status_stdout_and_stderr_through():
    proc = pcivm_box("--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (proc.returncode, proc.stdout, command_stderr(proc)) == (3, b"out\n", b"err\n")


def test_cli_reports_a_missing_command_as_a_shell_would():
    proc = pcivm_box("no-such-command-anywhere", "--flag")
    assert proc.returncode == 127
    assert command_stderr(proc) == b"pcivm box: no-such-command-anywhere: command not found\n"


def test_exit_statuses_pass_through(box):
    assert box.run_capture(["sh", "-c", "exit 3"], timeout=60)[0] == 3
    assert box.run_capture(["true"], timeout=60)[0] == 0
    # Killed by SIGTERM: 128 + 15, as a shell reports it.
    assert box.run_capture(["sh", "-c", "kill -TERM $$"], timeout=60)[0] == 143


def test_the_box_has_hardware_assisted_kvm(box):
    status, out, _ = box.run_capture(["cat", "/proc/cpuinfo"], timeout=60)
    assert status == 0
    flags = {
        word
        for line in out.decode().splitlines()
        if line.startswith("flags")
        for word in line.split()
    }
    assert flags & {"svm", "vmx"}
    if box.kind == "tcg":
        assert "svm" in flags
    assert box.run_capture(["test", "-c", "/dev/kvm"], timeout=60)[0] == 0


def test_the_tcg_box_holds_one_vm_for_its_whole_life(box):
    # So that no command's VM moves KVM's static keys across zero (docs/box.md).
    if box.kind != "tcg":
        return  # nothing to hold on a hardware host: commands run there directly
    assert box.machine.info["kvm_held"]
    script = "for f in /proc/[0-9]*/fd/*; do readlink $f; done 2>/dev/null | grep -c kvm-vcpu"
    status, out, _ = box.run_capture(["sh", "-c", script], timeout=60)
    assert status == 0 and int(out) == 1


def test_a_missing_command_gives_127(box):
    status, out, err = box.run_capture(["no-such-command-anywhere"], timeout=60)
    assert (status, out) == (127, b"")
    assert b"no-such-command-anywhere: command not found" in err


def test_stdout_and_stderr_stay_separate(box):
    script = "for i in 1 2 3; do echo out$i; echo err$i >&2; done"
    status, out, err = box.run_capture(["sh", "-c", script], timeout=60)
    assert (status, out, err) == (0, b"out1\nout2\nout3\n", b"err1\nerr2\nerr3\n")


def test_stdin_reaches_the_command_intact(box):
    data = os.urandom(3 * 1024 * 1024)
    status, out, _ = box.run_capture(["cat"], input=data, timeout=120)
    assert status == 0
    assert out == data


def test_a_file_written_by_the_host_is_read_in_the_box(box, tmp_path):
    note = tmp_path / "from-host.txt"
    for version in range(3):  # rewritten each time: no stale copy may be read
        note.write_text(f"host wrote version {version}\n")
        status, out, _ = box.run_capture(["cat", str(note)], timeout=60)
        assert (status, out) == (0, f"host wrote version {version}\n".encode())


def test_a_file_written_in_the_box_is_read_by_the_host(box, tmp_path):
    note = tmp_path / "from-box.txt"
    for version in range(3):
        status, _, _ = box.run_capture(
            ["sh", "-c", f"echo box wrote version {version} > {note}"], timeout=60
        )
        assert status == 0
        assert note.read_text() == f"box wrote version {version}\n"


def test_cwd_and_env_pass_through(box, tmp_path):
    env = {**os.environ, "PCIVM_BOX_PROBE": "value with spaces"}
    status, out, _ = box.run_capture(
        ["sh", "-c", 'pwd; echo "$PCIVM_BOX_PROBE"'], cwd=tmp_path, env=env, timeout=60
    )
    assert status == 0
    assert out.decode().splitlines() == [str(tmp_path), "value with spaces"]


def test_cwd_defaults_to_the_callers(box):
    status, out, _ = box.run_capture(["pwd"], timeout=60)
    assert (status, out.decode().strip()) == (0, os.getcwd())


def test_a_command_over_its_timeout_is_killed_and_the_box_goes_on(box):
    started = time.monotonic()
    with pytest.raises(BoxTimeoutError) as caught:
        box.run_capture(["sh", "-c", "echo started; sleep 60"], timeout=3)
    assert time.monotonic() - started < 30
    assert caught.value.stdout == b"started\n"
    assert "timed out after 3 s" in str(caught.value)
    assert box.run_capture(["true"], timeout=60)[0] == 0


def test_the_hosts_python_and_project_are_there(box):
    status, out, err = box.run_capture(
        [sys.executable, "-c", "import pcivm.box, sys; print(sys.prefix)"], timeout=120
    )
    assert status == 0, err
    assert out.decode().strip() == sys.prefix
    assert Path(sys.executable).exists()
