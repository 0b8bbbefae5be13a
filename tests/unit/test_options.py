"""QEMU-style option parsing."""

from pathlib import Path

import pytest

from pcivm.errors import UsageError
from pcivm.options import parse_options, parse_size


@pytest.mark.parametrize(
    "text,expected",
    [
        ("512", 512 << 20),
        ("512M", 512 << 20),
        ("2G", 2 << 30),
        ("1g", 1 << 30),
        ("1024k", 1 << 20),
        ("1.5G", 3 << 29),
        ("2GiB", 2 << 30),
    ],
)
def test_memory_sizes_follow_qemu_syntax(text, expected):
    assert parse_size(text, "-m") == expected


@pytest.mark.parametrize("text", ["", "abc", "12X", "-5", "0", "1 G G"])
def test_malformed_sizes_are_usage_errors(text):
    with pytest.raises(UsageError, match="-m"):
        parse_size(text, "-m")


def test_a_full_command_line_becomes_a_spec():
    spec = parse_options(
        [
            "-m",
            "size=1G",
            "-kernel",
            "k",
            "-initrd",
            "i",
            "-append",
            "console=ttyS0 quiet",
            "-nographic",
            "-serial",
            "file:/tmp/x",
            "-no-reboot",
            "-name",
            "vm1",
            "-smp",
            "2",
            "-M",
            "q35",
            "--debug",
            "-enable-kvm",
        ]
    )
    assert spec.memory == 1 << 30
    assert spec.kernel == Path("k") and spec.initrd == Path("i")
    assert spec.append == "console=ttyS0 quiet"
    assert spec.serial.kind == "file" and spec.serial.path == Path("/tmp/x")
    assert spec.no_reboot and spec.debug
    assert spec.name == "vm1" and spec.smp == 2 and spec.machine == "q35"


def test_defaults_match_qemu():
    spec = parse_options(["-kernel", "k"])
    assert spec.memory == 128 << 20
    assert spec.serial.kind == "stdio"
    assert spec.machine == "pc" and spec.smp == 1


@pytest.mark.parametrize(
    "argv,message",
    [
        (["-kernel", "k", "-frobnicate"], "-frobnicate: invalid option"),
        (["-kernel", "k", "-m"], "-m: requires an argument"),
        (["-kernel", "k", "-m", "lots"], "-m: invalid size"),
        (["-m", "1G"], "-kernel"),
        (["-kernel", "k", "-serial", "pty"], "-serial"),
        (["-kernel", "k", "-smp", "0"], "-smp"),
        (["-kernel", "k", "-M", "virt"], "unsupported machine"),
        (["-kernel", "k", "-accel", "tcg"], "-accel"),
        (["-kernel", "k", "stray"], "stray: unexpected argument"),
    ],
)
def test_bad_options_name_the_culprit(argv, message):
    with pytest.raises(UsageError, match=message):
        parse_options(argv)
