"""The 16550A as Linux's 8250 driver drives it."""

from pcivm.platform.uart import (
    UART_FCR,
    UART_IER,
    UART_IIR,
    UART_LCR,
    UART_LSR,
    UART_MCR,
    UART_MSR,
    UART_RX,
    UART_SCR,
    Uart16550,
)


class Wire:
    def __init__(self):
        self.out = bytearray()
        self.levels = []

    def uart(self):
        return Uart16550(self.out.extend, self.levels.append)


def test_transmitted_bytes_reach_the_output_and_thr_is_always_empty():
    wire = Wire()
    uart = wire.uart()
    for ch in b"hello":
        assert uart.read(UART_LSR, 1) & 0x60 == 0x60
        uart.write(UART_RX, 1, ch)
    assert bytes(wire.out) == b"hello"


def test_the_8250_autoconfig_probe_sees_a_16550a():
    uart = Wire().uart()
    uart.write(UART_SCR, 1, 0xA5)
    assert uart.read(UART_SCR, 1) == 0xA5
    uart.write(UART_IER, 1, 0x0F)
    assert uart.read(UART_IER, 1) == 0x0F
    uart.write(UART_MCR, 1, 0x10 | 0x0A)  # loopback with OUT2 and RTS
    assert uart.read(UART_MSR, 1) & 0xF0 == 0x90
    uart.write(UART_MCR, 1, 0)
    uart.write(UART_FCR, 1, 0x01)
    assert uart.read(UART_IIR, 1) >> 6 == 3  # FIFO present and enabled


def test_divisor_latch_is_behind_dlab():
    uart = Wire().uart()
    uart.write(UART_LCR, 1, 0x83)
    uart.write(UART_RX, 1, 0x01)
    uart.write(UART_IER, 1, 0x00)
    assert (uart.read(UART_RX, 1), uart.read(UART_IER, 1)) == (1, 0)
    uart.write(UART_LCR, 1, 0x03)
    assert uart.read(UART_IER, 1) == 0


def test_thre_interrupt_rises_when_enabled_and_iir_read_acknowledges_it():
    wire = Wire()
    uart = wire.uart()
    uart.write(UART_IER, 1, 0x02)
    assert wire.levels == [1]
    assert uart.read(UART_IIR, 1) & 0x0F == 0x02
    assert wire.levels == [1, 0]
    assert uart.read(UART_IIR, 1) & 0x01 == 1  # nothing pending now
    uart.write(UART_RX, 1, ord("x"))  # a new byte left: a new THRE edge
    assert wire.levels == [1, 0, 1]


def test_received_bytes_raise_the_data_interrupt_until_read():
    wire = Wire()
    uart = wire.uart()
    uart.write(UART_IER, 1, 0x01)
    uart.receive(b"ab")
    assert wire.levels == [1]
    assert uart.read(UART_LSR, 1) & 0x01
    assert uart.read(UART_IIR, 1) & 0x0F in (0x04, 0x0C)
    assert uart.read(UART_RX, 1) == ord("a")
    assert uart.read(UART_RX, 1) == ord("b")
    assert wire.levels == [1, 0]
    assert not uart.read(UART_LSR, 1) & 0x01


def test_input_beyond_the_fifo_waits_instead_of_being_lost():
    uart = Wire().uart()
    data = bytes(range(256)) * 4
    uart.receive(data)
    got = bytes(uart.read(UART_RX, 1) for _ in range(len(data)))
    assert got == data


def test_loopback_returns_transmitted_bytes_to_the_receiver():
    wire = Wire()
    uart = wire.uart()
    uart.write(UART_MCR, 1, 0x10)
    uart.write(UART_RX, 1, 0x42)
    assert wire.out == b""
    assert uart.read(UART_RX, 1) == 0x42
