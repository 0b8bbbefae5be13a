"""Linux KVM through ioctls: structures, numbers, and thin VM/vCPU objects.

This package knows nothing of devices: it opens /dev/kvm, creates VMs and vCPUs, moves
registers and reports exits. See Documentation/virt/kvm/api.rst in the Linux tree.
"""
