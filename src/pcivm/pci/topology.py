"""Builds a machine's PCI hierarchy from its -device options, with QEMU's placement rules
and QEMU-like one-line errors (a full bus, a taken address, a duplicate id, an unknown
bus, a device on a bus it cannot sit on).

Device models register here by name (`DEVICE_MODELS`): the topology devices below, the
test device, and the virtio devices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pcivm.errors import UsageError
from pcivm.pci.bridge import PciBridge, Reserve
from pcivm.pci.bus import PciBus
from pcivm.pci.function import PciFunction
from pcivm.pci.regs import PCI_FUNCTIONS_PER_SLOT, PCI_SLOTS_PER_BUS
from pcivm.pci.testdev import BarSpecError, PciTestDev
from pcivm.pci.topology_devices import (
    I440fxHost,
    Ich9Lpc,
    PciePciBridge,
    PcieRootPort,
    PciPciBridge,
    Piix3Isa,
    Q35Host,
    X3130Upstream,
    Xio3130Downstream,
)
from pcivm.spec import DeviceSpec, DriveSpec

COMMON_PROPS = ("id", "bus", "addr", "multifunction")

# Where a model may be plugged: a conventional PCI bus, the PCI Express root bus, or
# below a PCI Express port (a root or downstream port, one device at slot 0).
CONVENTIONAL, EXPRESS_ROOT, EXPRESS_PORT, SWITCH_INTERNAL = (
    "conventional PCI bus",
    "PCI Express root bus",
    "PCI Express port",
    "switch upstream port",
)
ANYWHERE = frozenset({CONVENTIONAL, EXPRESS_ROOT, EXPRESS_PORT})


class PropertyError(UsageError):
    pass


def parse_bool(driver: str, key: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("on", "true", "yes", "1"):
        return True
    if lowered in ("off", "false", "no", "0"):
        return False
    raise PropertyError(f"{driver}: property '{key}' expects on or off, not '{value}'")


def parse_int(driver: str, key: str, value: str, low: int = 0, high: int = 2**64 - 1) -> int:
    try:
        number = int(value, 0)
    except ValueError:
        raise PropertyError(f"{driver}: property '{key}' expects a number, not '{value}'") from None
    if not low <= number <= high:
        raise PropertyError(f"{driver}: property '{key}' value {number} is out of range")
    return number


def parse_size_prop(driver: str, key: str, value: str) -> int:
    from pcivm.options import parse_size

    try:
        return parse_size(value, key, default_shift=0) if value != "0" else 0
    except UsageError:
        raise PropertyError(f"{driver}: property '{key}' expects a size, not '{value}'") from None


@dataclass(frozen=True)
class DeviceModel:
    name: str
    props: frozenset[str]
    # (name, driver-specific properties, the bus it goes on, the topology) -> the function
    create: Callable[[str, dict[str, str], PciBus, Topology], PciFunction]
    plugs_into: frozenset[str] = ANYWHERE


def _root_port(name: str, p: dict[str, str], _bus: PciBus, _t: Topology) -> PciFunction:
    driver = "pcie-root-port"
    reserve = Reserve(
        bus=parse_int(driver, "bus-reserve", p.get("bus-reserve", "0"), 0, 254),
        io=parse_size_prop(driver, "io-reserve", p.get("io-reserve", "0")),
        mem=parse_size_prop(driver, "mem-reserve", p.get("mem-reserve", "0")),
        pref64=parse_size_prop(driver, "pref64-reserve", p.get("pref64-reserve", "0")),
    )
    return PcieRootPort(
        name,
        chassis=parse_int(driver, "chassis", p.get("chassis", "0"), 0, 255),
        slot=parse_int(driver, "slot", p.get("slot", "0"), 0, 0x1FFF),
        reserve=reserve,
    )


def _downstream(name: str, p: dict[str, str], _bus: PciBus, _t: Topology) -> PciFunction:
    driver = "xio3130-downstream"
    return Xio3130Downstream(
        name,
        chassis=parse_int(driver, "chassis", p.get("chassis", "0"), 0, 255),
        slot=parse_int(driver, "slot", p.get("slot", "0"), 0, 0x1FFF),
        port=parse_int(driver, "port", p.get("port", "0"), 0, 255),
    )


def _pci_bridge(name: str, p: dict[str, str], _bus: PciBus, _t: Topology) -> PciFunction:
    if "chassis_nr" not in p:
        raise PropertyError("pci-bridge: property 'chassis_nr' is required (1 to 255)")
    return PciPciBridge(name, parse_int("pci-bridge", "chassis_nr", p["chassis_nr"], 1, 255))


def _testdev(name: str, p: dict[str, str], _bus: PciBus, _t: Topology) -> PciFunction:
    bars = {0: "mem32:4K", 1: "io:256"}
    for key, value in p.items():
        bars[int(key[3:])] = value
    try:
        return PciTestDev(name, bars)
    except (BarSpecError, ValueError) as exc:
        raise PropertyError(f"pci-testdev: {exc}") from None


DEVICE_MODELS: dict[str, DeviceModel] = {
    m.name: m
    for m in (
        DeviceModel(
            "pcie-root-port",
            frozenset(
                {"chassis", "slot", "io-reserve", "mem-reserve", "pref64-reserve", "bus-reserve"}
            ),  # fmt: skip
            _root_port,
            frozenset({EXPRESS_ROOT}),
        ),
        DeviceModel(
            "x3130-upstream",
            frozenset(),
            lambda n, p, b, t: X3130Upstream(n),
            frozenset({EXPRESS_PORT}),
        ),  # fmt: skip
        DeviceModel(
            "xio3130-downstream",
            frozenset({"chassis", "slot", "port"}),
            _downstream,
            frozenset({SWITCH_INTERNAL}),
        ),
        DeviceModel("pci-bridge", frozenset({"chassis_nr"}), _pci_bridge),
        DeviceModel(
            "pcie-pci-bridge",
            frozenset(),
            lambda n, p, b, t: PciePciBridge(n),
            frozenset({EXPRESS_ROOT, EXPRESS_PORT}),
        ),  # fmt: skip
        DeviceModel("pci-testdev", frozenset(f"bar{i}" for i in range(6)), _testdev),
    )
}


def register_model(model: DeviceModel) -> None:
    DEVICE_MODELS[model.name] = model


def bus_kind(bus: PciBus) -> str:
    if bus.is_root:
        return EXPRESS_ROOT if bus.express else CONVENTIONAL
    if isinstance(bus.parent, X3130Upstream):
        return SWITCH_INTERNAL
    if bus.parent.has_link_below:
        return EXPRESS_PORT
    return CONVENTIONAL


def parse_addr(driver: str, text: str) -> tuple[int, int]:
    """QEMU's addr=SLOT[.FN], hexadecimal ('3', '03.1', '0x1f')."""
    slot_text, _, fn_text = text.lower().removeprefix("0x").partition(".")
    try:
        slot = int(slot_text, 16)
        fn = int(fn_text, 16) if fn_text else 0
    except ValueError:
        raise PropertyError(f"{driver}: property 'addr' expects SLOT[.FN], not '{text}'") from None
    if not 0 <= slot < PCI_SLOTS_PER_BUS or not 0 <= fn < PCI_FUNCTIONS_PER_SLOT:
        raise PropertyError(f"{driver}: addr={text} is out of range (slot 0-1f, function 0-7)")
    return slot, fn


