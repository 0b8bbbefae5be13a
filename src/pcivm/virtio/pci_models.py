"""The `-device virtio-*-pci` models, with QEMU's properties:

- `disable-legacy=on|off|auto`: auto (the default) means modern only when plugged into
  a PCI Express port (not the root bus), transitional elsewhere — QEMU's rule
  (hw/virtio/virtio-pci.c: a PCI Express bus that is not a root bus);
- `disable-modern=on|off` (default off);
- `vectors=N`: MSI-X vectors (default 2: the queue and configuration changes);
- per device: virtio-rng-pci `max-bytes`, `period`; virtio-blk-pci `drive`, `serial`.
"""

from __future__ import annotations

from pcivm.errors import UsageError
from pcivm.pci.bus import PciBus
from pcivm.pci.topology import (
    DeviceModel,
    PropertyError,
    Topology,
    parse_bool,
    parse_int,
    register_model,
)
from pcivm.virtio.blk import BlockBackend, VirtioBlk
from pcivm.virtio.constants import VIRTIO_ID_BLOCK, VIRTIO_ID_RNG
from pcivm.virtio.pci_transport import VirtioPciFunction
from pcivm.virtio.rng import VirtioRng

PCI_CLASS_STORAGE_SCSI = 0x010000
PCI_CLASS_OTHERS = 0xFF0000
DEFAULT_VECTORS = 2
MAX_VECTORS = 2048
BLK_CONFIG_SIZE = 60  # struct virtio_blk_config up to write_zeroes_may_unmap
RNG_CONFIG_SIZE = 0

TRANSPORT_PROPS = frozenset({"disable-legacy", "disable-modern", "vectors"})


def _interfaces(driver: str, props: dict[str, str], bus: PciBus) -> tuple[bool, bool]:
    """(legacy, modern) from disable-legacy/disable-modern and where the device sits."""
    on_express_port = bus.express and not bus.is_root
    legacy_setting = props.get("disable-legacy", "auto").lower()
    if legacy_setting == "auto":
        disable_legacy = on_express_port
    else:
        disable_legacy = parse_bool(driver, "disable-legacy", legacy_setting)
    disable_modern = parse_bool(driver, "disable-modern", props.get("disable-modern", "off"))
    if disable_legacy and disable_modern:
        raise PropertyError(
            f"{driver}: device cannot work as neither modern nor legacy mode is enabled"
        )
    return not disable_legacy, not disable_modern


def _vectors(driver: str, props: dict[str, str]) -> int:
    return parse_int(driver, "vectors", props.get("vectors", str(DEFAULT_VECTORS)), 1, MAX_VECTORS)


def _rng(name: str, props: dict[str, str], bus: PciBus, _topology: Topology):
    driver = "virtio-rng-pci"
    legacy, modern = _interfaces(driver, props, bus)
    max_bytes = props.get("max-bytes")
    limit = parse_int(driver, "max-bytes", max_bytes, 1) if max_bytes is not None else None
    period = parse_int(driver, "period", props.get("period", "1000"), 1, 2**31)

    def make(memory, label):
        return VirtioRng(memory, max_bytes=limit, period_ms=period, label=label)

    return VirtioPciFunction(
        name, VIRTIO_ID_RNG, PCI_CLASS_OTHERS,
        legacy=legacy, modern=modern, express_endpoint=bus.express and not bus.is_root,
        vectors=_vectors(driver, props), config_size=RNG_CONFIG_SIZE, make_device=make,
    )  # fmt: skip


def _blk(name: str, props: dict[str, str], bus: PciBus, topology: Topology):
    driver = "virtio-blk-pci"
    legacy, modern = _interfaces(driver, props, bus)
    drive_id = props.get("drive")
    if not drive_id:
        raise PropertyError(f"{driver}: drive property not set")
    drive = topology.drives.get(drive_id)
    if drive is None:
        raise PropertyError(f"{driver}: Property '{driver}.drive' can't find value '{drive_id}'")
    if drive_id in topology.used_drives:
        raise UsageError(f"{driver}: drive '{drive_id}' is already in use by another device")
    topology.used_drives.add(drive_id)
    serial = props.get("serial", drive.serial)

    def make(memory, label):
        backend = BlockBackend(drive.file, read_only=drive.read_only, cache=drive.cache)
        return VirtioBlk(memory, backend, serial=serial, label=label)

    return VirtioPciFunction(
        name, VIRTIO_ID_BLOCK, PCI_CLASS_STORAGE_SCSI,
        legacy=legacy, modern=modern, express_endpoint=bus.express and not bus.is_root,
        vectors=_vectors(driver, props), config_size=BLK_CONFIG_SIZE, make_device=make,
    )  # fmt: skip


register_model(DeviceModel("virtio-rng-pci", TRANSPORT_PROPS | {"max-bytes", "period"}, _rng))
register_model(DeviceModel("virtio-blk-pci", TRANSPORT_PROPS | {"drive", "serial"}, _blk))
