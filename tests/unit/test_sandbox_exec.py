"""docker's multiplexed exec frames, read back (agent_host/sandbox_exec.py: demux)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent_host.sandbox_exec import demux


def frame(stream: int, payload: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


def test_frames_are_joined_in_order_and_a_cut_last_frame_gives_what_it_holds() -> None:
    data = frame(1, b"screen\n") + frame(2, b"err\n") + frame(1, b"tail")
    assert demux(data) == b"screen\nerr\ntail"
    assert demux(data[:-2]) == b"screen\nerr\nta"
    assert demux(b"") == b""
    assert demux(b"plain tty output") == b"plain tty output"  # not multiplexed


@given(st.lists(st.tuples(st.sampled_from([1, 2]), st.binary(max_size=300)), max_size=20))
def test_any_frames_give_back_their_payloads(frames: list[tuple[int, bytes]]) -> None:
    data = b"".join(frame(stream, payload) for stream, payload in frames)
    assert demux(data) == b"".join(payload for _, payload in frames)
