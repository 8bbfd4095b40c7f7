"""The RFC 6455 frame codec (``pushsvc.protocol.wsframes``), byte for byte, no event loop."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pushsvc.protocol.wsframes import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    WS_1002_PROTOCOL_ERROR,
    WS_1005_NO_STATUS_RCVD,
    Frame,
    FrameDecoder,
    FrameError,
    apply_mask,
    encode_close,
    encode_frame,
    frame_header,
    parse_close,
)

MASK = b"\x12\x34\x56\x78"


def test_headers_use_7_16_and_64_bit_lengths() -> None:
    assert frame_header(OP_TEXT, 125) == b"\x81\x7d"
    assert frame_header(OP_TEXT, 126) == b"\x81\x7e\x00\x7e"
    assert frame_header(OP_TEXT, 65535) == b"\x81\x7e\xff\xff"
    assert frame_header(OP_TEXT, 65536) == b"\x81\x7f" + (65536).to_bytes(8, "big")
    assert frame_header(OP_BINARY, 3, fin=False, masked=True) == b"\x02\x83"


def test_header_is_what_a_server_writes_before_a_text_payload() -> None:
    # the bytes pushsvc.server's write_texts builds with struct
    for n in (0, 5, 125, 126, 300, 65535, 65536, 70_000):
        if n < 126:
            expected = bytes((0x81, n))
        elif n < 65536:
            expected = struct.pack("!BBH", 0x81, 126, n)
        else:
            expected = struct.pack("!BBQ", 0x81, 127, n)
        assert frame_header(OP_TEXT, n) == expected


def test_rfc_example_frames_decode() -> None:
    # RFC 6455 5.7: a single-frame unmasked and masked text message "Hello"
    assert FrameDecoder().feed(b"\x81\x05\x48\x65\x6c\x6c\x6f") == [(OP_TEXT, b"Hello")]
    masked = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
    assert FrameDecoder(masked=True).feed(masked) == [(OP_TEXT, b"Hello")]
    assert encode_frame(OP_TEXT, b"Hello", mask=b"\x37\xfa\x21\x3d") == masked
    # a fragmented unmasked text message "Hel" + "lo"
    parts = b"\x01\x03\x48\x65\x6c" + b"\x80\x02\x6c\x6f"
    assert FrameDecoder().feed(parts) == [(OP_TEXT, b"Hello")]


def test_a_frame_split_anywhere_waits_for_its_rest() -> None:
    payload = bytes(range(256)) * 300  # a 64-bit length
    wire = encode_frame(OP_BINARY, payload) + encode_frame(OP_TEXT, b"x" * 200)  # 16-bit
    decoder = FrameDecoder()
    got: list[Frame] = []
    for i in range(0, len(wire), 7):
        got += decoder.feed(wire[i : i + 7])
        if i + 7 < len(wire) - 204:
            assert got == []
    assert got == [(OP_BINARY, payload), (OP_TEXT, b"x" * 200)]
    assert decoder.buffered == 0


def test_control_frames_pass_between_fragments() -> None:
    wire = (
        encode_frame(OP_TEXT, b"ab", fin=False)
        + encode_frame(OP_PING, b"p")
        + encode_frame(OP_CONTINUATION, b"cd", fin=False)
        + encode_frame(OP_PONG, b"")
        + encode_frame(OP_CONTINUATION, b"ef")
        + encode_frame(OP_CLOSE, encode_close(1000, "bye"))
    )
    frames = FrameDecoder().feed(wire)
    assert frames == [
        (OP_PING, b"p"),
        (OP_PONG, b""),
        (OP_TEXT, b"abcdef"),
        (OP_CLOSE, b"\x03\xe8bye"),
    ]
    assert parse_close(frames[-1][1]) == (1000, "bye")


def test_a_length_in_a_longer_form_than_needed_still_decodes() -> None:
    ping = b"\x89\x7e\x00\x02hi"  # 2 in the 16-bit form
    text = b"\x81\x7f" + (3).to_bytes(8, "big") + b"abc"  # 3 in the 64-bit form
    assert FrameDecoder().feed(ping + text) == [(OP_PING, b"hi"), (OP_TEXT, b"abc")]


def test_close_payloads() -> None:
    assert parse_close(b"") == (WS_1005_NO_STATUS_RCVD, "")
    assert parse_close(encode_close(4008)) == (4008, "")
    with pytest.raises(FrameError):
        parse_close(b"\x03")


@pytest.mark.parametrize(
    "wire, masked, why",
    [
        (b"\xc1\x00", False, "reserved bits"),  # RSV1 without an extension
        (b"\x83\x00", False, "reserved opcode"),
        (b"\x80\x00", False, "continuation without"),
        (b"\x01\x01a\x81\x01b", False, "new message inside"),
        (b"\x09\x00", False, "fragmented control"),
        (b"\x89\x7e\x00\x7e" + b"x" * 126, False, "over 125"),
        (b"\x81\x81" + MASK + b"x", False, "a masked frame"),  # a server must not mask
        (b"\x81\x01x", True, "an unmasked frame"),  # a client must mask
        (b"\x82\x7f\x80" + b"\x00" * 7, False, "top bit"),
    ],
)
def test_broken_frames_stop_the_decoder(wire: bytes, masked: bool, why: str) -> None:
    good = encode_frame(OP_TEXT, b"ok", mask=MASK if masked else None)
    decoder = FrameDecoder(masked=masked)
    assert decoder.feed(good + wire) == [(OP_TEXT, b"ok")]  # what came before is kept
    assert decoder.error is not None
    assert decoder.error.code == WS_1002_PROTOCOL_ERROR and why in decoder.error.reason
    assert decoder.feed(good) == []  # stopped


def test_a_message_over_max_size_is_refused_from_its_header() -> None:
    decoder = FrameDecoder(max_size=100)
    assert decoder.feed(encode_frame(OP_TEXT, b"x" * 100)) == [(OP_TEXT, b"x" * 100)]
    # fragments count together; the header alone is enough to refuse
    assert decoder.feed(encode_frame(OP_TEXT, b"x" * 60, fin=False)) == []
    assert decoder.feed(frame_header(OP_CONTINUATION, 41)) == []
    assert decoder.error is not None and decoder.error.code == 1009


messages = st.lists(
    st.tuples(
        st.sampled_from([OP_TEXT, OP_BINARY, OP_PING, OP_PONG]),
        st.binary(max_size=70_000),
        st.integers(min_value=1, max_value=4),  # fragments of a data message
    ),
    max_size=6,
)


def encode_all(
    items: list[tuple[int, bytes, int]], mask: bytes | None
) -> tuple[bytes, list[Frame]]:
    wire = b""
    expected: list[Frame] = []
    for opcode, payload, pieces in items:
        if opcode in (OP_PING, OP_PONG):
            payload = payload[:125]
            pieces = 1
        step = max(1, -(-len(payload) // pieces))
        chunks = [payload[i : i + step] for i in range(0, len(payload), step)] or [b""]
        for i, chunk in enumerate(chunks):
            op = opcode if i == 0 else OP_CONTINUATION
            wire += encode_frame(op, chunk, fin=i == len(chunks) - 1, mask=mask)
        expected.append((opcode, payload))
    return wire, expected


@given(items=messages, cuts=st.lists(st.integers(min_value=0), max_size=8), masked=st.booleans())
def test_round_trip_whatever_the_chunking(
    items: list[tuple[int, bytes, int]], cuts: list[int], masked: bool
) -> None:
    wire, expected = encode_all(items, MASK if masked else None)
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    decoder = FrameDecoder(masked=masked)
    got: list[Frame] = []
    for a, b in itertools.pairwise(points):
        got += decoder.feed(wire[a:b])
    assert decoder.error is None
    assert got == expected
    assert decoder.buffered == 0


@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4))
def test_masking_twice_is_the_identity(payload: bytes, key: bytes) -> None:
    assert apply_mask(apply_mask(payload, key), key) == payload
