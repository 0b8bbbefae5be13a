"""The reference QEMU boots the modern and the old guest; what each binds.

Each boot costs about 15 s in the box, so one boot per guest answers every question:
a transitional virtio-rng-pci (the default on -M pc) and a modern-only one
(disable-legacy=on) side by side, the probe report, and a read of /dev/hwrng.

Set PCIVM_REFERENCE_ACCEL=tcg to run QEMU with TCG right on the host instead of under
KVM in the box (slower per instruction, but no box needed).
"""

from __future__ import annotations

import os

import pytest

from pcivm.reference import GuestBoot, host_runner, run_reference

pytestmark = pytest.mark.e2e

TRANSITIONAL_RNG = "virtio-rng-pci,addr=04.0"
MODERN_ONLY_RNG = "virtio-rng-pci,addr=05.0,disable-legacy=on,disable-modern=off"
TRANSITIONAL_BDF = "0000:00:04.0"
MODERN_ONLY_BDF = "0000:00:05.0"
VIRTIO_VENDOR = "0x1af4"
VIRTIO_RNG_ID = "0x0004"  # virtio device type 4: entropy source
# Tainted flags of an unsigned out-of-tree module: TAINT_OOT_MODULE (O, 4096) and
# TAINT_UNSIGNED_MODULE (E, 8192).
TAINT_OE = 4096 | 8192
# Reads 16 random bytes through whichever rng the guest's hwrng core picked, then shows
# the taint flags (the old guest's module is out of tree and unsigned).
GUEST_COMMAND = (
    "dd if=/dev/hwrng bs=16 count=1 2>/dev/null | od -An -tx1; cat /proc/sys/kernel/tainted"
)
BOOT_TIMEOUT_S = 600  # generous: a loaded 2-core host is slow, not hung


@pytest.fixture(scope="module")
def qemu(request):
    """(runner, accel) for QEMU: inside the box under KVM, or TCG on the host."""
    if os.environ.get("PCIVM_REFERENCE_ACCEL") == "tcg":
        return host_runner, "tcg"
    return request.getfixturevalue("runner"), "kvm"


def boot_pc(image, qemu, guest):
    runner, accel = qemu
    boot = GuestBoot(
        kernel=image.kernel.bzimage,
        initrd=image.initrd,
        machine="pc",
        devices=[TRANSITIONAL_RNG, MODERN_ONLY_RNG],
        guest=guest,
        run=GUEST_COMMAND,
        accel=accel,
    )
    return run_reference(boot, runner=runner, timeout=BOOT_TIMEOUT_S)


@pytest.fixture(scope="module")
def modern(image, qemu):
    return boot_pc(image, qemu, "modern")


@pytest.fixture(scope="module")
def old(image, qemu):
    return boot_pc(image, qemu, "legacy")


def pci(report, bdf):
    (entry,) = [d for d in report["pci"] if d["bdf"] == bdf]
    return entry


def virtio_on(report, bdf):
    return [v for v in report["virtio"] if v["pci_bdf"] == bdf]


def random_bytes(result) -> list[str]:
    return result.run_output.splitlines()[0].split()


def tainted(result) -> int:
    return int(result.run_output.splitlines()[-1])


def test_qemu_gives_the_two_rngs_their_reference_layout(modern):
    report = modern.report
    transitional = pci(report, TRANSITIONAL_BDF)
    modern_only = pci(report, MODERN_ONLY_BDF)
    assert (transitional["vendor"], transitional["device"]) == (VIRTIO_VENDOR, "0x1005")
    assert transitional["revision"] == "0x00" and transitional["subsystem_device"] == "0x0004"
    assert [b["index"] for b in transitional["bars"] if b["type"] == "io"] == [0]
    assert (modern_only["device"], modern_only["revision"]) == ("0x1044", "0x01")
    assert not [b for b in modern_only["bars"] if b["type"] == "io"]
    assert any(b["index"] == 4 and b["mem64"] and b["prefetch"] for b in modern_only["bars"])


def test_modern_guest_binds_both_over_the_modern_interface(modern, image):
    report = modern.report
    assert report["guest"] == "modern" and report["kernel"] == image.kernel.release
    assert report["insmod_failed"] == []
    for bdf in (TRANSITIONAL_BDF, MODERN_ONLY_BDF):
        assert pci(report, bdf)["driver"] == "virtio-pci"
        (device,) = virtio_on(report, bdf)
        assert (device["device_id"], device["driver"]) == (VIRTIO_RNG_ID, "virtio_rng")
        assert device["interface"] == "modern"
    assert modern.run_exit == 0 and len(random_bytes(modern)) == 16
    assert tainted(modern) & TAINT_OE == 0


def test_old_guest_binds_the_transitional_rng_through_its_io_bar(old):
    report = old.report
    assert report["guest"] == "legacy" and report["insmod_failed"] == []
    assert pci(report, TRANSITIONAL_BDF)["driver"] == "virtio-pci"
    (device,) = virtio_on(report, TRANSITIONAL_BDF)
    assert device["driver"] == "virtio_rng" and device["interface"] == "legacy"
    assert device["features"][32] == "0"  # no VIRTIO_F_VERSION_1
    assert old.run_exit == 0 and len(random_bytes(old)) == 16


def test_old_guest_leaves_the_modern_only_rng_alone(old):
    report = old.report
    assert pci(report, MODERN_ONLY_BDF)["driver"] is None
    assert virtio_on(report, MODERN_ONLY_BDF) == []


def test_old_guest_runs_the_projects_own_module(old):
    assert tainted(old) & TAINT_OE == TAINT_OE
    assert "pcivm.guest=legacy" in old.report["cmdline"]
    assert any("out-of-tree module" in line for line in old.report["kmsg"])


@pytest.fixture(scope="module")
def old_on_q35(image, qemu):
    """The old guest on PCI Express: one rng on the root bus, one behind a root port."""
    runner, accel = qemu
    boot = GuestBoot(
        kernel=image.kernel.bzimage,
        initrd=image.initrd,
        machine="q35",
        devices=[
            "virtio-rng-pci,addr=04.0",
            "pcie-root-port,id=rp1,chassis=1,addr=06.0",
            "virtio-rng-pci,bus=rp1",
        ],
        guest="legacy",
        accel=accel,
    )
    return run_reference(boot, runner=runner, timeout=BOOT_TIMEOUT_S)


def test_q35_root_port_makes_the_device_modern_only_and_the_old_guest_blind(old_on_q35):
    report = old_on_q35.report
    on_root_bus = pci(report, "0000:00:04.0")
    behind_port = pci(report, "0000:01:00.0")
    # disable-legacy=auto: transitional on pcie.0, modern only behind a PCIe port
    assert (on_root_bus["device"], on_root_bus["driver"]) == ("0x1005", "virtio-pci")
    assert (behind_port["device"], behind_port["driver"]) == ("0x1044", None)
    assert [v["interface"] for v in report["virtio"]] == ["legacy"]
    # SeaBIOS gives a port with no IO below it no IO window; Linux then assigns one
    # itself (a hotplug reservation, "add_size 1000"), seen as resource 13.
    port = pci(report, "0000:00:06.0")
    assert [b["size"] for b in port["bars"] if b["index"] == 13] == ["0x1000"]
    assert any(
        "0000:00:06.0: bridge window [io" in line and line.endswith("assigned")
        for line in report["kmsg"]
    )
