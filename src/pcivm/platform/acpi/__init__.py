"""ACPI tables (ACPI 6.4 chapter 5) and the AML they carry (chapter 20)."""
