"""Starting the box: a machine whose agent never answers is started once more; a machine
that fails any other way, or twice, fails the start."""

import subprocess
import sys

import pytest

from pcivm.box import api
from pcivm.box.errors import BoxNoAnswerError, BoxStartError
from pcivm.box.machine import TcgMachine
from pcivm.box.runners import TcgRunner


class FakeKernel:
    release = "6.1.0-test"


class FakeMachine:
    """Stands for TcgMachine: each start takes the next outcome of `outcomes`."""

    outcomes: list = []
    made: list = []
    console_log = None

    def __init__(self, kernel, config, busybox):
        self.kernel = kernel
        FakeMachine.made.append(self)

    def start(self, timeout):
        outcome = FakeMachine.outcomes.pop(0)
        if outcome is not None:
            raise outcome

    def close(self):
        pass


KERNEL = FakeKernel()


@pytest.fixture
def fake_box(monkeypatch):
    monkeypatch.setattr(api, "TcgMachine", FakeMachine)
    monkeypatch.setattr(api, "require_tools", lambda config: None)
    FakeMachine.made = []
    kernels = []

    def start(*outcomes):
        FakeMachine.outcomes = list(outcomes)
        return api.start_runner(lambda: kernels.append(KERNEL) or KERNEL, mode=api.TCG)

    yield start
    assert len(kernels) <= 1  # the kernel is fetched once, however many tries


def test_a_box_that_never_answered_is_started_once_more(fake_box):
    runner = fake_box(BoxNoAnswerError("the box did not come up"), None)
    assert isinstance(runner, TcgRunner) and runner.machine is FakeMachine.made[1]
    assert [m.kernel for m in FakeMachine.made] == [KERNEL, KERNEL]


def test_two_boxes_that_never_answered_fail_the_start(fake_box):
    with pytest.raises(BoxNoAnswerError):
        fake_box(BoxNoAnswerError("first"), BoxNoAnswerError("second"), None)
    assert len(FakeMachine.made) == api.START_ATTEMPTS == 2


def test_any_other_failure_fails_at_once(fake_box):
    with pytest.raises(BoxStartError, match="without /dev/kvm"):
        fake_box(BoxStartError("the box came up without /dev/kvm"), None)
    assert len(FakeMachine.made) == 1


def qemu_that_exited(status: int) -> TcgMachine:
    machine = TcgMachine.__new__(TcgMachine)
    machine.qemu = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({status})"])
    machine.qemu.wait()
    machine.workdir = machine.kept_dir = None
    return machine


def test_only_a_qemu_that_failed_by_itself_makes_the_error_final(tmp_path, monkeypatch):
    monkeypatch.setattr(TcgMachine, "console_log", tmp_path / "console.log")
    for status, kind in ((1, BoxStartError), (0, BoxNoAnswerError)):
        machine = qemu_that_exited(status)
        machine.workdir = tmp_path
        error = machine._start_error("the box did not come up", BoxNoAnswerError)
        assert type(error) is kind and f"status {status}" in str(error)
