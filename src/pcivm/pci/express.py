"""The PCI Express capability (PCIe Base 4.0, 7.5.3), as each kind of function carries it."""

from __future__ import annotations

from pcivm.pci import regs as R
from pcivm.pci.config_space import ConfigSpace

PCI_EXP_FLAGS_VERS2 = 0x2
PCI_EXP_DEVCAP_RBER = 1 << 15  # role-based error reporting, required of 1.1+ devices
PCI_EXP_LNKCAP_SLS_2_5GB = 0x1
PCI_EXP_LNKCAP_MLW_X1 = 0x1 << 4
PCI_EXP_LNKCAP_DLLLARC = 1 << 20
PCI_EXP_LNKSTA_CLS_2_5GB = 0x1
PCI_EXP_LNKSTA_NLW_X1 = 0x1 << 4
PCI_EXP_SLTCAP_PSN_SHIFT = 19
PCI_EXP_SLTCAP_NCCS = 1 << 18  # no command-completed support: no waits on slot commands
PCI_EXP_DEVCTL_WRITABLE = 0xFFFF & ~0x8000  # all but the reserved bit 15 (BCR_FLR on ports)


def add_express_capability(
    config: ConfigSpace,
    port_type: int,
    *,
    port_number: int = 0,
    slot_number: int | None = None,
    link_up: bool = True,
) -> int:
    """Add a version 2 PCI Express capability; returns its offset.

    `slot_number` (root and downstream ports) marks a slot as implemented. Ports report
    their link as up, as QEMU's do once a device is plugged.
    """
    offset = config.add_capability(R.PCI_CAP_ID_EXP, R.PCI_EXP_CAP_SIZEOF)
    flags = PCI_EXP_FLAGS_VERS2 | (port_type << 4)
    if slot_number is not None:
        flags |= R.PCI_EXP_FLAGS_SLOT
    config.set(offset + R.PCI_EXP_FLAGS, 2, flags)
    config.set(offset + R.PCI_EXP_DEVCAP, 4, PCI_EXP_DEVCAP_RBER)
    config.set_wmask(offset + R.PCI_EXP_DEVCTL, 2, PCI_EXP_DEVCTL_WRITABLE)
    config.set_w1cmask(offset + R.PCI_EXP_DEVSTA, 2, 0x000F)
    has_link = port_type not in (R.PCI_EXP_TYPE_RC_END,)
    if has_link:
        lnkcap = PCI_EXP_LNKCAP_SLS_2_5GB | PCI_EXP_LNKCAP_MLW_X1 | (port_number << 24)
        downstream = port_type in (R.PCI_EXP_TYPE_ROOT_PORT, R.PCI_EXP_TYPE_DOWNSTREAM)
        if downstream:
            lnkcap |= PCI_EXP_LNKCAP_DLLLARC
        config.set(offset + R.PCI_EXP_LNKCAP, 4, lnkcap)
        config.set_wmask(offset + R.PCI_EXP_LNKCTL, 2, 0x0FFB)
        status = PCI_EXP_LNKSTA_CLS_2_5GB | PCI_EXP_LNKSTA_NLW_X1
        if downstream and link_up:
            status |= R.PCI_EXP_LNKSTA_DLLLA
        config.set(offset + R.PCI_EXP_LNKSTA, 2, status)
    if slot_number is not None:
        config.set(
            offset + R.PCI_EXP_SLTCAP,
            4,
            (slot_number << PCI_EXP_SLTCAP_PSN_SHIFT) | PCI_EXP_SLTCAP_NCCS,
        )
        config.set_wmask(offset + R.PCI_EXP_SLTCTL, 2, 0x1FFF)
        config.set(offset + R.PCI_EXP_SLTSTA, 2, R.PCI_EXP_SLTSTA_PDS if link_up else 0)
    if port_type == R.PCI_EXP_TYPE_ROOT_PORT:
        config.set_wmask(offset + R.PCI_EXP_RTCTL, 2, 0x001F)
    config.set_wmask(offset + R.PCI_EXP_DEVCTL2, 2, 0xFFFF)
    config.set_wmask(offset + R.PCI_EXP_LNKCTL2, 2, 0xFFFF)
    return offset
