"""PCI and PCI Express: config space, functions and BARs, bridges, buses, host bridges,
and the firmware-role allocator that places every BAR and window before boot."""
