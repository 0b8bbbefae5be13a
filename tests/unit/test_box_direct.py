"""The direct runner (hardware-assisted hosts): same statuses and streams as the box."""

import io
import os

import pytest

from pcivm.box import BoxTimeoutError
from pcivm.box.runners import DirectRunner


@pytest.fixture
def runner():
    return DirectRunner()


def test_status_stdout_and_stderr_come_back_separately(runner):
    assert runner.run_capture(["sh", "-c", "echo out; echo err >&2; exit 3"]) == (
        3,
        b"out\n",
        b"err\n",
    )


def test_a_signal_death_is_128_plus_the_signal(runner):
    assert runner.run_capture(["sh", "-c", "kill -TERM $$"])[0] == 143


def test_a_missing_command_is_127_with_a_shell_like_message(runner):
    status, out, err = runner.run_capture(["no-such-command-anywhere"])
    assert (status, out) == (127, b"")
    assert err == b"pcivm box: no-such-command-anywhere: command not found\n"


def test_input_cwd_and_env_reach_the_command(runner, tmp_path):
    env = {**os.environ, "PROBE": "x y"}
    status, out, _ = runner.run_capture(
        ["sh", "-c", 'cat; pwd; echo "$PROBE"'], cwd=tmp_path, env=env, input=b"in\n"
    )
    assert (status, out.decode().splitlines()) == (0, ["in", str(tmp_path), "x y"])


def test_run_streams_into_file_objects_without_descriptors(runner):
    out, err = io.BytesIO(), io.BytesIO()
    assert runner.run(["sh", "-c", "echo o; echo e >&2"], stdout=out, stderr=err) == 0
    assert (out.getvalue(), err.getvalue()) == (b"o\n", b"e\n")


def test_a_command_over_its_timeout_is_killed(runner):
    with pytest.raises(BoxTimeoutError, match="sleep: timed out after 0.5 s"):
        runner.run_capture(["sleep", "30"], timeout=0.5)
