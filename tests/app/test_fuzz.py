"""Issue 14, finding 6: no input reaches a 5xx, no frame closes a socket with 1011.

Two fuzzers against a real server on a healthy database:

* schemathesis over the whole OpenAPI document (``/docs/openapi.json``), every
  operation, valid and invalid inputs, with a real token (a fresh account for the
  operations that end their session): every answer must be below 500;
* Hypothesis-generated WebSocket frames (any JSON shape, huge and negative
  integers, lone surrogates, non-JSON, binary) on an authenticated connection and
  as the first (auth) frame of an unauthenticated one: an ``error`` frame or 4401,
  never 1011.

Runs are deterministic (``derandomize``) and bounded so CI stays predictable;
``NEXO_FUZZ_EXAMPLES`` raises the number of examples and ``NEXO_FUZZ_RANDOM=1``
explores new ones (docs/security.md "No input reaches a 5xx").
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from contracts.client import Account
from contracts.server import LocalServer
from tests.conftest import server_factory
from tests.support.realtime import FAST_ENV, account, close_code, next_frame, open_ws, send_frame

pytestmark = pytest.mark.server

EXAMPLES = int(os.environ.get("NEXO_FUZZ_EXAMPLES", "40"))
INT64_MAX = 2**63 - 1

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=os.environ.get("NEXO_FUZZ_RANDOM") != "1",
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)

#: Operations that end the caller's session: each example gets a fresh account.
SESSION_ENDING = {("DELETE", "/api/me"), ("POST", "/api/auth/logout")}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with server_factory(tmp_path_factory.mktemp("fuzz")) as make:
        yield make(FAST_ENV)


@pytest.fixture(scope="module")
def api_schema(fuzz_server: LocalServer) -> Any:
    return schemathesis.openapi.from_url(f"{fuzz_server.base_url}/docs/openapi.json")


def test_openapi_declares_every_parameter_with_type_and_bounds(fuzz_server: LocalServer) -> None:
    doc = httpx.get(f"{fuzz_server.base_url}/docs/openapi.json").json()
    queried = {"/api/messages", "/api/sth", "/api/log/entries", "/api/log/proof/inclusion"}
    queried |= {"/api/log/proof/consistency"}
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            params = {p["name"]: p for p in operation.get("parameters", [])}
            for name in re.findall(r"{(\w+)}", path):
                assert params.get(name, {}).get("in") == "path", f"{method} {path}: {name} undeclared"
            for param in params.values():
                schema = param["schema"]
                assert schema.get("type") in {"integer", "string"}, (path, param)
                if schema["type"] == "integer":
                    assert schema["format"] == "int64", (path, param)
                    assert 0 <= schema["minimum"] <= schema["maximum"] <= INT64_MAX, (path, param)
            if path in queried and method == "get":
                assert any(p["in"] == "query" for p in params.values()), f"{path}: query undeclared"
    sth = doc["paths"]["/api/sth/{index}"]["get"]["parameters"][0]["schema"]
    assert sth["type"] == "integer" and sth["maximum"] == INT64_MAX


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
def test_schemathesis_over_the_openapi_document_finds_no_5xx(
    fuzz_server: LocalServer, api_schema: Any, mode: schemathesis.GenerationMode
) -> None:
    owner = account(fuzz_server)
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 20, "the document lost operations"
    for operation in operations:
        if operation.path == "/ws":
            continue  # a WebSocket upgrade, fuzzed below with real frames
        fresh = (operation.method.upper(), operation.path) in SESSION_ENDING
        failures += fuzz_operation(fuzz_server, operation, mode, None if fresh else owner.access_token)
    assert not failures, "\n".join(failures[:10])
    assert "Traceback" not in fuzz_server.log_text()


def fuzz_operation(server: LocalServer, operation: Any, mode: Any, token: str | None) -> list[str]:
    """Call ``operation`` with generated cases; the 5xx answers (``token=None``: a fresh account each)."""
    failures: list[str] = []

    @FUZZ_SETTINGS
    @given(case=operation.as_strategy(generation_mode=mode))
    def call(case: Any) -> None:
        bearer = token or account(server).access_token
        headers = {**(case.headers or {}), "Authorization": f"Bearer {bearer}"}
        response = case.call(base_url=server.base_url, headers=headers, timeout=30)
        if response.status_code >= 500:
            failures.append(f"{response.status_code} {case.as_curl_command()}\n{response.text[:300]}")

    try:
        call()
    except Unsatisfiable:
        # Negative mode on an operation with no parameter and no body: nothing can be made invalid.
        assert mode == schemathesis.GenerationMode.NEGATIVE and not operation.query and not operation.body
    return failures


# --- WebSocket frames --------------------------------------------------------------------------

#: Any character, lone surrogates included (json.dumps spells them as \udXXX escapes).
ANY_CHAR = st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr), st.sampled_from("\x00\n\"\\"))
TEXT = st.text(ANY_CHAR, max_size=40)
HUGE = st.one_of(
    st.integers(),
    st.integers(INT64_MAX - 2, INT64_MAX + 2),
    st.integers(-(2**200), 2**200),
    st.sampled_from([-1, 0, 2**63, 10**30, -(2**63) - 1]),
)
SCALAR = st.one_of(st.none(), st.booleans(), HUGE, st.floats(allow_nan=False), TEXT)
JSON_VALUE = st.recursive(
    SCALAR, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=8
)
FIELDS = {
    "type": st.one_of(st.sampled_from(["send", "sync", "delivered", "auth"]), JSON_VALUE),
    "message_id": st.one_of(st.uuids().map(str), TEXT, JSON_VALUE),
    "to": st.one_of(TEXT, JSON_VALUE),
    "body": st.one_of(TEXT, JSON_VALUE),
    "since": st.one_of(HUGE, JSON_VALUE),
    "token": st.one_of(TEXT, st.from_regex(r"\A[A-Za-z0-9_\-]{1,20}\.[^.]{0,20}\.[^.]{0,20}\Z"), JSON_VALUE),
}
FRAME_OBJECT = st.fixed_dictionaries(
    {"type": FIELDS["type"]},
    optional={name: strategy for name, strategy in FIELDS.items() if name != "type"}
    | {"extra": JSON_VALUE},
)
FRAME = st.one_of(
    FRAME_OBJECT.map(lambda frame: json.dumps(frame)),  # ensure_ascii: lone surrogates as \udXXX
    FRAME_OBJECT.map(lambda frame: json.dumps(frame, ensure_ascii=False).encode("utf-8", "replace").decode()),
    JSON_VALUE.map(json.dumps),
    st.text(max_size=60),
    st.binary(max_size=60),
)


async def close_code_after(
    server: LocalServer, token: str | None = None, frame: str | bytes | None = None
) -> int | None:
    """Open ``/ws`` (with ``token`` in the header, if any), send ``frame``; the server's close code."""
    ws = await open_ws(server, token)
    if frame is not None:
        await ws.send(frame)
    code, _ = await close_code(ws, 15)
    return code


