"""The functions that make up a hierarchy, with QEMU's names, ids and properties:
host bridges and chipset functions, PCIe root ports, switches, and PCI bridges."""

from __future__ import annotations

from pcivm.pci import regs as R
from pcivm.pci.bridge import PciBridge, Reserve
from pcivm.pci.express import add_express_capability
from pcivm.pci.function import PciFunction
from pcivm.pci.msi import MsiCapability
from pcivm.pci.msix import add_exclusive_msix


class I440fxHost(PciFunction):
    """00:00.0 of -M pc: the i440FX host bridge (hw/pci-host/i440fx.c)."""

    def __init__(self):
        super().__init__("i440fx", R.PCI_VENDOR_ID_INTEL, 0x1237, R.PCI_CLASS_BRIDGE_HOST, 0x02)


class Piix3Isa(PciFunction):
    """00:01.0 of -M pc: the PIIX3 PCI-to-ISA bridge; the legacy devices sit behind it."""

    def __init__(self):
        super().__init__("piix3-isa", R.PCI_VENDOR_ID_INTEL, 0x7000, R.PCI_CLASS_BRIDGE_ISA)
        self.set_multifunction(True)


class Q35Host(PciFunction):
    """00:00.0 of -M q35: the Q35 memory controller hub (hw/pci-host/q35.c)."""

    def __init__(self):
        super().__init__("q35-host", R.PCI_VENDOR_ID_INTEL, 0x29C0, R.PCI_CLASS_BRIDGE_HOST, 0x02)


class Ich9Lpc(PciFunction):
    """00:1f.0 of -M q35: the ICH9 LPC bridge."""

    def __init__(self):
        super().__init__("ich9-lpc", R.PCI_VENDOR_ID_INTEL, 0x2918, R.PCI_CLASS_BRIDGE_ISA, 0x02)
        self.set_multifunction(True)


ROOT_PORT_MSIX_VECTORS = 1  # GEN_PCIE_ROOT_PORT_MSIX_NR_VECTOR in QEMU


class PcieRootPort(PciBridge):
    """QEMU's generic `pcie-root-port` (1b36:000c)."""

    has_link_below = True
    express_below = True
    hotplug = True

    def __init__(self, name: str, chassis: int = 0, slot: int = 0, reserve: Reserve | None = None):
        super().__init__(name, R.PCI_VENDOR_ID_REDHAT, 0x000C, express=True, interrupt_pin=1)
        self.chassis = chassis
        self.physical_slot = slot
        self.reserve = reserve or Reserve()
        # As QEMU's: one MSI-X vector (for the port's own events: PME, hot-plug, AER) in a
        # 4 KiB memory BAR0 of its own. Linux's port driver takes it for its services.
        self.msix = add_exclusive_msix(self, 0, ROOT_PORT_MSIX_VECTORS)
        add_express_capability(self.config, R.PCI_EXP_TYPE_ROOT_PORT, slot_number=slot)


# Both ports of QEMU's XIO3130 switch: one MSI vector, 64-bit address, no per-vector mask.
XIO3130_MSI = {"vectors": 1, "addr64": True, "per_vector_mask": False}


class X3130Upstream(PciBridge):
    """The upstream port of a TI XIO3130 switch (`x3130-upstream`, 104c:8232)."""

    express_below = True

    def __init__(self, name: str):
        super().__init__(name, R.PCI_VENDOR_ID_TI, 0x8232, revision=0x02, express=True)
        self.msi = MsiCapability(self, **XIO3130_MSI)
        add_express_capability(self.config, R.PCI_EXP_TYPE_UPSTREAM)


class Xio3130Downstream(PciBridge):
    """A downstream port of that switch (`xio3130-downstream`, 104c:8233)."""

    has_link_below = True
    express_below = True
    hotplug = True

    def __init__(self, name: str, chassis: int = 0, slot: int = 0, port: int = 0):
        super().__init__(
            name, R.PCI_VENDOR_ID_TI, 0x8233, revision=0x01, express=True, interrupt_pin=1
        )
        self.chassis = chassis
        self.physical_slot = slot
        self.msi = MsiCapability(self, **XIO3130_MSI)
        add_express_capability(
            self.config, R.PCI_EXP_TYPE_DOWNSTREAM, port_number=port, slot_number=slot
        )


class PciPciBridge(PciBridge):
    """QEMU's `pci-bridge` (1b36:0001): a conventional PCI bus with 32 slots."""

    def __init__(self, name: str, chassis_nr: int):
        super().__init__(name, R.PCI_VENDOR_ID_REDHAT, 0x0001, interrupt_pin=1)
        self.chassis = chassis_nr
        # Slot identification (PCI-to-PCI Bridge 1.2, 13.1): 32 slots, first in chassis.
        offset = self.config.add_capability(R.PCI_CAP_ID_SLOTID, 4)
        self.config.set(offset + 2, 1, 0x20 | R.PCI_SLOTS_PER_BUS)
        self.config.set(offset + 3, 1, chassis_nr)


class PciePciBridge(PciBridge):
    """QEMU's `pcie-pci-bridge` (1b36:000e): conventional PCI below a PCI Express port."""

    def __init__(self, name: str):
        super().__init__(name, R.PCI_VENDOR_ID_REDHAT, 0x000E, express=True, interrupt_pin=1)
        add_express_capability(self.config, R.PCI_EXP_TYPE_PCI_BRIDGE)
