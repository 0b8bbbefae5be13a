"""The serial console's host side: a backend keeps no descriptor once closed, so a
process that runs VMs one after another does not collect them."""

import os

from pcivm.console import SerialBackend
from pcivm.spec import SerialSpec


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_closing_a_file_backend_leaves_no_descriptor_behind(tmp_path):
    before = open_fds()
    for i in range(5):
        backend = SerialBackend(SerialSpec("file", tmp_path / f"console{i}.log"))
        backend.write(b"hello\n")
        backend.close()
        backend.close()  # a second close is harmless
    assert open_fds() == before
    assert (tmp_path / "console4.log").read_bytes() == b"hello\n"


def test_closing_a_backend_that_writes_nowhere_leaves_no_descriptor_behind():
    before = open_fds()
    backend = SerialBackend(SerialSpec("none"))
    backend.close()
    assert open_fds() == before
