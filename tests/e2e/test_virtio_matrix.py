"""virtio over the three PCI interfaces with the real guest's drivers, checked against
QEMU 7.2 cell by cell.

The matrix: {-M pc, -M q35 behind pcie-root-ports} x {legacy only (disable-modern=on),
transitional (disable-legacy=off), modern only (disable-legacy=on)} x {the modern guest,
the old guest (a legacy-only virtio_pci), a modern guest with virtio_pci.force_legacy=1}.
One boot per (VMM, machine, guest) carries all six devices (an rng and a disk of each
kind), so every cell is one device of one boot. For each device the outcome is: which
driver bound it and through which interface, whether /dev/hwrng read 16 bytes from it,
and whether a pattern the host wrote was read and a pattern the guest wrote (and synced)
reached the image. QEMU's outcome for the same cell is asserted to be pcivm's.
"""

from __future__ import annotations

import pytest

from pcivm.reference import GuestBoot, run_reference

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT_S = 600  # generous: a loaded 2-core host is slow, not hung
KINDS = {
    "L": "disable-legacy=off,disable-modern=on",
    "T": "disable-legacy=off,disable-modern=off",
    "M": "disable-legacy=on,disable-modern=off",
}
GUESTS = {
    "modern": ("modern", []),
    "old": ("legacy", []),
    "force_legacy": ("modern", ["virtio_pci.force_legacy=1"]),
}
IMAGE_SIZE = 64 << 20
HOST_PATTERN_OFFSET = 1 << 20
GUEST_PATTERN_SECTOR = 4096
# For each disk: its PCI function, then what it reads at the host's pattern; then it
# writes its own name and syncs. Then every hwrng the guest has: 16 bytes from each.
GUEST_COMMAND = (
    "for b in /sys/block/vd*; do d=${b##*/}; p=$(readlink -f $b/device); p=${p%/*}; "
    "echo blk ${p##*/} $(dd if=/dev/$d bs=16 count=1 skip=65536 2>/dev/null); "
    "echo GUEST-${p##*/} | dd of=/dev/$d bs=512 seek=4096 conv=fsync 2>/dev/null; done; "
    "for r in $(cat /sys/class/misc/hw_random/rng_available); do "
    "echo $r > /sys/class/misc/hw_random/rng_current; "
    "echo rng $r $(dd if=/dev/hwrng bs=16 count=1 2>/dev/null | wc -c); done; "
    "grep 'PCIe PME' /proc/interrupts | tr -s ' '"
)


def layout(machine: str) -> dict[str, tuple[str, str]]:
    """device id -> (bdf, where to plug it)."""
    out = {}
    for i, name in enumerate(f"{dev}{kind}" for dev in ("rng", "blk") for kind in KINDS):
        if machine == "pc":
            out[name] = (f"0000:00:{4 + i:02x}.0", f"addr={4 + i:x}")
        else:
            out[name] = (f"0000:{i + 1:02x}:00.0", f"bus=rp{i + 1}")
    return out


def boot_args(machine: str, images: dict[str, str]) -> tuple[list[str], list[str]]:
    devices, extra = [], []
    places = layout(machine)
    if machine == "q35":
        devices += [f"pcie-root-port,id=rp{i},chassis={i}" for i in range(1, len(places) + 1)]
    for kind, props in KINDS.items():
        devices.append(f"virtio-rng-pci,id=rng{kind},{props},{places['rng' + kind][1]}")
    for kind, props in KINDS.items():
        extra += ["-drive", f"if=none,id=d{kind},format=raw,file={images[kind]}"]
        devices.append(
            f"virtio-blk-pci,id=blk{kind},drive=d{kind},{props},{places['blk' + kind][1]}"
        )
    return devices, extra


def make_images(directory) -> dict[str, str]:
    images = {}
    for kind in KINDS:
        path = directory / f"disk{kind}.img"
        with open(path, "wb") as f:
            f.truncate(IMAGE_SIZE)
            f.seek(HOST_PATTERN_OFFSET)
            f.write(f"HOST-{kind}-PATTERN".encode())
        images[kind] = str(path)
    return images


