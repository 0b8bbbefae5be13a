"""QEMU-style command-line parsing: `pcivm -m 1G -kernel bzImage ...` -> VmSpec.

Errors read like QEMU's ("-foo: invalid option") and name the culprit; they are
UsageErrors, so the CLI prints one line and exits 1.
"""

from __future__ import annotations

import re
from pathlib import Path

from pcivm.errors import UsageError
from pcivm.spec import DeviceSpec, DriveSpec, SerialSpec, VmSpec

DEFAULT_MEMORY = 128 << 20  # QEMU's default -m
MAX_VCPUS = 255  # xAPIC ids are 8 bits; 0xff is the broadcast id
MACHINES = ("pc", "q35")

# Options that take an argument, and flags that take none. Options QEMU users pass that
# change nothing here (pcivm always uses KVM, never a display) are accepted as such.
WITH_ARGUMENT = {
    "m",
    "kernel",
    "initrd",
    "append",
    "serial",
    "name",
    "smp",
    "machine",
    "M",
    "accel",
    "cpu",
    "display",
    "vga",
    "monitor",
}
FLAGS = {"nographic", "no-reboot", "enable-kvm", "nodefaults", "no-user-config", "d", "debug"}

# Options that may be given more than once; each occurrence is kept, in order.
REPEATABLE = {"device", "drive"}
WITH_ARGUMENT |= REPEATABLE

_SIZE_SUFFIXES = {"": 20, "k": 10, "m": 20, "g": 30, "t": 40, "b": 0}


def parse_size(text: str, option: str, default_shift: int = 20) -> int:
    """QEMU's size syntax: a bare number is MiB for -m; K/M/G/T suffixes (optional 'iB')."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kKmMgGtTbB]?)(?:i?[bB])?", text.strip())
    if not match:
        raise UsageError(f"{option}: invalid size '{text}'")
    number, suffix = match.groups()
    shift = _SIZE_SUFFIXES[suffix.lower()] if suffix else default_shift
    value = int(float(number) * (1 << shift))
    if value <= 0:
        raise UsageError(f"{option}: size must be positive: '{text}'")
    return value


def split_qemu_opts(text: str) -> list[str]:
    """Split QEMU's 'a,b=c,d=e,,f' at single commas; a doubled comma is a literal one."""
    parts, current, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == ",":
            if i + 1 < len(text) and text[i + 1] == ",":
                current.append(",")
                i += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def parse_device(text: str) -> DeviceSpec:
    """'-device driver,key=value,...' (QEMU also takes driver=NAME as a property)."""
    parts = split_qemu_opts(text)
    driver = None
    props: list[tuple[str, str]] = []
    for i, part in enumerate(parts):
        key, sep, value = part.partition("=")
        if not sep:
            if i == 0:
                driver = key
                continue
            raise UsageError(f"-device {text}: '{part}' needs a value (key=value)")
        if not key:
            raise UsageError(f"-device {text}: empty property name")
        if key == "driver":
            driver = value
        else:
            props.append((key, value))
    if not driver:
        raise UsageError(f"-device {text}: no device model given")
    return DeviceSpec(driver, tuple(props), text)


DRIVE_KEYS = {"file", "if", "id", "format", "readonly", "cache", "serial", "media", "index"}
CACHE_MODES = ("none", "writeback", "writethrough")


def parse_drive(text: str, index: int) -> DriveSpec:
    """'-drive file=PATH,if=virtio[,format=raw][,readonly=on][,cache=...][,serial=...]'."""
    props: dict[str, str] = {}
    for part in split_qemu_opts(text):
        key, sep, value = part.partition("=")
        if not sep:
            raise UsageError(f"-drive {text}: '{part}' needs a value (key=value)")
        if key not in DRIVE_KEYS:
            raise UsageError(f"-drive {text}: Invalid parameter '{key}'")
        props[key] = value
    if not props.get("file"):
        raise UsageError(f"-drive {text}: a disk image is required (file=PATH)")
    interface = props.get("if", "virtio" if "id" not in props else "none")
    if interface not in ("virtio", "none"):
        raise UsageError(f"-drive {text}: if={interface} is not supported (virtio or none)")
    if props.get("format", "raw") != "raw":
        raise UsageError(f"-drive {text}: format={props['format']} is not supported (raw only)")
    if props.get("media", "disk") != "disk":
        raise UsageError(f"-drive {text}: media={props['media']} is not supported (disk only)")
    cache = props.get("cache", "writeback")
    if cache not in CACHE_MODES:
        raise UsageError(f"-drive {text}: cache={cache} is not one of {', '.join(CACHE_MODES)}")
    read_only = props.get("readonly", "off").lower()
    if read_only not in ("on", "off", "true", "false", "yes", "no"):
        raise UsageError(f"-drive {text}: readonly expects on or off, not '{read_only}'")
    if interface == "none" and "id" not in props:
        raise UsageError(f"-drive {text}: if=none needs an id= for -device ...,drive=ID")
    return DriveSpec(
        id=props.get("id", f"virtio{index}"),
        file=Path(props["file"]),
        interface=interface,
        read_only=read_only in ("on", "true", "yes"),
        cache=cache,
        serial=props.get("serial", ""),
    )


