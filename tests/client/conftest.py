"""Fixtures for the client SDK's tests: real servers, registered SDK clients, fault proxies."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contracts.server import LocalServer
from nexo_client import Message, NexoClient, Witness
from tests.conftest import server_factory
from tests.support.realtime import FAST_ENV

ClientFactory = Callable[..., Awaitable[NexoClient]]
PASSWORD = "correct horse battery"


def new_name(prefix: str = "cl") -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


@pytest.fixture(scope="module")
def nexo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """One server per module (tests make their own users)."""
    with server_factory(tmp_path_factory.mktemp("nexo")) as make:
        yield make(FAST_ENV)


@pytest.fixture
async def make_client(tmp_path: Path) -> AsyncIterator[ClientFactory]:
    """``await make_client(url, username=None, state=None, register=True, **options)``."""
    opened: list[NexoClient] = []
    counter = 0

    async def make(url: str, username: str | None = None, *, state: Path | None = None,
                   register: bool = True, login: bool = False, **options: Any) -> NexoClient:
        nonlocal counter
        counter += 1
        client = NexoClient(url, state or tmp_path / f"client{counter}", **options)
        opened.append(client)
        if username and register:
            await client.register(username, PASSWORD)
        elif username and login:
            await client.login(username, PASSWORD)
        return client

    yield make
    for client in opened:
        try:
            await client.close()
        except Exception:  # noqa: S110 - already closed by the test
            pass


class Inbox:
    """A handler that records what the application saw."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    async def wait(self, count: int, timeout: float = 30.0) -> list[str]:
        """Wait until ``count`` messages were handled (fails the test otherwise)."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            assert time.monotonic() < deadline, f"{len(self.messages)} of {count} messages after {timeout} s"
            await asyncio.sleep(0.05)
        return self.texts

    @property
    def texts(self) -> list[str]:
        return [m.text for m in self.messages]


@pytest.fixture
def witness_key(tmp_path: Path) -> tuple[Path, Witness]:
    """A witness's PEM key file (for the proxy) and its :class:`Witness` (for the client)."""
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "witness.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return path, Witness("witness.test/w1", public)


def signing_key_file(server: LocalServer) -> Path:
    return Path(server.env.get("NEXO_SIGNING_KEY_FILE") or server.data_dir / "sth_signing.key")
