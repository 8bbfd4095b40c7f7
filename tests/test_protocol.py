"""The sans-I/O core, byte for byte, without an event loop."""

from __future__ import annotations

import json

import pytest

from pushsvc.exceptions import BadCursor, BadRequest, PayloadTooLarge
from pushsvc.protocol import client_frames, frames
from pushsvc.protocol import cursor as cursor_codec
from pushsvc.protocol.events import Event, Gap
from pushsvc.protocol.ids import format_id, parse_id
from pushsvc.protocol.names import check_channel
from pushsvc.protocol.resume import ChannelPosition


def ev(
    channel: str, ms: int, seq: int = 0, data: bytes = b'{"x":1}', binary: bool = False
) -> Event:
    return Event(channel, (ms, seq), "message", data, binary)


def test_cursor_round_trips_every_channel_position() -> None:
    positions = {f"chat:room-{i}": (1_764_000_000_000 + i, i) for i in range(10)}
    text = cursor_codec.encode(positions)
    assert cursor_codec.positions_for(text, positions) == positions


def test_cursor_for_ten_channels_is_compact_and_url_safe() -> None:
    positions = {f"a-rather-long-channel-name:{i}": (1_764_000_000_000, 65_000) for i in range(10)}
    text = cursor_codec.encode(positions)
    assert len(text) < 210
    assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_cursor_is_the_concatenation_of_event_segments() -> None:
    e1, e2 = ev("a", 10, 1), ev("b", 20, 2)
    assert cursor_codec.encode({"a": (10, 1), "b": (20, 2)}) == "c1" + e1.segment + e2.segment


def test_every_single_character_change_of_a_cursor_is_rejected() -> None:
    text = cursor_codec.encode({"a": (1_764_000_000_123, 7), "b": (5, 0)})
    alphabet = "AZaz09-_"
    for i in range(len(text)):
        for ch in alphabet:
            tampered = text[:i] + ch + text[i + 1 :]
            if tampered == text:
                continue
            with pytest.raises(BadCursor):
                cursor_codec.decode(tampered)


@pytest.mark.parametrize(
    "bad", ["", "x", "c2AAAA", "c1" + "A" * 19, "c1" + "=" * 20, "c1" + "é" * 20, "c1" + "A" * 20]
)
def test_malformed_cursors_raise_bad_cursor(bad: str) -> None:
    with pytest.raises(BadCursor):
        cursor_codec.decode(bad)


def test_channels_absent_from_the_cursor_have_no_position() -> None:
    text = cursor_codec.encode({"a": (1, 0)})
    assert cursor_codec.positions_for(text, ["a", "b"]) == {"a": (1, 0), "b": None}


def test_event_ids_parse_and_format() -> None:
    assert parse_id("1764000000000-3") == (1_764_000_000_000, 3)
    assert parse_id("17") == (17, 0)
    assert format_id((5, 6)) == "5-6"
    for bad in ["", "-", "a-1", "1-b", "1-2-3", "١-1", "9" * 30]:
        with pytest.raises(BadRequest):
            parse_id(bad)


def test_channel_names_are_restricted_to_a_safe_alphabet() -> None:
    assert check_channel("chat:room/1@x=y+z.w_v-u") == "chat:room/1@x=y+z.w_v-u"
    for bad in ["", "a b", "a{b}", "a\nb", "x" * 129, "é", None, 5]:
        with pytest.raises(BadRequest):
            check_channel(bad)


def test_sse_frame_is_byte_exact_and_cached_per_event() -> None:
    e = ev("a", 10, 1)
    frame = frames.sse_event(e, None)
    assert frame == (
        b'event: message\ndata: {"channel":"a","event":"message","id":"10-1","data":{"x":1}}\n'
        b"id: c1" + e.segment.encode() + b"\n\n"
    )
    assert frames.sse_event(e, None) is frame  # encode once, same object for everyone


def test_ws_frame_carries_channel_event_id_data_and_cursor() -> None:
    e = ev("a", 10, 1)
    frame = frames.ws_event(e, None)
    assert isinstance(frame, str)
    assert json.loads(frame) == {
        "type": "event",
        "channel": "a",
        "event": "message",
        "id": "10-1",
        "data": {"x": 1},
        "cursor": "c1" + e.segment,
    }
    assert frames.ws_event(e, None) is frame
    multi = frames.ws_event(e, "c1XYZ")
    assert json.loads(multi)["cursor"] == "c1XYZ"


