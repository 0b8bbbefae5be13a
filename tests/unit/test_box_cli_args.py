"""`pcivm box` argument parsing: options up to `--` or the command's first word."""

import pytest

from pcivm.box.api import AUTO, DIRECT, TCG, choose_runner_kind
from pcivm.box.cli import STATUS_USAGE, UsageProblem, main, parse_args
from pcivm.box.detect import ABSENT, HARDWARE, PVM, KvmKind


def test_the_command_follows_double_dash():
    args = parse_args(["--", "sh", "-c", "exit 3"])
    assert args.command == ["sh", "-c", "exit 3"]
    assert args.mode == AUTO


def test_the_first_word_that_is_no_option_starts_the_command():
    args = parse_args(["--timeout", "5", "ls", "-la", "--", "x"])
    assert args.timeout == 5.0
    assert args.command == ["ls", "-la", "--", "x"]


def test_options_with_inline_values_and_modes():
    args = parse_args(["--memory=2048", "--cpus", "1", "--tcg", "--debug", "true"])
    assert (args.memory_mib, args.cpus, args.mode, args.debug) == (2048, 1, TCG, True)
    assert args.machine_config().memory_mib == 2048
    assert parse_args(["--direct", "true"]).mode == DIRECT


def test_the_virtiofs_cache_mode_can_be_chosen():
    assert parse_args(["--cache", "auto", "true"]).machine_config().cache == "auto"
    assert parse_args(["true"]).machine_config().cache == "none"
    with pytest.raises(UsageProblem):
        parse_args(["--cache", "sometimes", "true"])


def test_check_needs_no_command():
    args = parse_args(["--check"])
    assert args.check and args.command == []


@pytest.mark.parametrize(
    "argv",
    [[], ["--"], ["--bogus", "true"], ["--timeout"], ["--timeout", "soon", "x"], ["--cpus=0", "x"]],
)
def test_malformed_command_lines_are_refused(argv):
    with pytest.raises(UsageProblem):
        parse_args(argv)


def test_no_command_prints_usage_and_exits_2(capsys):
    assert main([], kernel_provider=lambda: pytest.fail("no kernel needed")) == STATUS_USAGE
    err = capsys.readouterr().err
    assert err.startswith("pcivm box: no command given\nusage: pcivm box")


def test_help_goes_to_stdout(capsys):
    assert main(["--help"], kernel_provider=lambda: None) == 0
    assert "usage: pcivm box" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("kind", "mode", "expected"),
    [
        (HARDWARE, AUTO, DIRECT),
        (PVM, AUTO, TCG),
        (ABSENT, AUTO, TCG),
        (HARDWARE, TCG, TCG),
        (PVM, DIRECT, DIRECT),
    ],
)
def test_the_runner_follows_the_host_kvm_unless_forced(kind, mode, expected):
    assert choose_runner_kind(KvmKind(kind, "test"), mode) == expected
