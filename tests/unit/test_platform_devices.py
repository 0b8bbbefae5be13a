"""CMOS clock, reset and power control, address spaces."""

import calendar

import pytest

from pcivm.bus import AddressSpace, BusConflict
from pcivm.platform.power import I8042, AcpiPm1, ResetControl
from pcivm.platform.rtc import CmosRtc


class Events:
    def __init__(self):
        self.seen = []

    def guest_reset(self, reason):
        self.seen.append(("reset", reason))

    def guest_poweroff(self, reason):
        self.seen.append(("poweroff", reason))


def test_rtc_reads_utc_in_bcd_and_never_shows_update_in_progress():
    when = calendar.timegm((2026, 11, 25, 13, 45, 59, 0, 0, 0))
    rtc = CmosRtc(clock=lambda: when)

    def reg(index):
        rtc.write(0, 1, index | 0x80)  # NMI-disable bit is not part of the index
        return rtc.read(1, 1)

    assert [reg(i) for i in (0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32)] == [
        0x59,
        0x45,
        0x13,
        0x25,
        0x11,
        0x26,
        0x20,
    ]
    assert reg(0x0A) & 0x80 == 0
    assert reg(0x0D) & 0x80  # valid RAM and time


def test_pm1_control_with_slp_en_and_s5_powers_off():
    events = Events()
    pm = AcpiPm1(events)
    assert pm.read(4, 2) & 1  # SCI_EN: ACPI mode from the start
    pm.write(4, 2, (0 << 10) | (1 << 13) | 1)
    assert events.seen == [("poweroff", "ACPI S5 (soft off)")]


def test_pm1_sleep_states_other_than_s5_do_not_power_off():
    events = Events()
    pm = AcpiPm1(events)
    pm.write(4, 2, (1 << 10) | (1 << 13))
    assert events.seen == []
    assert pm.read(0, 2) & 0x8000  # woke at once
    pm.write(0, 2, 0x8000)
    assert pm.read(0, 2) == 0  # write-1-to-clear


def test_reset_control_resets_only_with_rst_cpu():
    events = Events()
    rc = ResetControl(events)
    rc.write(0, 1, 0x02)
    assert events.seen == []
    rc.write(0, 1, 0x06)
    assert events.seen == [("reset", "reset control register")]


def test_i8042_self_test_and_cpu_reset():
    events = Events()
    kbc = I8042(events)
    kbc.write(4, 1, 0xAA)
    assert kbc.read(4, 1) & 1
    assert kbc.read(0, 1) == 0x55
    assert not kbc.read(4, 1) & 1
    kbc.write(4, 1, 0xFE)
    assert events.seen == [("reset", "keyboard controller reset")]


def test_address_space_finds_ranges_and_reads_all_ones_where_nothing_is():
    class Reg:
        def __init__(self):
            self.writes = []

        def read(self, offset, size):
            return 0x10 + offset

        def write(self, offset, size, value):
            self.writes.append((offset, size, value))

    space = AddressSpace("port IO")
    reg = Reg()
    space.register(0x100, 8, reg, "dev")
    assert space.read(0x103, 1) == 0x13
    space.write(0x107, 2, 0xBEEF)
    assert reg.writes == [(7, 2, 0xBEEF)]
    assert space.read(0x108, 4) == 0xFFFFFFFF
    assert space.read(0xFF, 2) == 0xFFFF
    space.write(0x2000, 1, 1)  # ignored, never raises
    assert space.accesses["dev"] == 2
    with pytest.raises(BusConflict):
        space.register(0x104, 8, reg, "overlap")
