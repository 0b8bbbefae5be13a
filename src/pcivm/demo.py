"""`make demo`: the guest image booted under pcivm and under the reference QEMU, the
modern guest and the old guest, with what each saw side by side.

Runs where a hardware-assisted KVM exists: directly on such a host, else in the box.
"""

from __future__ import annotations

import sys
import time

from pcivm.reference import GuestBoot, ReferenceResult, box_runner, run_reference

# The same -device list for both VMMs: pcivm takes QEMU's options. A transitional and a
# modern-only virtio-rng-pci: the old guest can drive only the first.
DEVICES = ("virtio-rng-pci,addr=4", "virtio-rng-pci,addr=5,disable-legacy=on", "pci-testdev")
MACHINE = "pc"
TIMEOUT_S = 240


def _bars(entry: dict) -> str:
    parts = []
    for bar in entry["bars"]:
        kind = "io" if bar["type"] == "io" else ("mem64" if bar["mem64"] else "mem")
        parts.append(f"BAR{bar['index']} {kind} {bar['start']}+{bar['size']}")
    return ", ".join(parts) or "-"


def _describe(result: ReferenceResult) -> list[str]:
    report = result.report or {}
    lines = [
        f"kernel {report.get('kernel')}, guest '{report.get('guest')}', "
        f"report after {result.elapsed_s:.1f} s (guest uptime {report.get('uptime')} s)",
    ]
    for entry in report.get("pci", []):
        lines.append(
            f"  {entry['bdf'][5:]} {entry['vendor'][2:]}:{entry['device'][2:]} "
            f"class {entry['class'][2:]} driver {entry['driver'] or '-'}: {_bars(entry)}"
        )
    for device in report.get("virtio", []):
        lines.append(
            f"  virtio {device['name']} type {device['device_id']} on {device['pci_bdf']}: "
            f"{device['driver'] or 'no driver'}, {device['interface']} interface"
        )
    return lines


def main() -> int:
    from pcivm.box.api import open_box
    from pcivm.box_command import kernel_provider
    from pcivm.guest.image import ensure_image

    print("pcivm demo: building (or finding) the guest image ...", flush=True)
    image = ensure_image()
    print(f"  kernel {image.kernel.release}: {image.kernel.bzimage}")
    print(f"  initramfs {image.initrd}")
    print("starting a machine with a hardware-assisted KVM (the box, where needed) ...")
    started = time.monotonic()
    with open_box(kernel_provider) as box:
        print(f"  ready in {time.monotonic() - started:.1f} s\n")

        runner = box_runner(box)

        for guest in ("modern", "legacy"):
            title = (
                "the modern guest"
                if guest == "modern"
                else "the old guest (legacy-only virtio_pci)"
            )
            print(f"=== {title}, -M {MACHINE} -device {' -device '.join(DEVICES)}")
            for vmm in ("qemu", "pcivm"):
                boot = GuestBoot(
                    kernel=image.vmlinux if vmm == "pcivm" else image.kernel.bzimage,
                    initrd=image.initrd,
                    machine=MACHINE,
                    devices=DEVICES,
                    guest=guest,
                )
                name = "QEMU 7.2 + SeaBIOS" if vmm == "qemu" else "pcivm (direct boot)"
                try:
                    result = run_reference(boot, runner=runner, timeout=TIMEOUT_S, vmm=vmm)
                except Exception as exc:  # show what failed and go on with the other VMM
                    print(f"--- {name}: failed: {exc}\n")
                    continue
                print(f"--- {name}")
                print("\n".join(_describe(result)) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
