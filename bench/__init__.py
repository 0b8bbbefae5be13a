"""Benchmarks: pcivm against QEMU in the same box (see docs/performance.md)."""
