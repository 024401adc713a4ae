"""Runbook "Check ACK mechanism": the server sends an ACK for each message.

docs/messaging.md "Frames": ``ack`` carries ``message_id``, ``seq``, ``server_ts`` and
``duplicate``, and is sent only after the message is durably committed, so
the message is readable through the API as soon as its ack arrives.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from contracts.conftest import Accounts, Figure, Target
from contracts.wire import frame, is_ack, open_ws, send_frame

PIPELINED = 200
#: Messages sent one at a time, each waiting for its ack: a server that drops one ack in
#: ten is caught here by name, not only by the pipelined count.
SEQUENTIAL = 30


@pytest.fixture(scope="module")
def pair(accounts: Accounts) -> tuple[Any, Any]:
    return accounts.create(), accounts.create()


def test_each_message_gets_an_ack_after_it_is_stored(target: Target, pair: tuple[Any, Any]) -> None:
    sender, recipient = pair

    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        ws = await open_ws(target.ws_url, sender.access_token, target.ws_timeout)
        try:
            outgoing = send_frame(recipient.username, "contract: ack")
            await ws.send(json.dumps(outgoing))
            return outgoing, await frame(ws, target.ws_timeout, is_ack(outgoing["message_id"]))
        finally:
            await ws.close()

    outgoing, ack = asyncio.run(run())
    assert ack["duplicate"] is False, f"first send acked as duplicate: {ack}"
    assert isinstance(ack["seq"], int) and not isinstance(ack["seq"], bool), ack
    assert "server_ts" in ack, ack
    stored = httpx.get(
        target.url(f"/api/messages/{outgoing['message_id']}"), headers=sender.headers, timeout=10
    )
    assert stored.status_code == 200, f"acked message not readable right after the ack: {stored.status_code}"
    body = stored.json()
    message = body.get("message", body)
    assert message["message_id"] == outgoing["message_id"] and message["seq"] == ack["seq"], (
        f"stored message differs from its ack: {message} vs {ack}"
    )


def test_sequential_messages_are_each_acked(target: Target, pair: tuple[Any, Any]) -> None:
    sender, recipient = pair

    async def run() -> list[dict[str, Any]]:
        ws = await open_ws(target.ws_url, sender.access_token, target.ws_timeout)
        acks = []
        try:
            for n in range(SEQUENTIAL):
                outgoing = send_frame(recipient.username, f"contract: one at a time {n}")
                await ws.send(json.dumps(outgoing))
                try:
                    acks.append(await frame(ws, target.ws_timeout, is_ack(outgoing["message_id"])))
                except AssertionError as exc:
                    raise AssertionError(
                        f"message {n + 1} of {SEQUENTIAL} sent one at a time: {exc}"
                    ) from None
            return acks
        finally:
            await ws.close()

    acks = asyncio.run(run())
    assert len({a["seq"] for a in acks}) == SEQUENTIAL, "sequential messages were acked with repeated seqs"


def test_pipelined_messages_get_one_distinct_ack_each(
    target: Target, pair: tuple[Any, Any], figure: Figure
) -> None:
    sender, recipient = pair

    async def run() -> tuple[list[str], list[dict[str, Any]], float]:
        ws = await open_ws(target.ws_url, sender.access_token, target.ws_timeout)
        try:
            frames = [send_frame(recipient.username, f"contract: pipelined {i}") for i in range(PIPELINED)]
            started = time.perf_counter()
            for outgoing in frames:  # all sent before any ack is read
                await ws.send(json.dumps(outgoing))
            acks = [await frame(ws, target.ws_timeout, is_ack()) for _ in frames]
            return [f["message_id"] for f in frames], acks, time.perf_counter() - started
        finally:
            await ws.close()

    sent, acks, seconds = asyncio.run(run())
    figure(f"{len(acks)} acks for {PIPELINED} pipelined messages in {seconds * 1000:.0f} ms")
    acked = [a["message_id"] for a in acks]
    assert sorted(acked) == sorted(sent), "acks must name each sent message exactly once"
    seqs = [a["seq"] for a in acks]
    assert len(set(seqs)) == PIPELINED, f"{PIPELINED - len(set(seqs))} acks share a seq"
    assert not any(a["duplicate"] for a in acks), "a first send was acked as a duplicate"
