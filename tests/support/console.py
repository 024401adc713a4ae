"""The operator console's token for test servers, and a registration that makes the log sign."""

from __future__ import annotations

import base64
import secrets

import httpx

from contracts.client import Account

TOKEN = secrets.token_urlsafe(36)


def add_device(base_url: str) -> str:
    """A new user registers one device (the log signs a new tree head); their username."""
    account = Account.create(base_url, "console")
    response = httpx.post(
        f"{base_url}/api/devices",
        headers={"Authorization": f"Bearer {account.access_token}"},
        json={"name": "laptop", "public_key": base64.b64encode(secrets.token_bytes(32)).decode(),
              "key_type": "ed25519"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return account.username