def outcome(result, machine: str, images: dict[str, str]) -> dict[str, tuple]:
    """device id -> (driver, interface, works) as the guest saw and did it."""
    report = result.report
    places = layout(machine)
    by_bdf = {bdf: name for name, (bdf, _) in places.items()}
    cells: dict[str, tuple] = {}
    lines = (result.run_output or "").splitlines()
    # hwrng names (virtio_rng.N) do not say which PCI function they are: every rng the
    # guest bound must have given 16 bytes, one line each.
    rng_lines = [ln for ln in lines if ln.startswith("rng virtio_rng.")]
    bound_rngs = [v for v in report["virtio"] if v["driver"] == "virtio_rng"]
    rngs_work = len(rng_lines) == len(bound_rngs) and all(ln.endswith(" 16") for ln in rng_lines)
    for name, (bdf, _) in places.items():
        (pci,) = [d for d in report["pci"] if d["bdf"] == bdf]
        bound = [v for v in report["virtio"] if v["pci_bdf"] == bdf]
        interface = bound[0]["interface"] if bound else None
        driver = bound[0]["driver"] if bound else None
        if name.startswith("blk"):
            kind = name[3:]
            read_back = [ln for ln in lines if ln.startswith(f"blk {bdf} ")]
            with open(images[kind], "rb") as f:
                f.seek(GUEST_PATTERN_SECTOR * 512)
                written = f.read(32).split(b"\n")[0].decode(errors="replace")
            works = (
                bool(read_back)
                and read_back[0].endswith(f"HOST-{kind}-PATTERN")
                and (written == f"GUEST-{bdf}")
            )
        else:
            works = driver == "virtio_rng" and rngs_work
        cells[name] = (pci["driver"], driver, interface, works)
    assert set(by_bdf.values()) == set(cells)
    # The PCIe ports themselves (q35): their own BARs (QEMU's root port has an MSI-X BAR0)
    # and how the guest's port driver gets its PME interrupt: "PCI-MSI" (through that
    # BAR's MSI-X table) or "IO-APIC" (INTx).
    ports = [d for d in report["pci"] if d["class"] == "0x060400"]
    cells["ports"] = tuple(
        (d["bdf"], tuple((b["index"], b["size"], b["type"]) for b in d["bars"] if b["index"] < 13))
        for d in ports
    )
    pme = [ln.split()[2] for ln in lines if ln.endswith("PCIe PME") or "PCIe PME," in ln]
    cells["port interrupts"] = tuple(sorted(pme))
    return cells


def run_cell(image, runner, directory, vmm, machine, guest_name):
    guest, append = GUESTS[guest_name]
    directory.mkdir()
    images = make_images(directory)
    devices, extra = boot_args(machine, images)
    boot = GuestBoot(
        kernel=image.vmlinux if vmm == "pcivm" else image.kernel.bzimage,
        initrd=image.initrd,
        machine=machine,
        devices=devices,
        extra_args=extra,
        guest=guest,
        append=append,
        run=GUEST_COMMAND,
    )
    result = run_reference(boot, runner=runner, timeout=BOOT_TIMEOUT_S, vmm=vmm)
    assert result.run_exit == 0, result.console[-3000:]
    return outcome(result, machine, images)


EXPECTED = {
    # What a driver generation can drive, per kind: (bound, interface).
    "modern": {"L": "legacy", "T": "modern", "M": "modern"},
    "old": {"L": "legacy", "T": "legacy", "M": None},
    "force_legacy": {"L": "legacy", "T": "legacy", "M": "modern"},
}


@pytest.mark.parametrize("machine", ["pc", "q35"])
@pytest.mark.parametrize("guest_name", list(GUESTS))
def test_each_cell_behaves_as_under_qemu(image, runner, tmp_path, machine, guest_name):
    qemu = run_cell(image, runner, tmp_path / "qemu", "qemu", machine, guest_name)
    pcivm = run_cell(image, runner, tmp_path / "pcivm", "pcivm", machine, guest_name)
    assert pcivm == qemu, f"pcivm {pcivm}\nQEMU  {qemu}"
    if machine == "q35":
        assert pcivm["ports"] and all(bars for _, bars in pcivm["ports"]), pcivm["ports"]
        assert len(pcivm["port interrupts"]) == len(pcivm["ports"]), pcivm["port interrupts"]
        # Linux 6.1 names the chip of MSI and MSI-X vectors alike: "PCI-MSI".
        assert all(i.startswith("PCI-MSI") for i in pcivm["port interrupts"]), pcivm
    for name, cell in pcivm.items():
        if name in ("ports", "port interrupts"):
            continue
        pci_driver, driver, interface, works = cell
        expected = EXPECTED[guest_name][name[3:]]
        assert interface == expected, (name, pcivm[name])
        if expected is None:
            assert (pci_driver, driver, works) == (None, None, False), (name, pcivm[name])
        else:
            assert pci_driver == "virtio-pci" and works, (name, pcivm[name])
