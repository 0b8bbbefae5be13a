"""Reading the guest's probe report and pcivm.run markers from a serial console."""

import json

import pytest

from pcivm.guest.probe import (
    PROBE_BEGIN,
    PROBE_END,
    ProbeReportError,
    parse_probe_report,
    parse_run_exit,
    parse_run_output,
)

REPORT = {
    "kernel": "6.1.0-56-cloud-amd64",
    "cmdline": "console=ttyS0 quiet pcivm.probe=1",
    "guest": "modern",
    "pci": [{"bdf": "0000:00:02.0", "vendor": "0x1af4", "driver": "virtio-pci", "bars": []}],
    "virtio": [],
    "kmsg": ['quoted "x" \\ back'],
    "uptime": 3.2,
}


def console(report=REPORT, before="", after="", newline="\n"):
    lines = [*before.splitlines(), PROBE_BEGIN, json.dumps(report), PROBE_END]
    lines += after.splitlines()
    return newline.join(lines) + newline


def test_a_clean_report_parses():
    assert parse_probe_report(console()) == REPORT


def test_kernel_lines_before_and_after_are_ignored():
    text = console(
        before="SeaBIOS (version 1.16.2)\n[    0.000000] Linux version 6.1.0\nBooting",
        after="[    3.364505] reboot: Power down",
    )
    assert parse_probe_report(text)["guest"] == "modern"


def test_crlf_line_ends_from_the_serial_line():
    text = console(before="[ 0.1] hello", newline="\r\n")
    assert parse_probe_report(text)["kmsg"] == REPORT["kmsg"]


def test_a_kernel_line_inside_the_markers_is_skipped():
    text = f"{PROBE_BEGIN}\n[    2.1] virtio_net: something\n{json.dumps(REPORT)}\n{PROBE_END}\n"
    assert parse_probe_report(text)["pci"][0]["bdf"] == "0000:00:02.0"


def test_marker_glued_to_a_kernel_line_still_counts():
    glued = "[    2.0] a kernel line without its newline"
    text = f"{glued}{PROBE_BEGIN}\n{json.dumps(REPORT)}\n{PROBE_END}"
    assert parse_probe_report(text) == REPORT


def test_missing_report_names_the_console_tail():
    with pytest.raises(ProbeReportError, match="no probe report.*Kernel panic"):
        parse_probe_report("Booting\r\n[ 1.0] Kernel panic - not syncing\r\n")


def test_empty_console_says_so():
    with pytest.raises(ProbeReportError, match="console empty"):
        parse_probe_report("")


def test_truncated_report_is_an_error():
    text = console()
    cut = text[: text.index(PROBE_END) - 20]
    with pytest.raises(ProbeReportError, match="truncated"):
        parse_probe_report(cut)


def test_invalid_json_is_an_error():
    with pytest.raises(ProbeReportError, match="not valid JSON"):
        parse_probe_report(f'{PROBE_BEGIN}\n{{"pci": [1, 2\n{PROBE_END}\n')


def test_json_that_is_not_a_report_is_an_error():
    with pytest.raises(ProbeReportError, match="no 'pci' key"):
        parse_probe_report(f'{PROBE_BEGIN}\n{{"kernel": "x"}}\n{PROBE_END}\n')


def test_run_exit_status_is_read():
    text = "x\r\n===PCIVM-RUN-BEGIN===\r\n42\r\n===PCIVM-RUN-EXIT=3===\r\n"
    assert parse_run_exit(text) == 3
    assert parse_run_output(text) == "42\n"


def test_run_exit_zero_is_not_none():
    assert parse_run_exit("===PCIVM-RUN-BEGIN===\n===PCIVM-RUN-EXIT=0===\n") == 0
    assert parse_run_output("===PCIVM-RUN-BEGIN===\n===PCIVM-RUN-EXIT=0===\n") == ""


def test_unfinished_run_has_no_status():
    text = "===PCIVM-RUN-BEGIN===\npartial output\n"
    assert parse_run_exit(text) is None
    assert parse_run_output(text) is None


def test_run_exit_must_stand_on_its_own_line():
    assert parse_run_exit("echo ===PCIVM-RUN-EXIT=5===\n") is None
