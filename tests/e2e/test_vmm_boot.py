"""pcivm boots the real Debian guest under KVM (in the box on these machines).

Each boot costs seconds in the box, so each test checks several things per boot.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

from pcivm.guest import probe

pytestmark = pytest.mark.e2e

SCRIPTS = Path(__file__).parent / "scripts"
BOOT_TIMEOUT_S = 600  # generous: a loaded 2-core host is slow, not hung
# With `quiet`, a boot to the probe report took 1,823 exits (serial 1,541, CMOS 146): a
# regression that makes the guest exit per character twice, or poll a device, shows here.
MAX_EXITS_QUIET_PROBE_BOOT = 4000


def pcivm(*options: str) -> list[str]:
    return [sys.executable, "-m", "pcivm", *options]


def guest_args(image, append: str, kernel: Path | None = None, memory: str = "512M"):
    return [
        "-m", memory, "-nographic", "-no-reboot", "-serial", "stdio",
        "-kernel", str(kernel or image.vmlinux), "-initrd", str(image.initrd),
        "-append", f"console=ttyS0 quiet {append}",
    ]  # fmt: skip


def test_bzimage_boots_to_the_probe_report_with_few_exits(box, image):
    argv = pcivm(*guest_args(image, "pcivm.probe=1", kernel=image.kernel.bzimage), "-d")
    status, out, err = box.run_capture(argv, timeout=BOOT_TIMEOUT_S)
    console = out.decode(errors="replace")
    report = probe.parse_probe_report(console)
    assert status == 0, err.decode(errors="replace")[-2000:]
    assert report["kernel"] == image.kernel.release
    assert "pcivm.probe=1" in report["cmdline"]
    assert report["guest"] == "modern"
    # The platform pcivm describes: COM1, the CMOS clock and ACPI PM ports, as Linux saw them.
    assert "03f8-03ff : serial" in report["ioports"]
    assert "0070-0071 : rtc" in report["ioports"].replace("rtc_cmos", "rtc")
    assert "ACPI PM1a_CNT_BLK" in report["ioports"]
    stats = err.decode()
    assert "exits by device" in stats and "guest powered off" not in console
    total = int(stats.split("total ")[1].split()[0])
    assert 100 < total < MAX_EXITS_QUIET_PROBE_BOOT, stats


def test_run_command_sees_cpus_and_memory_above_4g(box, image):
    command = "echo $((6*7)); nproc; grep MemTotal /proc/meminfo; cat /proc/interrupts"
    argv = pcivm(*guest_args(image, f'pcivm.run="{command}"', memory="3584M"), "-smp", "2")
    status, out, err = box.run_capture(argv, timeout=BOOT_TIMEOUT_S)
    console = out.decode(errors="replace")
    assert status == 0, err.decode(errors="replace")[-2000:]
    assert probe.parse_run_exit(console) == 0
    lines = probe.parse_run_output(console).splitlines()
    assert lines[0] == "42"
    assert lines[1] == "2"
    mem_kib = int(lines[2].split()[1])
    assert mem_kib > 3300 * 1024  # RAM above the 3 GiB hole is there too
    interrupts = "\n".join(lines[3:])
    # The serial port's interrupt goes through the IOAPIC, as the MADT tells the guest.
    assert any("IO-APIC" in line and "ttyS0" in line for line in interrupts.splitlines())


def test_guest_reboot_ends_the_vmm_with_status_0(box, image):
    argv = pcivm(*guest_args(image, 'pcivm.run="reboot -f"'))
    status, out, err = box.run_capture(argv, timeout=BOOT_TIMEOUT_S)
    assert status == 0, err.decode(errors="replace")[-2000:]
    assert probe.parse_run_exit(out.decode(errors="replace")) is None  # never got that far


def test_interactive_shell_answers_on_a_terminal(box, image):
    argv = [sys.executable, str(SCRIPTS / "drive_pty.py"), "--", *pcivm(*guest_args(image, ""))]
    status, out, err = box.run_capture(argv, timeout=BOOT_TIMEOUT_S)
    assert status == 0, err.decode(errors="replace")[-2000:]
    verdict = json.loads(out.decode().strip().splitlines()[-1])
    assert verdict["prompt"] and verdict["answer"], verdict["tail"]
    assert verdict["raw_while_running"]
    assert verdict["status"] == 0
    assert verdict["cooked_after"], "the terminal was left in raw mode"


def test_triple_fault_is_a_one_line_error(box, tmp_path):
    # An ELF "kernel" whose entry loads an empty IDT and raises an exception: no handler,
    # then no double-fault handler: a triple fault.
    code = bytes.fromhex("0f011d00100000") + b"\xcc"  # lidt [0x1000]; int3
    ehdr = bytearray(64)
    ehdr[:7] = b"\x7fELF\x02\x01\x01"
    struct.pack_into("<HHIQQQIHHH", ehdr, 16, 2, 62, 1, 0x200000, 64, 0, 0, 64, 56, 1)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 120, 0x200000, 0x200000, len(code), 0x1000, 0x1000)
    kernel = tmp_path / "faulty.elf"
    kernel.write_bytes(bytes(ehdr) + phdr + code)
    status, _out, err = box.run_capture(
        pcivm("-m", "64", "-kernel", str(kernel), "-serial", "none"), timeout=60
    )
    message = err.decode(errors="replace").strip()
    assert status == 2
    assert "triple-faulted" in message and len(message.splitlines()) == 1


def test_thirty_boots_in_a_row_none_hangs_nothing_leaks(box, image, tmp_path):
    # Thirty VMs one after another in one process, as a long-lived VMM process would run
    # them: each boot must reach its report (a hang is reported with the VMM's interrupt
    # state and the guest's last console lines), and the process must hold no more
    # descriptors or threads after the thirtieth VM than after the second.
    count = 30
    argv = [
        sys.executable, str(SCRIPTS / "boot_loop.py"), str(count), "150", str(tmp_path), "--",
        *guest_args(image, "pcivm.probe=1"),
    ]  # fmt: skip
    status, out, err = box.run_capture(argv, timeout=count * 150)
    boots = [json.loads(line) for line in out.decode().splitlines() if line[:1] == "{"]
    for i, boot in enumerate(boots):
        detail = f"boot {i}: {boot['state']}\nconsole:\n" + "\n".join(boot["console_tail"])
        assert boot["status"] == 0 and boot["report_end"], detail
    assert status == 0 and len(boots) == count, err.decode(errors="replace")[-3000:]
    assert boots[-1]["open_fds"] == boots[1]["open_fds"], [b["open_fds"] for b in boots]
    assert boots[-1]["threads"] == boots[1]["threads"], [b["threads"] for b in boots]
