"""The PC platform devices a Linux guest needs around its PCI buses: the serial port, the
CMOS clock, reset and power control, and the ACPI tables that describe them."""
