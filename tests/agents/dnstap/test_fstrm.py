from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.dnstap import fstrm
from agents.dnstap.errors import (
    ContentTypeError,
    ControlFrameError,
    DnstapError,
    FrameError,
    FrameTooLarge,
    UnexpectedFrame,
)

CT = "70726f746f6275663a646e737461702e446e73746170"  # "protobuf:dnstap.Dnstap"
READY = "0000000000000022000000040000000100000016" + CT
ACCEPT = "0000000000000022000000010000000100000016" + CT
START = "0000000000000022000000020000000100000016" + CT
START_BARE = "000000000000000400000002"
STOP = "000000000000000400000003"
FINISH = "000000000000000400000005"
DATA_ABC = "00000003616263"
DATA_XY = "000000027879"


def h(*parts: str) -> bytes:
    return bytes.fromhex("".join(parts))


def test_encoders_match_the_wire_format() -> None:
    assert fstrm.encode_control(fstrm.CONTROL_READY, (fstrm.CONTENT_TYPE,)) == h(READY)
    assert fstrm.encode_control(fstrm.CONTROL_FINISH) == h(FINISH)
    assert fstrm.encode_data(b"abc") == h(DATA_ABC)
    with pytest.raises(ValueError, match="cannot be empty"):
        fstrm.encode_data(b"")


def test_bidirectional_session() -> None:
    dec = fstrm.FrameDecoder()
    out = dec.feed(h(READY))
    assert out == [fstrm.Control(fstrm.CONTROL_READY, (fstrm.CONTENT_TYPE,))]
    assert dec.phase is fstrm.Phase.READY and dec.bidirectional
    assert dec.accept_frame() == h(ACCEPT)
    out = dec.feed(h(START, DATA_ABC, DATA_XY, STOP))
    assert out[1:3] == [b"abc", b"xy"]
    assert isinstance(out[0], fstrm.Control) and out[0].name == "START"
    assert isinstance(out[3], fstrm.Control) and out[3].name == "STOP"
    assert dec.phase.value == "stopped"
    assert dec.finish_frame() == h(FINISH)


def test_unidirectional_session_without_content_type() -> None:
    dec = fstrm.FrameDecoder()
    out = dec.feed(h(START_BARE, DATA_ABC))
    assert out[1:] == [b"abc"]
    assert not dec.bidirectional


def test_every_split_point_gives_the_same_frames() -> None:
    stream = h(READY, START, DATA_ABC, DATA_XY, STOP)
    for cut in range(len(stream) + 1):
        dec = fstrm.FrameDecoder()
        out = dec.feed(stream[:cut]) + dec.feed(stream[cut:])
        assert [x for x in out if isinstance(x, bytes)] == [b"abc", b"xy"], cut
        assert dec.pending == 0


def test_partial_frame_is_held() -> None:
    dec = fstrm.FrameDecoder()
    dec.feed(h(START))
    assert dec.feed(h("00000003", "61")) == []
    assert dec.pending == 5
    assert dec.feed(h("6263")) == [b"abc"]


@pytest.mark.parametrize(
    ("stream", "error", "message"),
    [
        (START + "00100001", FrameTooLarge, "1048577 bytes exceeds max_frame_bytes=65536"),
        (DATA_ABC, UnexpectedFrame, "data frame while opening: START must come first"),
        ("00000000" "00000004" "00000009", ControlFrameError, "unknown control type 9"),
        ("00000000" "00000201", ControlFrameError, "513 bytes exceeds the limit of 512"),
        ("00000000" "00000002" "0000", ControlFrameError, "has no type"),
        ("00000000" "00000006" "00000002" "0000", ControlFrameError, "truncated field header"),
        ("00000000" "0000000c" "00000002" "00000007" "00000000", ControlFrameError,
         "unknown field type 7"),
        ("00000000" "0000000c" "00000002" "00000001" "00000009", ControlFrameError,
         "content type of 9 bytes"),
        ("00000000" "0000000f" "00000004" "00000001" "00000003" "666f6f", ContentTypeError,
         "READY offers [foo], not protobuf:dnstap.Dnstap"),
        ("00000000" "0000000f" "00000002" "00000001" "00000003" "666f6f", ContentTypeError,
         "START content type foo is not protobuf:dnstap.Dnstap"),
        (ACCEPT, UnexpectedFrame, "ACCEPT while opening"),
        (START + START, UnexpectedFrame, "START while data"),
        (START + STOP + DATA_ABC, UnexpectedFrame, "data frame while stopped"),
        (READY + READY, UnexpectedFrame, "READY while ready"),
    ],
)  # fmt: skip
def test_malformed_streams(stream: str, error: type[FrameError], message: str) -> None:
    dec = fstrm.FrameDecoder(max_frame=65536)
    with pytest.raises(error) as info:
        dec.feed(h(stream))
    assert message in str(info.value)


def test_frames_before_an_error_are_kept() -> None:
    dec = fstrm.FrameDecoder()
    with pytest.raises(UnexpectedFrame) as info:
        dec.feed(h(START, DATA_ABC, ACCEPT))
    assert info.value.frames[1:] == [b"abc"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_random_bytes_raise_only_frame_errors(chunks: list[bytes]) -> None:
    for prefix in (b"", h(START), h(READY)):
        dec = fstrm.FrameDecoder(max_frame=4096)
        try:
            dec.feed(prefix)
            for chunk in chunks:
                for item in dec.feed(chunk):
                    assert isinstance(item, bytes | fstrm.Control)
        except DnstapError:
            pass


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=300), max_size=20),
    st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=50),
)
def test_random_frames_survive_random_splits(payloads: list[bytes], sizes: list[int]) -> None:
    stream = h(READY, START) + b"".join(fstrm.encode_data(p) for p in payloads) + h(STOP)
    dec = fstrm.FrameDecoder()
    out: list[bytes | fstrm.Control] = []
    pos, i = 0, 0
    while pos < len(stream):
        size = sizes[i % len(sizes)]
        out += dec.feed(stream[pos : pos + size])
        pos += size
        i += 1
    assert [x for x in out if isinstance(x, bytes)] == payloads
    assert dec.phase is fstrm.Phase.STOPPED


def test_a_frame_trickling_in_byte_by_byte_is_gathered_not_reparsed() -> None:
    payload = b"x" * 200_000
    stream = h(START) + fstrm.encode_data(payload)
    dec = fstrm.FrameDecoder()
    out: list[bytes | fstrm.Control] = []
    for i in range(len(stream)):
        out += dec.feed(stream[i : i + 1])
    assert out[1:] == [payload] and dec.pending == 0
