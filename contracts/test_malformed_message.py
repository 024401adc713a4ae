"""One malformed message fails alone (docs/messaging.md, docs/security.md).

Messages sent close together are stored together (group commit), so a body
the database cannot take — a lone surrogate escape (``"\\ud800"``), or U+0000,
which PostgreSQL ``text`` cannot hold — must be refused on its own: the valid
messages sent right before and after it on the same connection, in one burst
before any answer is read, are all acked and stored, the malformed one gets an
``error`` frame (never an ack) and the connection stays open. Over HTTP the
malformed body is a 4xx and the next valid message is stored.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import pytest

from contracts.conftest import Accounts, Target
from contracts.wire import open_ws, send_frame

#: Valid messages before, between and after the malformed ones.
AROUND = 10
#: Raw JSON text of each malformed body (escapes as a client would send them).
POISONS = {"lone-surrogate": '"\\ud800"', "nul": '"\\u0000 nul"'}


@pytest.fixture(scope="module")
def pair(accounts: Accounts) -> tuple[Any, Any]:
    return accounts.create(), accounts.create()


def _poison_frame(to: str, body_json: str) -> tuple[str, str]:
    message_id = str(uuid.uuid4())
    text = f'{{"type":"send","message_id":"{message_id}","to":{json.dumps(to)},"body":{body_json}}}'
    return message_id, text


def test_a_malformed_message_among_valid_ones_fails_alone(target: Target, pair: tuple[Any, Any]) -> None:
    sender, recipient = pair
    valid: list[str] = []
    poisoned: list[str] = []
    texts: list[str] = []
    for name, body in POISONS.items():
        for n in range(AROUND):
            outgoing = send_frame(recipient.username, f"contract: around {name} {n}")
            valid.append(outgoing["message_id"])
            texts.append(json.dumps(outgoing))
        message_id, text = _poison_frame(recipient.username, body)
        poisoned.append(message_id)
        texts.append(text)
    for n in range(AROUND):
        outgoing = send_frame(recipient.username, f"contract: after {n}")
        valid.append(outgoing["message_id"])
        texts.append(json.dumps(outgoing))

    async def run() -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        ws = await open_ws(target.ws_url, sender.access_token, target.ws_timeout)
        acks: dict[str, dict[str, Any]] = {}
        errors: list[dict[str, Any]] = []
        try:
            for text in texts:  # one burst: all sent before any answer is read
                await ws.send(text)
            deadline = time.monotonic() + target.ws_timeout
            while len(acks) + len(errors) < len(texts) and (left := deadline - time.monotonic()) > 0:
                try:
                    data = json.loads(await asyncio.wait_for(ws.recv(), left))
                except TimeoutError:
                    break
                if data.get("type") == "ack":
                    acks[data["message_id"]] = data
                elif data.get("type") == "error":
                    errors.append(data)
            return acks, errors
        finally:
            await ws.close()

    acks, errors = asyncio.run(run())
    failed_valid = [e for e in errors if e.get("message_id") in valid]
    assert not failed_valid, (
        f"{len(failed_valid)} valid messages sent around a malformed one got errors: "
        f"{failed_valid[0].get('code')} {failed_valid[0].get('message')!r}"
    )
    missing = [m for m in valid if m not in acks]
    assert not missing, f"{len(missing)} of {len(valid)} valid messages sent around malformed ones got no ack"
    wrongly_acked = [m for m in poisoned if m in acks]
    assert not wrongly_acked, f"a malformed body was acked as stored: {wrongly_acked}"
    assert len(errors) >= len(poisoned), (
        f"{len(poisoned)} malformed messages got {len(errors)} error frames; each needs one"
    )


@pytest.mark.parametrize("name", list(POISONS))
def test_a_malformed_body_over_http_is_a_4xx_and_the_next_message_is_stored(
    target: Target, pair: tuple[Any, Any], name: str
) -> None:
    sender, recipient = pair
    message_id, _ = _poison_frame(recipient.username, POISONS[name])
    raw = (
        f'{{"message_id":"{message_id}","to":{json.dumps(recipient.username)},"body":{POISONS[name]}}}'
    ).encode()
    headers = {**sender.headers, "content-type": "application/json"}
    with httpx.Client(timeout=10) as client:
        bad = client.post(target.url("/api/messages"), content=raw, headers=headers)
        good_id = str(uuid.uuid4())
        good = client.post(
            target.url("/api/messages"),
            json={"message_id": good_id, "to": recipient.username, "body": "contract: after a bad one"},
            headers=sender.headers,
        )
    assert 400 <= bad.status_code < 500, f"POST /api/messages with a {name} body -> {bad.status_code}"
    assert "error" in bad.json(), f"the {bad.status_code} is not a JSON error: {bad.text[:200]}"
    assert good.status_code == 201, f"the valid message after it -> {good.status_code} {good.text[:200]}"
