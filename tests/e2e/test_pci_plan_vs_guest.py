"""The guest agrees with the plan: `pcivm plan --json` against what Linux enumerated,
device by device (BDFs, ids, classes, BAR addresses, sizes and flags, bridge windows,
and which BARs were left unassigned), on a matrix of topologies.

Past the IO space (16 and 24 root ports each holding a device with an IO BAR) the last
devices come out without IO, exactly as the plan says, and the guest boots all the same.
"""

from __future__ import annotations

import pytest

from pcivm.options import parse_options
from pcivm.pci.plan_compare import compare
from pcivm.plan_command import build_plan
from pcivm.reference import GuestBoot, run_reference

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT_S = 600  # generous: a loaded 2-core host is slow, not hung


def root_ports(count: int, device: str = "pci-testdev") -> list[str]:
    out = []
    for i in range(1, count + 1):
        out += [f"pcie-root-port,id=rp{i},chassis={i}", f"{device},bus=rp{i}"]
    return out


PC_20 = [f"pci-testdev,id=t{i}" for i in range(16)] + [
    # a multifunction device: three functions in one slot
    "pci-testdev,id=mf0,addr=1a.0,multifunction=on",
    "pci-testdev,id=mf1,addr=1a.1",
    "pci-testdev,id=mf2,addr=1a.2,bar0=io:32,bar1=none",
    # a 64-bit prefetchable BAR: above 4 GiB
    "pci-testdev,id=big,addr=1b.0,bar2=mem64-pref:256M",
]
Q35_MIXED = (
    root_ports(4)
    + ["pcie-root-port,id=sw,chassis=10", "x3130-upstream,id=up,bus=sw"]
    + [f"xio3130-downstream,id=dn{i},bus=up,chassis={20 + i},slot={i}" for i in range(4)]
    + [f"pci-testdev,bus=dn{i}" for i in range(4)]
    + ["pcie-root-port,id=pb,chassis=11", "pcie-pci-bridge,id=br,bus=pb"]
    + [f"pci-testdev,bus=br,addr={i + 1}" for i in range(3)]
    + ["pci-testdev,id=onroot"]
)

# One vCPU: in the box this topology with two or more vCPUs ends in an application
# processor's triple fault, or stops the box, in about one boot of four (docs/box.md,
# Known limits). SMP is test_vmm_boot.py's to check, on a guest without these devices.

TOPOLOGIES = {
    "pc-20-devices": ("pc", PC_20),
    "q35-switch-and-pci-bridge": ("q35", Q35_MIXED),
    "q35-4-root-ports": ("q35", root_ports(4)),
    "q35-14-root-ports": ("q35", root_ports(14)),
    "q35-16-root-ports": ("q35", root_ports(16)),
    "q35-24-root-ports": ("q35", root_ports(24)),
}


def plan_json(machine: str, devices: list[str], memory: str = "1G") -> dict:
    argv = ["-M", machine, "-m", memory, "-kernel", "unused"]
    for device in devices:
        argv += ["-device", device]
    return build_plan(parse_options(argv)).to_json()


def boot(image, runner, machine, devices, run=None):
    guest = GuestBoot(
        kernel=image.vmlinux,
        initrd=image.initrd,
        machine=machine,
        devices=devices,
        run=run,
    )
    return run_reference(guest, runner=runner, timeout=BOOT_TIMEOUT_S, vmm="pcivm")


@pytest.mark.parametrize("name", list(TOPOLOGIES))
def test_guest_enumerates_exactly_what_the_plan_says(name, image, runner):
    machine, devices = TOPOLOGIES[name]
    plan = plan_json(machine, devices)
    result = boot(image, runner, machine, devices)
    assert result.returncode == 0, result.console[-3000:]
    differences = compare(plan, result.report)
    assert differences == [], "\n".join(differences)
    # Linux kept the firmware's assignment: it moved nothing, and what it could not place
    # is exactly what the plan left unassigned.
    kmsg = result.report["kmsg"]
    assert [line for line in kmsg if line.endswith(": assigned")] == []
    refused = sorted(line.split(": ")[0].split()[-1] for line in kmsg if "can't assign" in line)
    assert refused == sorted(u["bdf"] for u in plan["unassigned"])
    testdevs = [d for d in result.report["pci"] if d["device"] == "0x0005"]
    assert len(testdevs) == sum(1 for d in devices if d.startswith("pci-testdev"))


