"""Pure parsing of client frames and the broker payloads (nexo/realtime/protocol.py, broker.py)."""

from __future__ import annotations

import json
import uuid

import pytest

from nexo.messages.service import Delivery
from nexo.realtime.broker import MAX_PAYLOAD, decode, encode
from nexo.realtime.protocol import (
    Auth,
    CloseCode,
    Delivered,
    FrameError,
    Send,
    Sync,
    WsError,
    ack_frame,
    error_frame,
    message_frame,
    parse_frame,
    rate_limited_frame,
    synced_frame,
)

LIMIT = 64 * 1024
MID = str(uuid.uuid4())


def test_good_frames_parse_to_types() -> None:
    send = parse_frame(
        json.dumps({"type": "send", "message_id": MID.upper(), "to": "Bob", "body": "hi"}), LIMIT
    )
    assert send == Send(MID, "Bob", "hi")  # message_id canonical lowercase
    assert parse_frame(json.dumps({"type": "delivered", "message_id": MID}), LIMIT) == Delivered(MID)
    assert parse_frame('{"type":"sync","since":7}', LIMIT) == Sync(7)
    assert parse_frame('{"type":"sync"}', LIMIT) == Sync(0)
    assert parse_frame('{"type":"auth","token":"t"}', LIMIT) == Auth("t")


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{", WsError.INVALID_JSON),
        ("[]", WsError.INVALID_FRAME),
        ('"send"', WsError.INVALID_FRAME),
        ('{"type":"nope"}', WsError.UNKNOWN_TYPE),
        ('{"type":7}', WsError.UNKNOWN_TYPE),
        ("{}", WsError.INVALID_FIELD),
        ('{"type":"send","to":"b","body":"x"}', WsError.INVALID_FIELD),
        ('{"type":"send","message_id":"123","to":"b","body":"x"}', WsError.INVALID_MESSAGE_ID),
        (f'{{"type":"send","message_id":"{MID[:-1]}g","to":"b","body":"x"}}', WsError.INVALID_MESSAGE_ID),
        (f'{{"type":"send","message_id":"{MID}","to":"","body":"x"}}', WsError.UNKNOWN_RECIPIENT),
        (f'{{"type":"send","message_id":"{MID}","to":"b","body":null}}', WsError.INVALID_FIELD),
        (f'{{"type":"send","message_id":"{MID}","to":"b","body":"x","extra":1}}', WsError.INVALID_FIELD),
        ('{"type":"sync","since":-1}', WsError.INVALID_FIELD),
        ('{"type":"sync","since":true}', WsError.INVALID_FIELD),
        ('{"type":"sync","since":1.5}', WsError.INVALID_FIELD),
        ('{"type":"auth"}', WsError.INVALID_FIELD),
    ],
)
def test_bad_frames_raise_stable_codes(text: str, code: WsError) -> None:
    with pytest.raises(FrameError) as caught:
        parse_frame(text, LIMIT)
    assert caught.value.code == code and caught.value.message


def test_body_limit_counts_utf8_bytes() -> None:
    ok = json.dumps({"type": "send", "message_id": MID, "to": "b", "body": "é" * 32768}, ensure_ascii=False)
    assert isinstance(parse_frame(ok, LIMIT), Send)  # 65536 bytes: at the limit
    over = json.dumps({"type": "send", "message_id": MID, "to": "b", "body": "é" * 32769}, ensure_ascii=False)
    with pytest.raises(FrameError) as caught:
        parse_frame(over, LIMIT)
    assert caught.value.code == WsError.BODY_TOO_LARGE and caught.value.message_id == MID


def test_binary_is_refused_and_errors_echo_the_message_id() -> None:
    with pytest.raises(FrameError) as caught:
        parse_frame(b"{}", LIMIT)
    assert caught.value.code == WsError.BINARY_NOT_SUPPORTED
    frame = json.loads(error_frame(WsError.NOT_FOUND, "no", MID))
    assert frame == {"type": "error", "code": "not_found", "message": "no", "message_id": MID}
    assert int(CloseCode.UNAUTHORIZED) == 4401 and int(CloseCode.MESSAGE_TOO_BIG) == 1009


