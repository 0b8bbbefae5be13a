"""What the host can tell of a box that stopped answering: QEMU's monitor, the box
kernel's symbols, QEMU's threads."""

import os
import socket
import threading

from pcivm.box.diagnose import SymbolMap, busy_threads, cpu_locations, monitor_command

KALLSYMS = """\
ffffffff81000000 T _stext
ffffffff81071300 t native_safe_halt
ffffffff810713f0 T kvm_wait
ffffffff81a17a00 T default_idle
ffffffff82000000 D some_data
"""

REGISTERS = """\
CPU#0
RAX=000000000001ad40 RBX=0000000000000000 RCX=0000000000000000 RDX=4000000000000000
RIP=ffffffff8107140d RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=0
CPU#1
RAX=0000000000000000 RBX=0000000000000000 RCX=0000000000000000 RDX=0000000000000000
RIP=ffffffff81a17a0b RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1
"""


def test_addresses_are_named_by_the_nearest_text_symbol_below():
    symbols = SymbolMap(KALLSYMS)
    assert symbols.name(0xFFFFFFFF8107140D) == "kvm_wait+0x1d"
    assert symbols.name(0xFFFFFFFF81071300) == "native_safe_halt+0x0"
    assert symbols.name(0x1000) == "0x1000"  # below every symbol
    assert symbols.name(0xFFFFFFFF82000010) == "0xffffffff82000010"  # far past any text


def test_each_cpu_gets_its_rip_privilege_and_halt_state():
    lines = cpu_locations(REGISTERS, SymbolMap(KALLSYMS))
    assert lines == [
        "box CPU 0: rip kvm_wait+0x1d, CPL 0",
        "box CPU 1: rip default_idle+0xb, CPL 0, halted",
    ]
    assert cpu_locations(REGISTERS, None)[0] == "box CPU 0: rip 0xffffffff8107140d, CPL 0"


def test_monitor_command_returns_the_output_between_prompts(tmp_path):
    path = tmp_path / "monitor.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    seen = []

    def fake_qemu():
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"QEMU 7.2.0 monitor - type 'help' for more information\r\n(qemu) ")
            seen.append(conn.recv(100))
            conn.sendall(b"info registers -a\r\n" + REGISTERS.encode() + b"(qemu) ")

    thread = threading.Thread(target=fake_qemu)
    thread.start()
    try:
        out = monitor_command(path, "info registers -a")
    finally:
        thread.join()
        server.close()
    assert seen == [b"info registers -a\n"]
    assert out == REGISTERS


def test_busy_threads_reads_this_process():
    # A thread of this process burns CPU for the interval: it is named, with a share.
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass

    thread = threading.Thread(target=spin, name="spinner")
    thread.start()
    try:
        lines = busy_threads(os.getpid(), interval=0.3)
    finally:
        stop.set()
        thread.join()
    assert any("% of a host CPU" in line for line in lines), lines