def test_io_space_runs_out_after_fifteen_windows():
    plan = plan_json("q35", root_ports(24))
    ports_without_io = [u["name"] for u in plan["unassigned"] if u["index"] == 13]
    bars_without_io = [u["name"] for u in plan["unassigned"] if u["index"] == 1]
    assert ports_without_io == [f"rp{i}" for i in range(16, 25)]
    assert len(bars_without_io) == 24 - 15
    assert any("IO space exhausted" in w for w in plan["warnings"])


def test_pc_run_checks_multifunction_and_command_register(image, runner):
    # The first test device's IO BAR, read through sysfs (port reads at the address the
    # plan gave it), shows the signature until the command register's IO bit is cleared,
    # then all-ones.
    device = "/sys/bus/pci/devices/0000:00:02.0"
    command = (
        f"dd if={device}/resource1 bs=4 count=1 2>/dev/null | od -An -c; "
        f"printf '\\002\\000' | dd of={device}/config bs=1 seek=4 count=2 conv=notrunc "
        f"2>/dev/null; dd if={device}/resource1 bs=4 count=1 2>/dev/null | od -An -tx1"
    )
    result = boot(image, runner, "pc", PC_20, run=command)
    assert result.run_exit == 0, result.console[-2000:]
    lines = result.run_output.splitlines()
    assert lines[0].split() == ["P", "C", "I", "V"]
    assert lines[1].split() == ["ff", "ff", "ff", "ff"]
    big = [d for d in result.report["pci"] if d["bdf"] == "0000:00:1b.0"][0]
    (bar2,) = [b for b in big["bars"] if b["index"] == 2]
    assert int(bar2["start"], 16) >= 1 << 32 and bar2["mem64"] and bar2["prefetch"]
    functions = {d["bdf"] for d in result.report["pci"]}
    assert {"0000:00:1a.0", "0000:00:1a.1", "0000:00:1a.2"} <= functions


def test_plan_predicts_what_the_old_guest_can_drive(image, runner):
    """Sixteen root ports, each with a transitional virtio-rng-pci: fifteen IO windows fit.
    The plan says which devices an old (legacy-only) guest can drive; the old guest binds
    exactly those, leaves the one without an IO BAR alone, and boots. (QEMU + SeaBIOS
    does not boot this machine: it panics when IO space runs out.)"""
    from pcivm.plan_command import virtio_drivers

    devices = root_ports(16, "virtio-rng-pci,disable-legacy=off")
    argv = ["-M", "q35", "-m", "1G", "-kernel", "unused"]
    for device in devices:
        argv += ["-device", device]
    plan = build_plan(parse_options(argv))
    predicted = {f.bdf: old for f, old, _modern in virtio_drivers(plan)}
    assert sorted(predicted.values()).count(False) == 1
    guest = GuestBoot(
        kernel=image.vmlinux, initrd=image.initrd, machine="q35", devices=devices, guest="legacy"
    )
    result = run_reference(guest, runner=runner, timeout=BOOT_TIMEOUT_S, vmm="pcivm")
    assert result.returncode == 0, result.console[-3000:]
    assert compare(plan.to_json(), result.report) == []
    bound = {v["pci_bdf"]: v["interface"] for v in result.report["virtio"]}
    for bdf, old_guest_can in predicted.items():
        assert (bound.get(bdf) == "legacy") == old_guest_can, (bdf, bound.get(bdf))