def test_broker_payloads_round_trip_and_skip_our_own() -> None:
    ids = set(range(1, 5000))
    payloads = encode("me", ids)
    assert len(payloads) > 1 and all(len(p) <= MAX_PAYLOAD for p in payloads)
    got = [i for p in payloads for i in decode(p, "other")]
    assert sorted(got) == sorted(ids)
    assert decode(payloads[0], "me") == []
    assert decode("x|1,a", "me") == [] and decode("garbage", "me") == []



def _send(fields: str) -> str:
    """A ``send`` frame with raw JSON ``fields`` after its message_id (to spell escapes)."""
    return '{"type":"send","message_id":"' + MID + '",' + fields + "}"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        (_send('"to":"bob","body":"\\ud800"'), WsError.INVALID_JSON),
        (_send('"to":"bob","body":"\\udc00\\ud800"'), WsError.INVALID_JSON),
        (_send('"to":"\\ud800","body":"x"'), WsError.INVALID_JSON),
        (_send('"\\udfff":1,"to":"b","body":"x"'), WsError.INVALID_JSON),
        (_send('"to":"bob","body":"a\\u0000"'), WsError.INVALID_BODY),
        ('{"type":"sync","since":9223372036854775808}', WsError.INVALID_FIELD),
        ('{"type":"sync","since":99999999999999999999}', WsError.INVALID_FIELD),
        ("[" * 100_000, WsError.INVALID_JSON),
    ],
    ids=["surrogate-body", "reversed-pair", "surrogate-to", "surrogate-key", "nul-body", "since-2^63",
         "since-huge", "deep-nesting"],
)
def test_text_no_database_or_socket_can_carry_is_refused_at_parse(text: str, code: WsError) -> None:
    with pytest.raises(FrameError) as caught:
        parse_frame(text, LIMIT)
    assert caught.value.code == code
    # Whatever is echoed back encodes as UTF-8: the error frame itself can be sent.
    error_frame(caught.value.code, caught.value.message, caught.value.message_id).encode()


def test_valid_text_with_escapes_still_parses() -> None:
    frame = parse_frame(_send('"to":"bob","body":"\\ud83d\\ude00 \\u00e9"'), LIMIT)
    assert frame == Send(MID, "bob", "\U0001f600 \u00e9")
    assert parse_frame('{"type":"sync","since":9223372036854775807}', LIMIT) == Sync(2**63 - 1)


def test_an_unprintable_message_id_is_not_echoed() -> None:
    with pytest.raises(FrameError) as caught:
        parse_frame('{"type":"send","message_id":"a\\nb","to":"bob","body":"x"}', LIMIT)
    assert caught.value.code == WsError.INVALID_MESSAGE_ID and caught.value.message_id is None


def test_server_frames_are_compact_json_in_a_fixed_field_order() -> None:
    row = Delivery(7, MID, 1, 2, "alice", "bob", 'hé "x"', 1700000000123)
    assert message_frame(row) == (
        f'{{"type":"message","message_id":"{MID}","from":"alice","to":"bob",'
        '"body":"hé \\"x\\"","seq":7,"server_ts":1700000000123}'
    )
    assert ack_frame(MID, 7, 1700000000123, False) == (
        f'{{"type":"ack","message_id":"{MID}","seq":7,"server_ts":1700000000123,"duplicate":false}}'
    )
    assert json.loads(ack_frame(MID, 8, 1, True)) == {
        "type": "ack",
        "message_id": MID,
        "seq": 8,
        "server_ts": 1,
        "duplicate": True,
    }
    assert synced_frame(42) == '{"type":"synced","upto":42}'
    assert rate_limited_frame("30/second", MID, 0.12345) == (
        '{"type":"error","code":"rate_limited","message":"send rate limit of 30/second exceeded; '
        f'retry after retry_after seconds","message_id":"{MID}","retry_after":0.123}}'
    )
