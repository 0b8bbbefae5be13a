"""A 16550A UART (National Semiconductor PC16550D datasheet), as at COM1 (0x3f8, IRQ 4).

Transmission is instantaneous: THR is always empty, so the line status never makes the
guest wait, and every byte written goes straight to `output`. Received bytes queue in the
16-byte FIFO; what does not fit waits on the host side instead of being dropped.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

# Register offsets (DLAB=0 / DLAB=1 share 0 and 1).
UART_RX = UART_TX = UART_DLL = 0
UART_IER = UART_DLM = 1
UART_IIR = UART_FCR = 2
UART_LCR = 3
UART_MCR = 4
UART_LSR = 5
UART_MSR = 6
UART_SCR = 7

UART_LCR_DLAB = 0x80
UART_IER_RDI, UART_IER_THRI, UART_IER_RLSI, UART_IER_MSI = 0x01, 0x02, 0x04, 0x08
UART_IIR_NO_INT = 0x01
UART_IIR_MSI, UART_IIR_THRI, UART_IIR_RDI, UART_IIR_RLSI = 0x00, 0x02, 0x04, 0x06
UART_IIR_RX_TIMEOUT = 0x0C
UART_IIR_FIFO_ENABLED = 0xC0
UART_FCR_ENABLE_FIFO, UART_FCR_CLEAR_RCVR, UART_FCR_CLEAR_XMIT = 0x01, 0x02, 0x04
UART_LSR_DR, UART_LSR_THRE, UART_LSR_TEMT = 0x01, 0x20, 0x40
UART_MCR_DTR, UART_MCR_RTS, UART_MCR_OUT1, UART_MCR_OUT2, UART_MCR_LOOP = 1, 2, 4, 8, 0x10
UART_MSR_CTS, UART_MSR_DSR, UART_MSR_RI, UART_MSR_DCD = 0x10, 0x20, 0x40, 0x80
FIFO_SIZE = 16
# Receive trigger levels selected by FCR bits 7:6.
RX_TRIGGER = (1, 4, 8, 14)
HOST_QUEUE_LIMIT = 1 << 20


class Uart16550:
    def __init__(self, output: Callable[[bytes], None], set_irq: Callable[[int], None]):
        self._output = output
        self._set_irq = set_irq
        self._lock = threading.Lock()
        self._rx: collections.deque[int] = collections.deque()
        self.ier = 0
        self.lcr = 0x03  # 8N1
        self.mcr = UART_MCR_OUT2
        self.fcr = 0
        self.scr = 0
        self.divisor = 12  # 9600 baud
        self._thr_pending = False  # THRE interrupt condition, cleared by an IIR read
        self._irq_level = 0
        self.bytes_out = 0

    # -- guest side -----------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        with self._lock:
            value = self._read(offset)
            self._update_irq()
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            self._write(offset, value & 0xFF)
            self._update_irq()

    def _read(self, offset: int) -> int:
        dlab = self.lcr & UART_LCR_DLAB
        if offset == UART_RX:
            if dlab:
                return self.divisor & 0xFF
            return self._rx.popleft() if self._rx else 0
        if offset == UART_IER:
            return self.divisor >> 8 if dlab else self.ier
        if offset == UART_IIR:
            iir = self._interrupt_id()
            if iir == UART_IIR_THRI:
                self._thr_pending = False  # reading IIR acknowledges THRE
            if self.fcr & UART_FCR_ENABLE_FIFO:
                iir |= UART_IIR_FIFO_ENABLED
            return iir
        if offset == UART_LCR:
            return self.lcr
        if offset == UART_MCR:
            return self.mcr
        if offset == UART_LSR:
            return UART_LSR_THRE | UART_LSR_TEMT | (UART_LSR_DR if self._rx else 0)
        if offset == UART_MSR:
            return self._modem_status()
        return self.scr

    def _write(self, offset: int, value: int) -> None:
        dlab = self.lcr & UART_LCR_DLAB
        if offset == UART_TX:
            if dlab:
                self.divisor = (self.divisor & 0xFF00) | value
                return
            if self.mcr & UART_MCR_LOOP:
                self._push_rx(value)
            else:
                self._output(bytes((value,)))
                self.bytes_out += 1
            # The byte left at once: THR is empty again, a fresh THRE event.
            self._thr_pending = True
        elif offset == UART_IER:
            if dlab:
                self.divisor = (self.divisor & 0xFF) | (value << 8)
                return
            newly_thri = value & UART_IER_THRI and not self.ier & UART_IER_THRI
            self.ier = value & 0x0F
            if newly_thri:
                self._thr_pending = True
        elif offset == UART_FCR:
            if value & UART_FCR_CLEAR_RCVR:
                self._rx.clear()
            self.fcr = value & 0xC9
        elif offset == UART_LCR:
            self.lcr = value
        elif offset == UART_MCR:
            self.mcr = value & 0x1F
        elif offset == UART_SCR:
            self.scr = value

    def _rx_trigger(self) -> int:
        if not self.fcr & UART_FCR_ENABLE_FIFO:
            return 1
        return RX_TRIGGER[self.fcr >> 6]

    def _interrupt_id(self) -> int:
        if self.ier & UART_IER_RDI and self._rx:
            in_fifo = min(len(self._rx), FIFO_SIZE)
            return UART_IIR_RDI if in_fifo >= self._rx_trigger() else UART_IIR_RX_TIMEOUT
        if self.ier & UART_IER_THRI and self._thr_pending:
            return UART_IIR_THRI
        return UART_IIR_NO_INT

    def _modem_status(self) -> int:
        if self.mcr & UART_MCR_LOOP:
            # Loopback wires the modem outputs back to the inputs (used by Linux's probe).
            msr = 0
            if self.mcr & UART_MCR_RTS:
                msr |= UART_MSR_CTS
            if self.mcr & UART_MCR_DTR:
                msr |= UART_MSR_DSR
            if self.mcr & UART_MCR_OUT1:
                msr |= UART_MSR_RI
            if self.mcr & UART_MCR_OUT2:
                msr |= UART_MSR_DCD
            return msr
        return UART_MSR_DCD | UART_MSR_DSR | UART_MSR_CTS

    def _update_irq(self) -> None:
        level = 0 if self._interrupt_id() == UART_IIR_NO_INT else 1
        if level != self._irq_level:
            self._irq_level = level
            self._set_irq(level)

    def state_summary(self) -> str:
        with self._lock:
            return (
                f"IER {self.ier:#x}, IIR {self._interrupt_id():#x}, IRQ level {self._irq_level}, "
                f"{len(self._rx)} received bytes waiting"
            )

    # -- host side ------------------------------------------------------------------------

    def _push_rx(self, byte: int) -> None:
        if len(self._rx) < HOST_QUEUE_LIMIT:
            self._rx.append(byte)

    def receive(self, data: bytes) -> None:
        """Bytes typed on the host side, for the guest to read."""
        with self._lock:
            for byte in data:
                self._push_rx(byte)
            self._update_irq()
