"""Connecting to the box's control socket, which exists a moment before QEMU listens."""

import socket
import subprocess
import sys
import threading
import time

import pytest

from pcivm.box.errors import BoxStartError
from pcivm.box.machine import TcgMachine


def machine_with(proc) -> TcgMachine:
    machine = TcgMachine.__new__(TcgMachine)
    machine.qemu = proc
    return machine


@pytest.fixture
def sleeper():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_socket_bound_but_not_yet_listening_is_waited_for(tmp_path, sleeper):
    path = tmp_path / "control.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))  # the file exists; a connect is refused until listen()
    threading.Timer(0.2, server.listen, args=(1,)).start()
    try:
        started = time.monotonic()
        sock = machine_with(sleeper)._connect(path, tmp_path / "qemu.log")
        assert time.monotonic() - started >= 0.15
        sock.close()
    finally:
        server.close()


def test_a_qemu_that_exited_is_not_waited_for(tmp_path):
    path = tmp_path / "control.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        with pytest.raises(BoxStartError, match="did not accept connections"):
            machine_with(dead)._connect(path, tmp_path / "qemu.log")
    finally:
        server.close()
