"""bench/blk_path.py: the device's request path, driven in process."""

import pytest
from bench.blk_path import measure, parse_cachegrind


@pytest.mark.parametrize("kind", ["seq", "rand"])
def test_the_request_path_is_timed_over_reads_that_succeed(tmp_path, kind):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(2 << 20))
    result = measure(kind, 18, str(image))  # raises if a read's status is not OK
    assert 0 < result["min_us"] <= result["median_us"]


def test_cachegrind_instruction_counts_are_read_from_its_summary():
    stderr = "==1== Cachegrind, a cache profiler\n==1== I   refs:      1,234,567\n"
    assert parse_cachegrind(stderr) == 1234567
    with pytest.raises(ValueError):
        parse_cachegrind("no summary")
