"""virtio-blk under the real guest beyond the interface matrix: eight disks at once,
interrupts through INTx when the guest refuses MSI (pci=nomsi), a read-only drive that
refuses the guest's writes, a device reset and driven again (unbind/bind), data a
guest flushed being in the image, and large reads from RAM arriving whole."""

from __future__ import annotations

import hashlib
import os
import struct

import pytest

from pcivm.reference import GuestBoot, run_reference

pytestmark = pytest.mark.e2e

DISKS = 8
SIZE = 32 << 20

# Each disk: read the host's tag, write the guest's, sync. vdh (the read-only one) must
# refuse. Then unbind and rebind the first disk's PCI function (the driver resets the
# device and sets it up again) and read through it once more. Last, where the
# interrupts of the virtio devices go.
GUEST_COMMAND = (
    "for d in a b c d e f g h; do "
    "echo read vd$d $(dd if=/dev/vd$d bs=16 count=1 2>/dev/null); "
    "echo guest-vd$d | dd of=/dev/vd$d bs=512 seek=8 conv=fsync 2>/dev/null; "
    "echo write vd$d $?; done; "
    "p=$(readlink -f /sys/block/vda/device); p=${p%/*}; f=${p##*/}; "
    "echo $f > /sys/bus/pci/drivers/virtio-pci/unbind; "
    "echo $f > /sys/bus/pci/drivers/virtio-pci/bind; sleep 1; "
    "echo again $(dd if=/dev/vda bs=16 count=1 2>/dev/null); "
    "grep virtio /proc/interrupts"
)


def test_eight_disks_intx_readonly_and_rebind(image, runner, tmp_path):
    extra, paths = [], []
    for i in range(DISKS):
        path = tmp_path / f"disk{i}.img"
        with open(path, "wb") as f:
            f.truncate(SIZE)
            f.write(f"host-tag-{i}".encode().ljust(16, b"."))
        paths.append(path)
        readonly = ",readonly=on" if i == DISKS - 1 else ""
        extra += ["-drive", f"file={path},if=virtio,format=raw,serial=disk{i}{readonly}"]
    readonly_digest = hashlib.sha256(paths[-1].read_bytes()).hexdigest()
    boot = GuestBoot(
        kernel=image.vmlinux,
        initrd=image.initrd,
        extra_args=extra,
        append=["pci=nomsi"],
        probe=False,
        run=GUEST_COMMAND,
    )
    result = run_reference(boot, runner=runner, timeout=600, vmm="pcivm")
    assert result.run_exit == 0, result.console[-3000:]
    lines = result.run_output.splitlines()
    for i, letter in enumerate("abcdefgh"):
        assert f"read vd{letter} host-tag-{i}......" in lines, lines
    for i in range(DISKS - 1):
        with open(paths[i], "rb") as f:
            f.seek(8 * 512)
            assert f.read(9) == f"guest-vd{'abcdefgh'[i]}".encode()
    assert "write vdh 0" not in lines  # the read-only disk refused the write
    assert hashlib.sha256(paths[-1].read_bytes()).hexdigest() == readonly_digest
    assert "again host-tag-0......" in lines
    interrupts = [ln for ln in lines if "virtio" in ln]
    assert interrupts and not any("MSI" in ln for ln in interrupts), interrupts
    assert all("IO-APIC" in ln for ln in interrupts), interrupts


# Three passes over the disk in 1 MiB O_DIRECT reads (dd's one buffer: indirect tables of
# ~256 pages that repeat with the request's tag), each summed.
LARGE_READS_MIB = 8
LARGE_READS = (
    "for pass in 1 2 3; do "
    f"echo sum $pass $(dd if=/dev/vda bs=1M count={LARGE_READS_MIB} iflag=direct "
    "2>/dev/null | sha256sum); done"
)


def test_large_reads_from_ram_arrive_whole(image, box, runner, tmp_path):
    # The image in the box's tmpfs, as bench/blk.py has it: every read is done at once on
    # the kick thread, the first runs of large ones cut in two between it and an io_uring
    # worker (split_read.py tries cut reads first), tables seen before taken as they were
    # (queue.py's _RecentTables). Every 4 KiB page is stamped with its number.
    pages = (LARGE_READS_MIB << 20) // 4096
    data = b"".join(struct.pack("<Q", page) * 512 for page in range(pages))
    source = tmp_path / "stamped.img"
    source.write_bytes(data)
    in_ram = f"/dev/shm/pcivm-e2e-{os.getpid()}-stamped.img"
    status, _out, err = box.run_capture(["cp", str(source), in_ram], timeout=120)
    assert status == 0, err
    try:
        boot = GuestBoot(
            kernel=image.vmlinux,
            initrd=image.initrd,
            extra_args=["-drive", f"file={in_ram},if=virtio,format=raw,readonly=on"],
            probe=False,
            run=LARGE_READS,
        )
        result = run_reference(boot, runner=runner, timeout=300, vmm="pcivm")
    finally:
        box.run_capture(["rm", "-f", in_ram], timeout=60)
    assert result.run_exit == 0, result.console[-3000:]
    digest = hashlib.sha256(data).hexdigest()
    sums = [line for line in result.run_output.splitlines() if line.startswith("sum ")]
    assert sums == [f"sum {n} {digest} -" for n in (1, 2, 3)], result.console[-3000:]
