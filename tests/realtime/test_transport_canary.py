"""Canary: the Sanic and websockets internals ``nexo/realtime/transport.py`` relies on still exist.

The façade goes under Sanic's public WebSocket API (it replaces the
connection's ``data_received``/``process_events``, writes to the TCP transport
while Sanic's send lock is free and ``_can_write`` is set, adopts a message from
Sanic's assembler...). An upgrade that renames or reshapes any of these would
break pushes or backpressure silently; this test fails first, naming the
versions, so the façade is adapted before the upgrade lands.
"""

from __future__ import annotations

import asyncio
import inspect
from importlib.metadata import version

from sanic import Websocket
from sanic.server.protocols.base_protocol import SanicProtocol
from sanic.server.protocols.websocket_protocol import WebSocketProtocol
from sanic.server.websockets.frame import WebsocketFrameAssembler
from sanic.server.websockets.impl import WebsocketImplProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import Event, State
from websockets.server import ServerProtocol

from nexo.realtime.transport import WebSocketTransport

VERSIONS = f"sanic {version('sanic')}, websockets {version('websockets')}"


def _fail(what: str) -> str:
    return (
        f"{what} ({VERSIONS}): nexo/realtime/transport.py relies on it; adapt the façade "
        "to this version before upgrading"
    )


def _parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def _source(function: object) -> str:
    return inspect.getsource(function)  # type: ignore[arg-type]


def test_sanic_websocket_is_the_class_the_facade_is_typed_against() -> None:
    assert Websocket is WebsocketImplProtocol, _fail("sanic.Websocket is no longer WebsocketImplProtocol")
    assert issubclass(WebSocketProtocol, SanicProtocol), _fail("WebSocketProtocol is no SanicProtocol")
    assert "_can_write" in SanicProtocol.__slots__, _fail("SanicProtocol._can_write is gone")
    assert "transport" in SanicProtocol.__slots__, _fail("SanicProtocol.transport is gone")
    assert "self._can_write.set()" in _source(SanicProtocol.resume_writing), _fail(
        "SanicProtocol.resume_writing no longer sets _can_write"
    )
    assert "await self._can_write.wait()" in _source(SanicProtocol.send), _fail(
        "SanicProtocol.send no longer waits on _can_write"
    )


def test_the_connection_attributes_and_methods_exist_with_their_signatures() -> None:
    async def build() -> WebsocketImplProtocol:  # its locks want a running loop on old Pythons
        return WebsocketImplProtocol(ServerProtocol())

    ws = asyncio.run(build())
    for name in ("ws_proto", "io_proto", "assembler", "conn_mutex"):
        assert hasattr(ws, name), _fail(f"WebsocketImplProtocol has no attribute {name!r}")
    assert isinstance(ws.conn_mutex, asyncio.Lock), _fail("conn_mutex is no asyncio.Lock")
    assert isinstance(ws.assembler, WebsocketFrameAssembler), _fail("the assembler changed class")
    for name in ("message_complete", "message_fetched", "chunks", "decoder"):
        assert hasattr(ws.assembler, name), _fail(f"WebsocketFrameAssembler has no attribute {name!r}")
    expected = {
        "data_received": ["self", "data"],
        "process_events": ["self", "events"],
        "async_data_received": ["self", "data_to_send", "events_to_process"],
        "process_pong": ["self", "frame"],
        "send_data": ["self", "data_to_send"],
        "close": ["self", "code", "reason"],
        "end_connection": ["self", "code", "reason"],
        "wait_for_connection_lost": ["self", "timeout"],
    }
    for name, parameters in expected.items():
        method = getattr(WebsocketImplProtocol, name, None)
        assert method is not None, _fail(f"WebsocketImplProtocol.{name} is gone")
        assert _parameters(method) == parameters, _fail(
            f"WebsocketImplProtocol.{name}{inspect.signature(method)} changed (expected {parameters})"
        )
    for name in ("process_events", "async_data_received", "process_pong", "send_data", "close"):
        assert inspect.iscoroutinefunction(getattr(WebsocketImplProtocol, name)), _fail(
            f"WebsocketImplProtocol.{name} is no longer a coroutine function"
        )


def test_sanic_still_reaches_the_replaced_methods_through_the_instance() -> None:
    """Replacing them on the instance works only while Sanic calls them through ``self``."""
    assert "self.websocket.data_received(" in _source(WebSocketProtocol.data_received), _fail(
        "WebSocketProtocol.data_received no longer calls websocket.data_received"
    )
    assert "self.process_events(" in _source(WebsocketImplProtocol.async_data_received), _fail(
        "WebsocketImplProtocol.async_data_received no longer calls self.process_events"
    )
    send = _source(WebsocketImplProtocol.send)
    assert "self.conn_mutex" in send and "self.send_data(" in send, _fail(
        "WebsocketImplProtocol.send no longer writes under conn_mutex through send_data"
    )


def test_the_websockets_protocol_api_the_facade_uses() -> None:
    proto = ServerProtocol()
    for name in ("receive_data", "data_to_send", "events_received", "send_text", "extensions", "state"):
        assert hasattr(proto, name), _fail(f"websockets ServerProtocol has no {name!r}")
    assert _parameters(ServerProtocol.receive_data) == ["self", "data"], _fail("receive_data(data) changed")
    assert hasattr(State, "OPEN"), _fail("websockets State.OPEN is gone")
    for name in ("TEXT", "BINARY", "CONT", "CLOSE", "PONG"):
        assert hasattr(Opcode, name), _fail(f"websockets Opcode.{name} is gone")
    frame = Frame(Opcode.TEXT, b"hi")
    assert (frame.opcode, frame.data, frame.fin) == (Opcode.TEXT, b"hi", True), _fail("Frame fields changed")


def test_the_facade_parses_bytes_with_the_real_protocol() -> None:
    """End to end through the real classes: a masked client frame comes out as one text Frame."""

    async def parse() -> tuple[list[bytes], list[Event]]:
        proto = ServerProtocol()
        proto.receive_data(
            b"GET /ws HTTP/1.1\r\nHost: nexo\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        request = proto.events_received()[0]
        assert isinstance(request, Request)
        proto.send_response(proto.accept(request))  # as Sanic's handshake does
        proto.data_to_send()
        ws = WebsocketImplProtocol(proto)
        assert ws.ws_proto.state is State.OPEN
        # A masked text frame "hi" (RFC 6455 5.7), mask 37 fa 21 3d.
        return WebSocketTransport(ws).parse(bytes.fromhex("818237fa213d5f93"))

    to_send, events = asyncio.run(parse())
    assert to_send == []
    assert len(events) == 1, _fail(f"parsing one frame gave {events!r}")
    event = events[0]
    assert isinstance(event, Frame) and event.opcode is Opcode.TEXT and event.data == b"hi", _fail(
        f"parsing one frame gave {event!r}"
    )
