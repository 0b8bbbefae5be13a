"""The guest image: a Debian kernel and a busybox initramfs that reports what Linux saw."""