def test_binary_events_are_binary_ws_frames_and_base64_elsewhere() -> None:
    e = ev("a", 10, 1, data=b"\x00\xffbin\n", binary=True)
    ws = frames.ws_event(e, None)
    assert isinstance(ws, bytes)
    head, _, payload = ws.partition(b"\n")
    assert payload == b"\x00\xffbin\n"
    assert json.loads(head)["encoding"] == "binary"
    poll = json.loads(frames.poll_event(e))
    assert poll["encoding"] == "base64" and poll["data"] == "AP9iaW4K"


def test_poll_response_is_one_body() -> None:
    body = frames.poll_response(
        [frames.poll_event(ev("a", 1)), frames.poll_event(ev("a", 2))], "c1"
    )
    parsed = json.loads(body)
    assert [e["id"] for e in parsed["events"]] == ["1-0", "2-0"] and parsed["cursor"] == "c1"


def test_gap_frames_name_the_channel_and_the_missing_range() -> None:
    gap = Gap("a", (1, 0), (9, 2))
    assert json.loads(frames.poll_gap(gap)) == {
        "type": "gap",
        "channel": "a",
        "after": "1-0",
        "until": "9-2",
    }
    assert b"event: gap\n" in frames.sse_gap(gap, "c1")


# --- the resume merge -----------------------------------------------------------------


def test_resume_seam_has_no_gap_and_no_duplicate() -> None:
    pos = ChannelPosition((1, 0))
    # live events arrive while history is being read: buffered, not delivered
    assert not pos.offer_live(ev("a", 3))
    assert not pos.offer_live(ev("a", 4))
    # history overlaps the buffer (3 was read from the log too)
    assert [e.id for e in [ev("a", 2), ev("a", 3)] if pos.admit(e)] == [(2, 0), (3, 0)]
    released = pos.go_live()
    assert released is not None and [e.id for e in released] == [(4, 0)]
    # now live: duplicates and old events are dropped, new ones pass
    assert not pos.offer_live(ev("a", 4))
    assert pos.offer_live(ev("a", 5))


def test_live_buffer_overflow_asks_for_another_read_instead_of_losing() -> None:
    pos = ChannelPosition((0, 0), buffer_limit=2)
    for ms in (1, 2, 3):
        pos.offer_live(ev("a", ms))
    assert pos.go_live() is None  # read the log again from the position
    assert all(pos.admit(e) for e in [ev("a", 1), ev("a", 2), ev("a", 3)])
    assert pos.go_live() == []


def test_position_ahead_of_the_log_is_clamped() -> None:
    pos = ChannelPosition((99, 0))
    pos.clamp((5, 0))
    assert pos.position == (5, 0)
    assert pos.offer_live(ev("a", 6)) is False  # still resuming
    assert [e.id for e in pos.go_live() or []] == [(6, 0)]


# --- client frames --------------------------------------------------------------------


LIMITS = client_frames.Limits(max_channels=3, max_payload_bytes=16)


def test_client_frames_parse() -> None:
    sub = client_frames.parse_text('{"type":"subscribe","channels":["a","b","a"]}', LIMITS)
    assert sub == client_frames.Subscribe(["a", "b"], None)
    pub = client_frames.parse_text('{"type":"publish","id":"m1","channel":"a","data":[1]}', LIMITS)
    assert pub == client_frames.Publish("m1", "a", "message", b"[1]", False)
    binpub = client_frames.parse_binary(
        b'{"type":"publish","id":"m","channel":"a"}\n\x00\x01', LIMITS
    )
    assert isinstance(binpub, client_frames.Publish) and binpub.data == b"\x00\x01"


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"type":"nope"}',
        '{"type":"subscribe"}',
        '{"type":"subscribe","channels":["a","b","c","d"]}',
        '{"type":"subscribe","channels":["bad name"]}',
        '{"type":"subscribe","channels":["a"],"cursor":5}',
        '{"type":"publish","channel":"a","data":1}',
        '{"type":"publish","id":"m","channel":"a"}',
        '{"type":"publish","id":"m","channel":"a","data_b64":"%%%"}',
        '{"type":"refresh"}',
        "[" * 100_000,
    ],
)
def test_bad_client_frames_raise_bad_request(text: str) -> None:
    with pytest.raises(BadRequest):
        client_frames.parse_text(text, LIMITS)


def test_oversize_publish_frame_is_payload_too_large() -> None:
    with pytest.raises(PayloadTooLarge):
        client_frames.parse_text(
            '{"type":"publish","id":"m","channel":"a","data":"' + "x" * 40 + '"}', LIMITS
        )
