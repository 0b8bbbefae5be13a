"""The benchmarks' pure helpers: statistics, formatting, KVM's debugfs counters."""

import pytest
from bench.common import (
    ArgumentParser,
    find_vm_dir,
    format_count,
    format_ratio,
    format_seconds,
    median,
    parse_pcivm_exit_total,
    per_round,
    positive_int,
    ratio,
    read_kvm_stats,
    render_table,
    rotate,
    slope,
    spread,
    vmm_exits,
)


def test_median_ignores_missing_values():
    assert median([3.0, None, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0]) == 2.5
    assert median([None, None]) is None
    assert median([]) is None


def test_ratio_and_its_formatting():
    assert ratio(3.0, 4.0) == 0.75
    assert ratio(None, 4.0) is None and ratio(1.0, None) is None and ratio(1.0, 0) is None
    assert format_ratio(0.754) == "0.75x"
    assert format_ratio(None) == "n/a"
    assert format_seconds(12.345) == "12.35 s"
    assert format_seconds(None) == "n/a"
    assert format_count(1834.6) == "1,835"
    assert spread([1.2, None, 0.9, 1.05]) == "0.90..1.20"
    assert spread([None]) == "n/a"
    assert per_round([1.5, 0.88, 2.76, None]) == "1.50x (0.88..2.76)"
    assert per_round([]) == "n/a"


def test_slope_and_rotation():
    assert slope([(0, 1.0), (10, 2.0), (20, 3.0)]) == pytest.approx(0.1)
    assert slope([(5, 1.0), (5, 2.0)]) is None
    assert rotate(["a", "b", "c"], 1) == ["b", "c", "a"]
    assert rotate(["a", "b", "c"], 5) == ["c", "a", "b"]
    assert rotate([], 3) == []


def test_kvm_stats_from_a_vm_directory(tmp_path):
    vm = tmp_path / "1234-11"
    vm.mkdir()
    (vm / "exits").write_text("34096\n")
    (vm / "io_exits").write_text("1848\n")
    (vm / "mmio_exits").write_text("12\n")
    (vm / "halt_exits").write_text("garbage\n")
    (tmp_path / "12345-9").mkdir()  # another process whose pid starts alike
    (tmp_path / "1234-x").mkdir()
    stats = read_kvm_stats(vm, ("exits", "io_exits", "mmio_exits", "halt_exits", "irq_exits"))
    # Unreadable and missing counters are left out, not zero.
    assert stats == {"exits": 34096, "io_exits": 1848, "mmio_exits": 12}
    assert vmm_exits(stats) == 1860
    assert vmm_exits({}) is None and vmm_exits(None) is None
    assert find_vm_dir(1234, tmp_path) == vm
    assert find_vm_dir(999, tmp_path) is None
    assert find_vm_dir(1234, tmp_path / "gone") is None
    assert read_kvm_stats(tmp_path / "gone") == {}


def test_pcivm_exit_report_total():
    stderr = (
        "pcivm: exits by device (9.81 s):\n"
        "  io       uart                           1541\n"
        "  io       cmos                           146\n"
        "  total 1823\n"
        "pcivm: something else\n"
    )
    assert parse_pcivm_exit_total(stderr) == 1823
    assert parse_pcivm_exit_total("pcivm: guest powered off\n") is None


def test_table_columns_line_up():
    table = render_table(["configuration", "ratio"], [["QEMU -M pc", "1.00x"], ["pcivm", "0.9x"]])
    lines = table.splitlines()
    assert lines[0] == "| configuration | ratio |"
    assert lines[1] == "|:--------------|------:|"
    assert lines[3] == "| pcivm         |  0.9x |"
    assert len({len(line) for line in lines}) == 1


def test_argument_errors_are_one_line(capsys):
    parser = ArgumentParser(prog="boot.py")
    parser.add_argument("--rounds", type=positive_int, default=5)
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--rounds", "0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err == "boot.py: argument --rounds: must be at least 1: 0\n"
