"""How a guest ends: ACPI power management (PM1 event and control blocks), the reset control
register at 0xcf9, and the keyboard controller's CPU-reset command.

Each device reports to a `PowerEvents` sink; what a reset or a power-off means for the VMM
is decided there, not here.
"""

from __future__ import annotations

from typing import Protocol

# ACPI 6.4, 4.8.3.1 and 4.8.3.2: PM1 status/enable and control registers.
PM1_EVT_LEN = 4
PM1_CNT_LEN = 2
PM1_STS_WAK = 1 << 15
ACPI_SCI_EN = 1 << 0
ACPI_SLP_TYP_SHIFT = 10
ACPI_SLP_TYP_MASK = 0x7 << ACPI_SLP_TYP_SHIFT
ACPI_SLP_EN = 1 << 13
# The SLP_TYP value the DSDT's \_S5 package gives (see acpi/tables.py).
SLP_TYP_S5 = 0

# Reset control register (Intel PIIX3/ICH): bit 2 resets the CPU, bit 1 asks for a hard one.
RCR_SYS_RST = 1 << 1
RCR_RST_CPU = 1 << 2

# i8042 (keyboard controller) ports 0x60 (data) and 0x64 (status/command).
I8042_DATA, I8042_STATUS = 0, 4
I8042_STR_OBF = 0x01
I8042_STR_SYSFLAG = 0x04
I8042_STR_CMDDAT = 0x08
I8042_STR_KEYLOCK = 0x10
I8042_CMD_CTL_RCTR = 0x20
I8042_CMD_CTL_WCTR = 0x60
I8042_CMD_CTL_TEST = 0xAA
I8042_CMD_KBD_TEST = 0xAB
I8042_CMD_WRITE_OUTPUT = 0xD1
I8042_CMD_PULSE_RESET = 0xFE
I8042_CTR_DEFAULT = 0x47  # keyboard and aux interrupts on, system flag, translation


class PowerEvents(Protocol):
    def guest_reset(self, reason: str) -> None: ...

    def guest_poweroff(self, reason: str) -> None: ...


class AcpiPm1:
    """PM1a event block (status, enable) followed by the PM1a control block.

    The FADT declares no SMI command port, so the guest finds ACPI mode already on:
    SCI_EN always reads 1.
    """

    def __init__(self, events: PowerEvents):
        self._events = events
        self.status = 0
        self.enable = 0
        self.control = ACPI_SCI_EN

    def read(self, offset: int, size: int) -> int:
        regs = (
            self.status | self.enable << 16,
            self.control,
        )
        if offset < PM1_EVT_LEN:
            return (regs[0] >> (8 * offset)) & ((1 << (8 * size)) - 1)
        return (regs[1] >> (8 * (offset - PM1_EVT_LEN))) & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset < 2:
            self.status &= ~(value << (8 * offset)) & 0xFFFF  # write 1 to clear
        elif offset < PM1_EVT_LEN:
            self.enable = (value << (8 * (offset - 2))) & 0xFFFF
        elif offset == PM1_EVT_LEN:
            self.control = (value & ~ACPI_SLP_EN) | ACPI_SCI_EN
            if value & ACPI_SLP_EN:
                sleep_type = (value & ACPI_SLP_TYP_MASK) >> ACPI_SLP_TYP_SHIFT
                if sleep_type == SLP_TYP_S5:
                    self._events.guest_poweroff("ACPI S5 (soft off)")
                else:
                    # Sleep states are not offered (no \_S1-\_S4); treat as a wake at once.
                    self.status |= PM1_STS_WAK


class ResetControl:
    """Port 0xcf9, which the FADT's RESET_REG names: writing RST_CPU resets the machine."""

    def __init__(self, events: PowerEvents):
        self._events = events
        self.value = 0

    def read(self, offset: int, size: int) -> int:
        return self.value

    def write(self, offset: int, size: int, value: int) -> None:
        self.value = value & (RCR_SYS_RST | RCR_RST_CPU)
        if value & RCR_RST_CPU:
            self._events.guest_reset("reset control register")


class I8042:
    """Just enough of the keyboard controller for the reset paths guests use.

    No keyboard or mouse is attached; the FADT says there is no 8042, so Linux does not
    probe it. The CPU-reset command (0xfe) and the output-port reset line still work, as
    `reboot=k` and older kernels use them.
    """

    def __init__(self, events: PowerEvents):
        self._events = events
        self._output: int | None = None
        self._pending_command: int | None = None
        self.ctr = I8042_CTR_DEFAULT

    def read(self, offset: int, size: int) -> int:
        if offset not in (I8042_DATA, I8042_STATUS):
            return 0xFF
        if offset == I8042_STATUS:
            status = I8042_STR_SYSFLAG | I8042_STR_KEYLOCK
            if self._output is not None:
                status |= I8042_STR_OBF
            return status
        value, self._output = self._output, None
        return 0 if value is None else value

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset not in (I8042_DATA, I8042_STATUS):
            return
        if offset == I8042_STATUS:
            self._command(value)
            return
        command, self._pending_command = self._pending_command, None
        if command == I8042_CMD_CTL_WCTR:
            self.ctr = value
        elif command == I8042_CMD_WRITE_OUTPUT and not value & 1:
            self._events.guest_reset("keyboard controller output port")
        # Bytes meant for a keyboard go nowhere: none is attached.

    def _command(self, command: int) -> None:
        if command == I8042_CMD_PULSE_RESET:
            self._events.guest_reset("keyboard controller reset")
        elif command == I8042_CMD_CTL_RCTR:
            self._output = self.ctr
        elif command == I8042_CMD_CTL_TEST:
            self._output = 0x55
        elif command == I8042_CMD_KBD_TEST:
            self._output = 0x00
        elif command in (I8042_CMD_CTL_WCTR, I8042_CMD_WRITE_OUTPUT):
            self._pending_command = command
