"""Comparing a plan with the guest's probe report, field by field."""

from __future__ import annotations

import copy

from pcivm.pci.allocator import allocate
from pcivm.pci.bus import PciBus
from pcivm.pci.layout import GiB, machine_layout
from pcivm.pci.plan_compare import compare
from pcivm.pci.testdev import PciTestDev
from pcivm.pci.topology_devices import PcieRootPort, Q35Host

PROBE_KEYS = (
    "bdf",
    "vendor",
    "device",
    "subsystem_vendor",
    "subsystem_device",
    "revision",
    "class",
)


def plan_json(ports: int = 2) -> dict:
    root = PciBus("pcie.0", express=True)
    root.attach(Q35Host(), 0, 0)
    for i in range(ports):
        port = PcieRootPort(f"rp{i}")
        root.attach(port, 1 + i, 0)
        port.secondary.attach(PciTestDev(f"td{i}"), 0, 0)
    return allocate(root, machine_layout("q35", 1 * GiB, 1 * GiB)).to_json()


def as_probe(plan: dict) -> dict:
    """What a guest that kept every firmware assignment would report."""
    pci = []
    for entry in plan["pci"]:
        seen = {key: entry[key] for key in PROBE_KEYS}
        seen["driver"] = None
        seen["bars"] = copy.deepcopy(entry["bars"])
        pci.append(seen)
    return {"kernel": "6.1", "guest": "modern", "pci": pci, "virtio": []}


def entry(report: dict, bdf: str) -> dict:
    return next(e for e in report["pci"] if e["bdf"] == bdf)


def test_a_guest_that_keeps_the_plan_has_no_differences():
    plan = plan_json()
    assert compare(plan, as_probe(plan)) == []


def test_hex_strings_compare_by_value_not_by_spelling():
    plan = plan_json()
    probe = as_probe(plan)
    dev = entry(probe, "0000:01:00.0")
    dev["vendor"] = "0x1B36"
    dev["bars"][0]["start"] = "0x" + dev["bars"][0]["start"][2:].upper()
    assert compare(plan, probe) == []


def test_missing_and_extra_devices_are_named():
    plan = plan_json()
    probe = as_probe(plan)
    probe["pci"] = [e for e in probe["pci"] if e["bdf"] != "0000:02:00.0"]
    probe["pci"].append({"bdf": "0000:00:1f.3", "vendor": "0x8086", "bars": []})
    assert compare(plan, probe) == [
        "0000:02:00.0: in the plan, not seen by the guest",
        "0000:00:1f.3: seen by the guest, not in the plan",
    ]


def test_id_differences():
    plan = plan_json()
    probe = as_probe(plan)
    entry(probe, "0000:01:00.0")["revision"] = "0x01"
    assert compare(plan, probe) == ["0000:01:00.0: revision is 0x00 in the plan, 0x01 in the guest"]


def test_bar_address_size_and_flag_differences():
    plan = plan_json()
    probe = as_probe(plan)
    bar = entry(probe, "0000:01:00.0")["bars"][0]
    bar["start"] = hex(int(bar["start"], 16) + 0x1000)
    bar["prefetch"] = True
    diffs = compare(plan, probe)
    assert len(diffs) == 2
    assert diffs[0].startswith("0000:01:00.0 BAR0: start ")
    assert diffs[1] == "0000:01:00.0 BAR0: prefetch False in the plan, True in the guest"


def test_a_bar_the_guest_could_not_place():
    plan = plan_json()
    probe = as_probe(plan)
    dev = entry(probe, "0000:01:00.0")
    dev["bars"] = [b for b in dev["bars"] if b["index"] != 1]
    (diff,) = compare(plan, probe)
    assert diff.startswith("0000:01:00.0 BAR1: plan [io 0x")
    assert diff.endswith("the guest left it without address")


def test_a_bar_the_plan_left_unassigned_but_the_guest_placed():
    plan = plan_json(16)  # the 16th port has no IO window, its device no IO BAR
    probe = as_probe(plan)
    entry(probe, "0000:10:00.0")["bars"].append(
        {"index": 1, "start": "0x1000", "size": "0x100", "type": "io", "prefetch": False,
         "mem64": False}
    )  # fmt: skip
    (diff,) = compare(plan, probe)
    assert diff == (
        "0000:10:00.0 BAR1: the plan leaves it unassigned (IO space exhausted: bridge 00:10.0"
        " has no window), the guest has it at [io 0x1000-0x10ff]"
    )


def test_bridge_windows_compare_unless_asked_not_to():
    plan = plan_json()
    probe = as_probe(plan)
    port = entry(probe, "0000:00:01.0")
    port["bars"] = [b for b in port["bars"] if b["index"] != 13]
    (diff,) = compare(plan, probe)
    assert diff.startswith("0000:00:01.0 IO window: plan [io 0x")
    assert compare(plan, probe, windows=False) == []


def test_rom_and_other_resources_are_not_compared():
    plan = plan_json()
    probe = as_probe(plan)
    entry(probe, "0000:01:00.0")["bars"].append(
        {"index": 6, "start": "0xfe000000", "size": "0x40000", "type": "mem", "prefetch": False,
         "mem64": False}
    )  # fmt: skip
    assert compare(plan, probe) == []