class Probe:
    """One authenticated connection that follows every fuzzed frame with a ``sync`` round trip."""

    def __init__(self, server: LocalServer, owner: Account) -> None:
        self.server = server
        self.owner = owner
        self.ws: ClientConnection | None = None
        self.problems: list[str] = []
        self.last: str | bytes = ""
        self.count = 0

    async def connection(self) -> ClientConnection:
        if self.ws is None:
            self.ws = await open_ws(self.server, self.owner.access_token)
        return self.ws

    async def try_frame(self, frame: str | bytes) -> None:
        ws = await self.connection()
        self.count += 1
        marker = 10**18 + self.count  # this round trip's own ``synced``, not one the frame asked for
        try:
            await ws.send(frame)
            await ws.send(json.dumps({"type": "sync", "since": marker}))
            while (await next_frame(ws, "synced", timeout=15))["upto"] != marker:
                pass
        except ConnectionClosed as closed:
            self.ws = None
            code = closed.rcvd.code if closed.rcvd else None
            renewal = isinstance(frame, str) and '"auth"' in frame
            if not (code == 4401 and renewal):  # a failed in-band renewal ends the session: 4401
                self.problems.append(f"closed {code} ({closed!r}) after {frame!r}; before: {self.last!r}")
        finally:
            self.last = frame


def test_hypothesis_frames_on_an_open_connection_never_close_it_with_1011(fuzz_server: LocalServer) -> None:
    owner, friend = account(fuzz_server), account(fuzz_server)
    loop = asyncio.new_event_loop()
    probe = Probe(fuzz_server, owner)
    try:

        @settings(FUZZ_SETTINGS, max_examples=EXAMPLES * 25)
        @given(frame=FRAME)
        def run(frame: str | bytes) -> None:
            loop.run_until_complete(probe.try_frame(frame))

        run()
        # The connection still works for an honest send afterwards.
        loop.run_until_complete(probe.try_frame(send_frame(friend.username, "still fine")))
    finally:
        if probe.ws is not None:
            loop.run_until_complete(probe.ws.close())
        loop.close()
    assert not probe.problems, "\n".join(probe.problems[:10])
    assert "Traceback" not in fuzz_server.log_text()


