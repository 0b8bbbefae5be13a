"""The MC146818 CMOS real-time clock at ports 0x70 (index) and 0x71 (data).

The clock reads the host's UTC time in BCD, 24-hour mode. Status A never shows an update
in progress: Linux waits for that bit to clear before every read.
"""

from __future__ import annotations

import time

RTC_SECONDS, RTC_MINUTES, RTC_HOURS = 0x00, 0x02, 0x04
RTC_DAY_OF_WEEK, RTC_DAY_OF_MONTH, RTC_MONTH, RTC_YEAR = 0x06, 0x07, 0x08, 0x09
RTC_REG_A, RTC_REG_B, RTC_REG_C, RTC_REG_D = 0x0A, 0x0B, 0x0C, 0x0D
RTC_CENTURY = 0x32
REG_A_DIVIDER_32KHZ = 0x26  # 32.768 kHz time base, 1024 Hz periodic rate; UIP (bit 7) clear
REG_B_24H = 0x02
REG_D_VALID_RAM = 0x80
CMOS_SIZE = 128


def _bcd(value: int) -> int:
    return ((value // 10) << 4) | (value % 10)


class CmosRtc:
    def __init__(self, clock=time.time):
        self._clock = clock
        self._index = 0
        self._ram = bytearray(CMOS_SIZE)
        self._ram[RTC_REG_A] = REG_A_DIVIDER_32KHZ
        self._ram[RTC_REG_B] = REG_B_24H
        self._ram[RTC_REG_D] = REG_D_VALID_RAM

    def read(self, offset: int, size: int) -> int:
        if offset == 0:
            return 0xFF  # the index port is write-only
        return self._read_register(self._index)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self._index = value & 0x7F  # bit 7 is the NMI mask, not part of the index
        elif self._index not in (RTC_REG_C, RTC_REG_D):
            # Clock registers are taken but not kept: the clock follows the host.
            self._ram[self._index] = value & 0xFF

    def _read_register(self, index: int) -> int:
        now = time.gmtime(self._clock())
        clock = {
            RTC_SECONDS: now.tm_sec,
            RTC_MINUTES: now.tm_min,
            RTC_HOURS: now.tm_hour,
            RTC_DAY_OF_WEEK: (now.tm_wday + 1) % 7 + 1,  # Sunday = 1
            RTC_DAY_OF_MONTH: now.tm_mday,
            RTC_MONTH: now.tm_mon,
            RTC_YEAR: now.tm_year % 100,
            RTC_CENTURY: now.tm_year // 100,
        }
        if index in clock:
            value = clock[index]
            return value if self._ram[RTC_REG_B] & 0x04 else _bcd(value)
        if index == RTC_REG_C:
            return 0  # no interrupt flags: alarms and periodic interrupts are not emulated
        return self._ram[index]
