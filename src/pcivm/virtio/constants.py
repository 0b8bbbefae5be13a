"""Constants of the virtio 1.2 specification, under the spec's own names.

Section numbers refer to "Virtual I/O Device (VIRTIO) Version 1.2".
"""

# 2.1 Device Status Field.
VIRTIO_CONFIG_S_ACKNOWLEDGE = 1
VIRTIO_CONFIG_S_DRIVER = 2
VIRTIO_CONFIG_S_DRIVER_OK = 4
VIRTIO_CONFIG_S_FEATURES_OK = 8  # absent from the legacy interface (2.2.3)
VIRTIO_CONFIG_S_DEVICE_NEEDS_RESET = 64
VIRTIO_CONFIG_S_FAILED = 128

ACKNOWLEDGE = VIRTIO_CONFIG_S_ACKNOWLEDGE
DRIVER = VIRTIO_CONFIG_S_DRIVER
DRIVER_OK = VIRTIO_CONFIG_S_DRIVER_OK
FEATURES_OK = VIRTIO_CONFIG_S_FEATURES_OK
DEVICE_NEEDS_RESET = VIRTIO_CONFIG_S_DEVICE_NEEDS_RESET
FAILED = VIRTIO_CONFIG_S_FAILED

# 6 Reserved Feature Bits (bits 24 to 41 are transport and ring features).
VIRTIO_F_NOTIFY_ON_EMPTY = 24  # legacy only (6.3)
VIRTIO_F_ANY_LAYOUT = 27  # legacy only: implied by VERSION_1 (2.7.4.3)
VIRTIO_F_INDIRECT_DESC = 28
VIRTIO_F_EVENT_IDX = 29
VIRTIO_F_VERSION_1 = 32
VIRTIO_F_ACCESS_PLATFORM = 33
VIRTIO_F_RING_PACKED = 34
VIRTIO_F_IN_ORDER = 35
VIRTIO_F_ORDER_PLATFORM = 36
VIRTIO_F_SR_IOV = 37
VIRTIO_F_NOTIFICATION_DATA = 38
VIRTIO_F_NOTIF_CONFIG_DATA = 39
VIRTIO_F_RING_RESET = 40

# 2.7.5 The Virtqueue Descriptor Table.
VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
VIRTQ_DESC_SIZE = 16  # le64 addr, le32 len, le16 flags, le16 next

# 2.7.6 The Virtqueue Available Ring / 2.7.8 The Virtqueue Used Ring.
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTQ_USED_F_NO_NOTIFY = 1
VIRTQ_USED_ELEM_SIZE = 8  # le32 id, le32 len

# 2.7 table "Virtqueue Part Alignment": descriptor table 16, available ring 2, used ring 4.
VIRTQ_DESC_ALIGN = 16
VIRTQ_AVAIL_ALIGN = 2
VIRTQ_USED_ALIGN = 4
# 2.7: Queue Size is at most 32768 for split virtqueues.
VIRTQ_MAX_SIZE = 32768
# 4.1.4.10 Legacy Interfaces: the queue address register holds a page frame number of
# 4096-byte pages, and the used ring starts at the next 4096-byte boundary (2.7.2).
VIRTIO_PCI_QUEUE_ADDR_SHIFT = 12
VIRTIO_PCI_VRING_ALIGN = 4096

# 5 Device Types.
VIRTIO_ID_NET = 1
VIRTIO_ID_BLOCK = 2
VIRTIO_ID_CONSOLE = 3
VIRTIO_ID_RNG = 4
VIRTIO_ID_BALLOON = 5

# 4.1.2.1 Device Requirements: PCI Device Discovery. Transitional devices keep the ids of
# the pre-1.0 era (table "Transitional PCI Device IDs", subsystem id = device type);
# modern-only (non-transitional) devices use 0x1040 + device type.
PCI_VENDOR_ID_REDHAT_QUMRANET = 0x1AF4
VIRTIO_TRANS_ID_NET = 0x1000
VIRTIO_TRANS_ID_BLOCK = 0x1001
VIRTIO_TRANS_ID_BALLOON = 0x1002
VIRTIO_TRANS_ID_CONSOLE = 0x1003
VIRTIO_TRANS_ID_RNG = 0x1005
TRANSITIONAL_DEVICE_IDS = {
    VIRTIO_ID_NET: VIRTIO_TRANS_ID_NET,
    VIRTIO_ID_BLOCK: VIRTIO_TRANS_ID_BLOCK,
    VIRTIO_ID_BALLOON: VIRTIO_TRANS_ID_BALLOON,
    VIRTIO_ID_CONSOLE: VIRTIO_TRANS_ID_CONSOLE,
    VIRTIO_ID_RNG: VIRTIO_TRANS_ID_RNG,
}
VIRTIO_PCI_MODERN_DEVICE_ID_BASE = 0x1040


def modern_pci_device_id(device_type: int) -> int:
    return VIRTIO_PCI_MODERN_DEVICE_ID_BASE + device_type


# 5.4 Entropy Device: one queue, no feature bits, no config space.
VIRTIO_RNG_QUEUE_REQUEST = 0

# 5.2.3 Block Device Feature Bits.
VIRTIO_BLK_F_BARRIER = 0  # legacy only
VIRTIO_BLK_F_SIZE_MAX = 1
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_GEOMETRY = 4
VIRTIO_BLK_F_RO = 5
VIRTIO_BLK_F_BLK_SIZE = 6
VIRTIO_BLK_F_SCSI = 7  # legacy only
VIRTIO_BLK_F_FLUSH = 9
VIRTIO_BLK_F_TOPOLOGY = 10
VIRTIO_BLK_F_CONFIG_WCE = 11
VIRTIO_BLK_F_MQ = 12
VIRTIO_BLK_F_DISCARD = 13
VIRTIO_BLK_F_WRITE_ZEROES = 14
VIRTIO_BLK_F_LIFETIME = 15
VIRTIO_BLK_F_SECURE_ERASE = 16

# 5.2.6 Device Operation: request types and status values.
VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_SCSI_CMD = 2  # legacy only
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_T_GET_LIFETIME = 10
VIRTIO_BLK_T_DISCARD = 11
VIRTIO_BLK_T_WRITE_ZEROES = 13
VIRTIO_BLK_T_SECURE_ERASE = 14
VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2
VIRTIO_BLK_ID_BYTES = 20
# struct virtio_blk_discard_write_zeroes: le64 sector, le32 num_sectors, le32 flags.
VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1
VIRTIO_BLK_SECTOR_SIZE = 512  # sectors are always 512 bytes, whatever blk_size says