def test_hypothesis_first_frames_get_4401_never_1011(fuzz_server: LocalServer) -> None:
    loop = asyncio.new_event_loop()
    problems: list[str] = []

    async def first_frame(frame: str | bytes) -> None:
        code = await close_code_after(fuzz_server, frame=frame)
        if code != 4401:
            problems.append(f"closed {code} after {frame!r}")

    try:

        @settings(FUZZ_SETTINGS, max_examples=EXAMPLES * 5)
        @given(frame=FRAME)
        def run(frame: str | bytes) -> None:
            loop.run_until_complete(first_frame(frame))

        run()
    finally:
        loop.close()
    assert not problems, "\n".join(problems[:10])


@pytest.mark.parametrize(
    "token",
    ["a.b.\xff", "a.b.\u00e9", "eyJhbGciOiJIUzI1NiJ9.e30.\xfe", "Bearer", "a.b", "..", str(uuid.uuid4())],
)
def test_malformed_authorization_header_on_the_upgrade_is_4401(fuzz_server: LocalServer, token: str) -> None:
    # Raw latin-1 header bytes, as a hostile client can send them.
    assert asyncio.run(close_code_after(fuzz_server, token=token)) == 4401


# --- The inputs the issue reported, one by one ------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/messages?since=99999999999999999999",
        "/api/messages?since=9223372036854775808",
        "/api/messages?limit=99999999999999999999",
        "/api/sth/9999999999999999999",
        "/api/sth/99999999999999999999999",
        "/api/sth/\u0663",  # an Arabic-Indic digit: isdecimal() but not an index
        "/api/sth?start=99999999999999999999",
        "/api/sth?start=0&limit=99999999999999999999",
        "/api/log/entries?start=0&end=99999999999999999999",
        "/api/log/entries?start=99999999999999999999&end=0",
        "/api/log/proof/inclusion?leaf_index=99999999999999999999&tree_size=1",
        "/api/log/proof/consistency?first=99999999999999999999&second=1",
    ],
)
def test_an_integer_parameter_beyond_64_bits_is_400(fuzz_server: LocalServer, path: str) -> None:
    owner = account(fuzz_server)
    response = httpx.get(fuzz_server.base_url + path, headers=owner.headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_parameter"


@pytest.mark.parametrize("username", ["x" * 300, "a" * 33, "nul\x00name", "white space", "\u212aelvin"])
def test_a_login_with_a_username_no_account_can_have_is_401(fuzz_server: LocalServer, username: str) -> None:
    response = httpx.post(
        f"{fuzz_server.base_url}/api/auth/login", json={"username": username, "password": "whatever-12"}
    )
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "invalid_credentials"


@pytest.mark.parametrize("value", [b"Bearer a.b.\xff", b"Bearer \xff\xfe", "Bearer a.\u00e9.c".encode()])
def test_a_malformed_bearer_token_over_http_is_401(fuzz_server: LocalServer, value: bytes) -> None:
    response = httpx.get(f"{fuzz_server.base_url}/api/me", headers={"Authorization": value})
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "invalid_token"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "frame",
    [
        '{"type":"auth","token":"eyJhbGciOiJIUzI1NiJ9.\\ud800.x"}',
        '{"type":"auth","token":"a.b.\u00e9"}',
        '{"type":"auth","token":"a.b.c\\u0000"}',
    ],
)
def test_an_auth_frame_with_a_malformed_token_is_4401(fuzz_server: LocalServer, frame: str) -> None:
    assert asyncio.run(close_code_after(fuzz_server, frame=frame)) == 4401


@pytest.mark.parametrize("since", ["18446744073709551616", "9223372036854775808", "1e400", "-1"])
def test_a_sync_beyond_64_bits_is_an_error_frame_and_the_socket_stays_open(
    fuzz_server: LocalServer, since: str
) -> None:
    owner = account(fuzz_server)

    async def scenario() -> dict[str, Any]:
        ws = await open_ws(fuzz_server, owner.access_token)
        try:
            await ws.send('{"type":"sync","since":' + since + "}")
            error = await next_frame(ws, "error")
            await ws.send(json.dumps({"type": "sync", "since": INT64_MAX}))
            assert (await next_frame(ws, "synced"))["upto"] == INT64_MAX
            return error
        finally:
            await ws.close()

    error = asyncio.run(scenario())
    assert error["code"] == "invalid_field"
