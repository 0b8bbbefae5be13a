"""bench/split_read.py: large reads cut in two or whole, and what the policy chose."""

import os

from bench.split_read import main, measure


def test_every_way_is_measured_and_the_file_is_removed(capsys):
    before = set(os.listdir("/dev/shm"))
    result = measure(count=8, file_mib=2)
    assert set(result) == {"whole", "cut", "policy", "ping"}
    assert all(us > 0 for us in result.values())
    assert set(os.listdir("/dev/shm")) == before
    assert main(["--rounds", "1", "--count", "4", "--file-mib", "1"]) == 0
    assert "medians per 1 MiB read: whole" in capsys.readouterr().out
