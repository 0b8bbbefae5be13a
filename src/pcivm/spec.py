"""What the user asked for, as plain data: the output of option parsing, the input of the
machine builder. Nothing here touches the host."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class SerialSpec:
    kind: str  # "stdio", "file" or "none"
    path: Path | None = None


@dataclass(frozen=True)
class DeviceSpec:
    """One -device option: the driver name and its properties, in the order given."""

    driver: str
    props: tuple[tuple[str, str], ...] = ()
    text: str = ""

    def get(self, key: str, default: str | None = None) -> str | None:
        for name, value in self.props:
            if name == key:
                return value
        return default


@dataclass(frozen=True)
class DriveSpec:
    """One -drive option: a disk image and how to open it."""

    id: str
    file: Path
    interface: str = "virtio"  # "virtio" (a virtio-blk-pci of its own) or "none"
    read_only: bool = False
    cache: str = "writeback"
    serial: str = ""


@dataclass(frozen=True)
class VmSpec:
    memory: int
    kernel: Path
    initrd: Path | None = None
    append: str = ""
    smp: int = 1
    machine: str = "pc"
    serial: SerialSpec = field(default_factory=lambda: SerialSpec("stdio"))
    no_reboot: bool = False
    name: str | None = None
    debug: bool = False
    devices: tuple[DeviceSpec, ...] = ()
    drives: tuple[DriveSpec, ...] = ()