@dataclass
class Topology:
    machine: str
    root: PciBus
    by_id: dict[str, PciFunction] = field(default_factory=dict)
    buses: dict[str, PciBus] = field(default_factory=dict)
    built_in: list[PciFunction] = field(default_factory=list)
    drives: dict[str, DriveSpec] = field(default_factory=dict)
    used_drives: set[str] = field(default_factory=set)

    def plug(self, spec: DeviceSpec) -> PciFunction:
        model = DEVICE_MODELS.get(spec.driver)
        if model is None:
            raise UsageError(
                f"-device {spec.driver}: '{spec.driver}' is not a valid device model name"
            )
        props = dict(spec.props)
        for key in props:
            if key not in COMMON_PROPS and key not in model.props:
                raise PropertyError(
                    f"-device {spec.driver}: property '{spec.driver}.{key}' not found"
                )
        dev_id = props.get("id")
        if dev_id is not None and (not dev_id or dev_id in self.by_id or dev_id in self.buses):
            raise UsageError(f"-device {spec.driver}: duplicate ID '{dev_id}' for device")
        bus_name = props.get("bus", self.root.name)
        bus = self.buses.get(bus_name)
        if bus is None:
            raise UsageError(f"-device {spec.driver}: Bus '{bus_name}' not found")
        kind = bus_kind(bus)
        if kind not in model.plugs_into:
            allowed = " or ".join(sorted(model.plugs_into))
            raise UsageError(
                f"-device {spec.driver}: cannot plug into '{bus_name}' (a {kind}); "
                f"it needs a {allowed}"
            )
        multifunction = parse_bool(spec.driver, "multifunction", props.get("multifunction", "off"))
        if "addr" in props:
            slot, fn = parse_addr(spec.driver, props["addr"])
        else:
            free = bus.free_slot()
            if free is None:
                raise UsageError(
                    f"-device {spec.driver}: PCI: no slot/function available on '{bus_name}', "
                    "all in use or reserved"
                )
            slot, fn = free, 0
        if slot >= bus.slot_count:
            raise UsageError(
                f"-device {spec.driver}: PCI: slot {slot:x} is not available on '{bus_name}' "
                "(a PCI Express port has one device, at slot 0)"
            )
        taken = bus.functions.get((slot, fn))
        if taken is not None:
            raise UsageError(
                f"-device {spec.driver}: PCI: slot {slot:x} function {fn} not available for "
                f"{spec.driver}, in use by {taken.name}"
            )
        first = bus.functions.get((slot, 0))
        if fn and first is not None and not first.multifunction:
            raise UsageError(
                f"-device {spec.driver}: PCI: single function device can't be populated in "
                f"function {slot:x}.{fn}"
            )
        if not fn and not multifunction and any((slot, f) in bus.functions for f in range(1, 8)):
            raise UsageError(
                f"-device {spec.driver}: PCI: {slot:x}.0 indicates single function, but "
                f"{slot:x}.x is already populated"
            )
        name = dev_id or f"{spec.driver}.{len(self.by_id) + len(self.built_in)}"
        function = model.create(
            name, {k: v for k, v in props.items() if k not in COMMON_PROPS}, bus, self
        )
        function.driver = spec.driver
        if multifunction:
            function.set_multifunction(True)
        bus.attach(function, slot, fn)
        self.by_id[name] = function
        if isinstance(function, PciBridge) and dev_id is not None:
            self.buses[dev_id] = function.secondary
        return function

    def functions(self) -> list[PciFunction]:
        return list(self.root.walk())


def build_topology(
    machine: str,
    devices: tuple[DeviceSpec, ...] | list[DeviceSpec],
    drives: tuple[DriveSpec, ...] | list[DriveSpec] = (),
) -> Topology:
    """The hierarchy of `machine` ("pc" or "q35") with its built-in functions and `devices`;
    `drives` are the -drive options devices may name with drive=."""
    import pcivm.virtio.pci_models  # noqa: F401  (registers the virtio-*-pci models)

    if machine == "q35":
        root = PciBus("pcie.0", express=True)
        built_in = [(Q35Host(), 0, 0), (Ich9Lpc(), 0x1F, 0)]
    else:
        root = PciBus("pci.0", express=False)
        built_in = [(I440fxHost(), 0, 0), (Piix3Isa(), 1, 0)]
    topology = Topology(machine, root, buses={root.name: root}, drives={d.id: d for d in drives})
    for function, slot, fn in built_in:
        root.attach(function, slot, fn)
        topology.built_in.append(function)
    for spec in devices:
        topology.plug(spec)
    return topology
