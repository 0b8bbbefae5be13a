"""bench/profile.py's summary of py-spy's raw samples."""

from bench.profile import function_of, parse_raw, summarize

RAW = """\
thread (10): disk-kicks;Thread.run (threading.py:982);SplitQueue.pop (pcivm/virtio/queue.py:301) 6
thread (10): disk-kicks;Thread.run (threading.py:982);IoVec._call (pcivm/iovec.py:233) 12
thread (10): disk-kicks;Thread.run (threading.py:982);SplitQueue.pop (pcivm/virtio/queue.py:305) 2
thread (11): vcpu0;Vcpu.run (pcivm/kvm/api.py:226) 5

not a sample line
"""


def test_samples_are_counted_by_thread_and_by_function():
    stacks = parse_raw(RAW)
    assert len(stacks) == 4 and stacks[0][1] == 6
    assert function_of("SplitQueue.pop (pcivm/virtio/queue.py:301)") == (
        "SplitQueue.pop (pcivm/virtio/queue.py)"
    )
    text = summarize(RAW)
    lines = text.splitlines()
    assert lines[0] == "25 samples; by thread:"
    assert "20  80.0%  thread (10): disk-kicks" in lines[1]
    # The busiest thread's innermost frames, the two lines of pop as one function.
    inner = lines[
        lines.index("thread (10): disk-kicks, innermost frame (share of its 20 samples):") + 1 :
    ]
    assert inner[0].split() == ["12", "60.0%", "IoVec._call", "(pcivm/iovec.py)"]
    assert inner[1].split() == ["8", "40.0%", "SplitQueue.pop", "(pcivm/virtio/queue.py)"]
    assert "20 100.0%  Thread.run (threading.py)" in text
    assert summarize("") == "no samples"
