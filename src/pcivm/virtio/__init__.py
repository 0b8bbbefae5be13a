"""virtio devices, sans KVM: the split virtqueue, the device base and its status machine,
the device models (rng, blk) and a Python test driver that plays the guest.

A device sees guest memory only through `pcivm.memory.GuestMemory` and raises interrupts
through the `InterruptSink` its transport supplies (device.py); the PCI transports and
the VMM's worker threads sit on top and are not imported from here.
"""
