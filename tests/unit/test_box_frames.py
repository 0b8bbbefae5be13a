"""The box's wire format: frames survive any split of the byte stream."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pcivm.box import frames

kinds = st.sampled_from(sorted(frames.KIND_NAMES))


@given(st.lists(st.tuples(kinds, st.binary(max_size=2000)), max_size=20), st.data())
def test_frames_round_trip_however_the_stream_is_split(sent, data):
    stream = b"".join(frames.encode(kind, payload) for kind, payload in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    reader = frames.FrameReader()
    received = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        received += reader.feed(stream[start:end])
    assert received == sent
    assert reader.pending == 0


def test_json_frames_carry_requests():
    request = {"argv": ["sh", "-c", "exit 3"], "cwd": "/tmp", "env": {"A": "é"}}
    [(kind, payload)] = frames.FrameReader().feed(frames.encode_json(frames.RUN, request))
    assert kind == frames.RUN
    assert frames.decode_json(payload) == request


def test_long_data_is_split_into_frames_no_larger_than_the_limit():
    data = bytes(range(256)) * (frames.MAX_PAYLOAD // 100)
    received = frames.FrameReader().feed(frames.encode_data(frames.STDOUT, data))
    assert all(kind == frames.STDOUT for kind, _ in received)
    assert all(len(payload) <= frames.MAX_PAYLOAD for _, payload in received)
    assert b"".join(payload for _, payload in received) == data


def test_empty_data_makes_no_frames():
    assert frames.encode_data(frames.STDOUT, b"") == b""


def test_a_corrupt_header_is_refused():
    with pytest.raises(frames.FrameError):
        frames.FrameReader().feed(b"\xff\x00\x00\x00\x01x")
    with pytest.raises(frames.FrameError):
        frames.FrameReader().feed(frames.HEADER.pack(frames.STDOUT, frames.MAX_PAYLOAD + 1))


def test_an_oversized_payload_cannot_be_encoded():
    with pytest.raises(frames.FrameError):
        frames.encode(frames.STDIN, b"x" * (frames.MAX_PAYLOAD + 1))


def test_bad_json_is_a_frame_error():
    with pytest.raises(frames.FrameError):
        frames.decode_json(b"{nope")