def _parse_memory(arg: str) -> int:
    # -m [size=]megs[,slots=n,maxmem=size]: only the size matters without hotplug.
    first = arg.split(",")[0]
    first = first.removeprefix("size=")
    return parse_size(first, "-m")


def _parse_serial(arg: str) -> SerialSpec:
    if arg in ("stdio", "mon:stdio"):
        return SerialSpec("stdio")
    if arg in ("none", "null"):
        return SerialSpec("none")
    if arg.startswith("file:") and len(arg) > 5:
        return SerialSpec("file", Path(arg[5:]))
    raise UsageError(f"-serial: unsupported backend '{arg}' (use stdio, file:PATH or none)")


def _parse_smp(arg: str) -> int:
    first = arg.split(",")[0].removeprefix("cpus=")
    if not first.isdigit() or not 1 <= int(first) <= MAX_VCPUS:
        raise UsageError(f"-smp: invalid number of CPUs '{arg}' (1 to {MAX_VCPUS})")
    return int(first)


def _parse_machine(arg: str) -> str:
    machine = arg.split(",")[0].removeprefix("type=")
    aliases = {"pc-i440fx": "pc", "i440fx": "pc"}
    machine = aliases.get(machine, machine)
    if machine not in MACHINES:
        raise UsageError(f"-machine: unsupported machine type '{machine}' (use pc or q35)")
    return machine


def _option_name(word: str) -> str | None:
    if word.startswith("--") and len(word) > 2:
        return word[2:]
    if word.startswith("-") and len(word) > 1:
        return word[1:]
    return None


def parse_options(argv: list[str]) -> VmSpec:
    values: dict[str, str] = {}
    repeated: dict[str, list[str]] = {name: [] for name in REPEATABLE}
    order: list[tuple[str, int]] = []  # -device and -drive if=virtio make devices in order
    flags: set[str] = set()
    i = 0
    while i < len(argv):
        word = argv[i]
        name = _option_name(word)
        if name is None:
            raise UsageError(f"{word}: unexpected argument (options start with '-')")
        if name in FLAGS:
            flags.add(name)
            i += 1
            continue
        if name not in WITH_ARGUMENT:
            raise UsageError(f"-{name}: invalid option")
        if i + 1 >= len(argv):
            raise UsageError(f"-{name}: requires an argument")
        if name in REPEATABLE:
            repeated[name].append(argv[i + 1])
            order.append((name, len(repeated[name]) - 1))
        else:
            values["machine" if name == "M" else name] = argv[i + 1]
        i += 2

    if "kernel" not in values:
        raise UsageError("-kernel: a kernel is required (pcivm boots Linux directly)")
    if values.get("accel", "kvm").split(",")[0] != "kvm":
        raise UsageError(f"-accel: only kvm is supported, not '{values['accel']}'")
    if values.get("cpu", "host").split(",")[0] not in ("host", "max", "qemu64", "kvm64"):
        raise UsageError(f"-cpu: unsupported CPU model '{values['cpu']}' (pcivm uses host)")
    serial = SerialSpec("stdio")
    if "serial" in values:
        serial = _parse_serial(values["serial"])
    return VmSpec(
        memory=_parse_memory(values["m"]) if "m" in values else DEFAULT_MEMORY,
        kernel=Path(values["kernel"]),
        initrd=Path(values["initrd"]) if "initrd" in values else None,
        append=values.get("append", ""),
        smp=_parse_smp(values["smp"]) if "smp" in values else 1,
        machine=_parse_machine(values["machine"]) if "machine" in values else "pc",
        serial=serial,
        no_reboot="no-reboot" in flags,
        name=values.get("name"),
        debug=bool(flags & {"d", "debug"}),
        **_devices_and_drives(repeated, order),
    )


def _devices_and_drives(repeated: dict[str, list[str]], order: list[tuple[str, int]]) -> dict:
    """-device options, and a virtio-blk-pci for each -drive if=virtio, in command-line
    order (as QEMU creates them)."""
    drives = [parse_drive(text, i) for i, text in enumerate(repeated["drive"])]
    ids = [d.id for d in drives]
    duplicate = next((i for i in ids if ids.count(i) > 1), None)
    if duplicate:
        raise UsageError(f"-drive id={duplicate}: Duplicate ID '{duplicate}' for drive")
    devices = []
    for name, index in order:
        if name == "device":
            devices.append(parse_device(repeated["device"][index]))
        elif drives[index].interface == "virtio":
            drive = drives[index]
            devices.append(
                DeviceSpec(
                    "virtio-blk-pci", (("drive", drive.id),), f"virtio-blk-pci,drive={drive.id}"
                )
            )
    return {"devices": tuple(devices), "drives": tuple(drives)}
