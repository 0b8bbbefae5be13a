// SPDX-License-Identifier: GPL-2.0
/*
 * The modern half of virtio_pci for the old guest's build of the module.
 *
 * The module is Linux's own virtio_pci_common.c and virtio_pci_legacy.c; this file takes
 * the place of virtio_pci_modern.c. virtio_pci_probe() tries the modern interface first
 * and falls back to the legacy one only on -ENODEV, so declining here leaves a driver that
 * knows nothing but the pre-virtio-1.0 interface: transitional devices (ids 0x1000-0x103f,
 * revision 0) through IO BAR0, and nothing else.
 */
#include "virtio_pci_common.h"

int virtio_pci_modern_probe(struct virtio_pci_device *vp_dev)
{
	return -ENODEV;
}

/* Never called for a device this module drives: all of them are legacy (is_legacy). */
void virtio_pci_modern_remove(struct virtio_pci_device *vp_dev)
{
}
