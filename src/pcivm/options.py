"""QEMU-style command-line parsing: `pcivm -m 1G -kernel bzImage ...` -> VmSpec.

Errors read like QEMU's ("-foo: invalid option") and name the culprit; they are
UsageErrors, so the CLI prints one line and exits 1.
"""

from __future__ import annotations

import re
from pathlib import Path

from pcivm.errors import UsageError
from pcivm.spec import DeviceSpec, SerialSpec, VmSpec

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
REPEATABLE = {"device"}
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
        devices=tuple(parse_device(text) for text in repeated["device"]),
    )
