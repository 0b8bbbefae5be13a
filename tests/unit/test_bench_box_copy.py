"""bench/box_copy.py: the kernel's copy of a read, alone and cut in two."""

import os

from bench.box_copy import main, measure


def test_every_figure_is_measured_and_the_file_is_removed(capsys):
    before = set(os.listdir("/dev/shm"))
    result = measure(count=4, file_mib=2)
    assert set(result) == {"read", "read x2", "memcpy"}
    assert all(us > 0 for us in result.values())
    assert set(os.listdir("/dev/shm")) == before
    assert main(["--rounds", "1", "--count", "2", "--file-mib", "1"]) == 0
    assert "medians: read" in capsys.readouterr().out
