"""The browser's envelope code against the SDK's test vectors (tests/client/vectors, docs/client.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.sync_api import Page

from contracts.server import LocalServer

pytestmark = pytest.mark.server

VECTORS = Path(__file__).resolve().parents[1] / "client" / "vectors" / "envelope-v1.json"

CHECK = (Path(__file__).parent / "envelope_vectors.js").read_text()


def test_the_browser_reads_and_writes_the_sdk_envelope_byte_for_byte(page: Page, server: LocalServer) -> None:
    vectors = json.loads(VECTORS.read_text())
    page.goto(server.base_url + "/")
    result = page.evaluate(CHECK, vectors)
    assert result["canonical"] == vectors["signed_bytes"]
    assert result["body"] == vectors["body"]
    assert result["sig"] == json.loads(vectors["body"])["sig"]  # Ed25519 is deterministic
    assert result["opened"] == [vectors["plaintext"]] * len(vectors["recipients"])
    assert "signature does not verify" in result["tampered"]
