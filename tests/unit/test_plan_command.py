"""`pcivm plan`: the text report and the JSON document, from the options of a run."""

from __future__ import annotations

import json

import pytest

from pcivm.errors import PcivmError
from pcivm.options import parse_options
from pcivm.plan_command import build_plan, human_size, main


def root_ports_with_testdevs(count: int) -> list[str]:
    argv = ["-M", "q35", "-m", "1G"]
    for i in range(1, count + 1):
        argv += ["-device", f"pcie-root-port,id=rp{i},chassis={i},slot={i}"]
        argv += ["-device", f"pci-testdev,id=td{i},bus=rp{i}"]
    return argv


def run(capsys, argv: list[str]) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


def test_plan_needs_no_kernel_and_prints_the_tree_and_maps(capsys):
    out = run(capsys, root_ports_with_testdevs(2))
    assert out.startswith("machine q35, 1 GiB RAM")
    assert "00:01.0  1b36:000c rev 00 class 060400  pcie-root-port rp1" in out
    assert "forwards buses 01-01 (secondary bus 'rp1'), hot-pluggable" in out
    assert "01:00.0  1b36:0005 rev 00 class ff0000  pci-testdev td1" in out
    assert "BAR1 io" in out and "256 B" in out
    assert "IO map 0x1000-0xffff" in out
    assert "32-bit MMIO map 0xc0000000-0xfebfffff" in out
    assert "Everything has an address." in out


def test_plan_past_15_root_ports_warns_and_names_what_is_left_out(capsys):
    out = run(capsys, root_ports_with_testdevs(16))
    assert "Warnings" in out
    assert "IO space exhausted: no IO window for 1 bridge: 00:10.0 (pcie-root-port rp16)" in out
    assert "10:00.0 BAR1 (pci-testdev td16)" in out
    assert "unassigned (IO space exhausted: bridge 00:10.0 has no window)" in out


def test_plan_json_matches_the_probe_report_fields(capsys):
    document = json.loads(run(capsys, ["--json", *root_ports_with_testdevs(16)]))
    assert document["machine"] == "q35"
    assert document["layout"]["io"] == {"start": "0x1000", "end": "0xffff"}
    entries = {e["bdf"]: e for e in document["pci"]}
    assert list(entries) == sorted(entries)  # sysfs order
    port = entries["0000:00:01.0"]
    assert (port["vendor"], port["device"], port["class"], port["revision"]) == (
        "0x1b36",
        "0x000c",
        "0x060400",
        "0x00",
    )
    windows = {b["index"]: b for b in port["bars"]}
    assert set(windows) == {0, 13, 14, 15}
    # BAR0: the port's own MSI-X table and PBA, 4 KiB of 32-bit memory as in QEMU.
    assert windows[0]["type"] == "mem" and windows[0]["size"] == "0x1000"
    assert not windows[0]["prefetch"] and not windows[0]["mem64"]
    assert windows[13]["type"] == "io" and windows[13]["size"] == "0x1000"
    assert windows[15]["prefetch"] and windows[15]["mem64"]
    dev = entries["0000:01:00.0"]
    assert dev["subsystem_vendor"] == "0x0000" and dev["name"] == "td1"
    bar = next(b for b in dev["bars"] if b["index"] == 1)
    assert set(bar) == {"index", "start", "size", "type", "prefetch", "mem64"}
    assert bar["type"] == "io" and bar["size"] == "0x100" and int(bar["start"], 16) >= 0x1000
    # The 16th port: its device's IO BAR and the port's IO window are left out.
    last = entries["0000:10:00.0"]
    assert [b["index"] for b in last["bars"]] == [0]
    left = {(u["bdf"], u["index"]) for u in document["unassigned"]}
    assert left == {("0000:10:00.0", 1), ("0000:00:10.0", 13)}
    assert len(document["warnings"]) == 1


def test_plan_on_pc_places_devices_on_the_root_bus(capsys):
    argv = ["-m", "512M"] + [x for i in range(20) for x in ("-device", f"pci-testdev,id=t{i}")]
    document = json.loads(run(capsys, ["--json", *argv]))
    assert document["machine"] == "pc"
    assert document["unassigned"] == [] and document["warnings"] == []
    assert len(document["pci"]) == 22  # i440fx, PIIX3 and the 20 devices


def test_plan_is_the_same_every_time(capsys):
    argv = ["--json", *root_ports_with_testdevs(24)]
    assert run(capsys, argv) == run(capsys, argv)


def test_plan_accepts_a_full_run_command_line(capsys):
    out = run(capsys, ["-kernel", "bzImage", "-append", "console=ttyS0", "-nographic"])
    assert out.startswith("machine pc, 128 MiB RAM")


def test_plan_reports_bad_devices_as_usage_errors():
    with pytest.raises(PcivmError, match="not a valid device model"):
        main(["-device", "no-such-device"])


def test_plan_help(capsys):
    assert main(["-h"]) == 0
    assert capsys.readouterr().out.startswith("usage: pcivm plan")


def test_build_plan_uses_the_machines_memory_split():
    spec = parse_options(["-kernel", "k", "-M", "pc", "-m", "3328M"])
    plan = build_plan(spec)
    assert plan.layout.mem32.base == 0xD0000000  # 3.25 GiB of RAM stays below 4 GiB on pc


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (32, "32 B"),
        (0x1000, "4 KiB"),
        (0x2400, "9 KiB"),
        (0x2200, "8.5 KiB"),
        (64 << 30, "64 GiB"),
        ((64 << 30) - (3 << 20), "63.99 GiB"),
    ],
)
def test_human_sizes(size, text):
    assert human_size(size) == text


def test_plan_says_which_guest_can_drive_each_virtio_device(capsys):
    from pcivm import plan_command

    argv = ["-M", "q35", "--json"]
    for i in range(1, 17):
        argv += ["-device", f"pcie-root-port,id=rp{i},chassis={i}"]
        argv += ["-device", f"virtio-rng-pci,bus=rp{i},disable-legacy=off"]
    argv += ["-device", "pcie-root-port,id=rpm,chassis=40"]
    argv += ["-device", "virtio-rng-pci,bus=rpm"]  # modern only behind a port
    assert plan_command.main(argv) == 0
    drivers = json.loads(capsys.readouterr().out)["virtio_drivers"]
    old = [bdf for bdf, d in drivers.items() if d["old_guest"]]
    assert len(old) == 15  # fifteen IO windows: the sixteenth transitional device is lost
    assert all(d["modern_guest"] == "modern" for d in drivers.values())
    assert drivers["0000:11:00.0"] == {"old_guest": False, "modern_guest": "modern"}
