"""pcivm: a virtual machine monitor in Python on Linux KVM."""

__version__ = "0.1.0"
