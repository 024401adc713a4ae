"""HTTPS served directly (``nexo serve --cert --key``), security headers and CORS (issue 8).

The certificate is self-signed, made here with ``cryptography`` for 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import secrets
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from contracts.server import LocalServer
from tests.conftest import ServerFactory, server_factory

pytestmark = pytest.mark.server


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nexo test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalServer, ssl.SSLContext]]:
    base = tmp_path_factory.mktemp("tls")
    cert, key = make_certificate(base / "pki")
    context = ssl.create_default_context(cafile=str(cert))
    with server_factory(base) as make:
        server = make(
            {"NEXO_CORS_ORIGINS": "https://app.example"},
            extra_args=("--cert", str(cert), "--key", str(key)),
            scheme="https",
        )
        yield server, context


def test_https_is_served_with_the_given_certificate(tls_server: tuple[LocalServer, ssl.SSLContext]) -> None:
    server, context = tls_server
    assert server.base_url.startswith("https://")
    response = httpx.get(f"{server.base_url}/api/health", verify=context)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.headers["strict-transport-security"].startswith("max-age=")
    # Plain HTTP on the TLS port is not served.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{server.port}/api/health", timeout=3)


def test_security_headers_on_success_and_error(tls_server: tuple[LocalServer, ssl.SSLContext]) -> None:
    server, context = tls_server
    for path in ("/api/health", "/api/nowhere"):
        headers = httpx.get(f"{server.base_url}{path}", verify=context).headers
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert "default-src 'none'" in headers["content-security-policy"]
        assert "strict-transport-security" in headers


def test_cors_only_for_configured_origins(tls_server: tuple[LocalServer, ssl.SSLContext]) -> None:
    server, context = tls_server
    url = f"{server.base_url}/api/health"
    allowed = httpx.get(url, headers={"Origin": "https://app.example"}, verify=context)
    assert allowed.headers.get("access-control-allow-origin") == "https://app.example"
    denied = httpx.get(url, headers={"Origin": "https://evil.example"}, verify=context)
    assert "access-control-allow-origin" not in denied.headers
    preflight = httpx.options(
        url,
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        verify=context,
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_no_cors_and_no_hsts_without_configuration(make_server: ServerFactory) -> None:
    server = make_server()
    response = httpx.get(f"{server.base_url}/api/health", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in response.headers
    assert "strict-transport-security" not in response.headers


def test_wss_carries_the_websocket_protocol(tls_server: tuple[LocalServer, ssl.SSLContext]) -> None:
    server, context = tls_server
    assert server.ws_url.startswith("wss://")
    names = [f"tls_{secrets.token_hex(6)}" for _ in range(2)]
    tokens = {}
    with httpx.Client(base_url=server.base_url, verify=context) as client:
        for name in names:
            assert (
                client.post("/api/auth/register", json={"username": name, "password": "p" * 12}).status_code
                == 201
            )
            login = client.post("/api/auth/login", json={"username": name, "password": "p" * 12})
            tokens[name] = login.json()["access_token"]

    async def exchange() -> tuple[dict[str, object], int | None]:
        headers = {"Authorization": f"Bearer {tokens[names[0]]}"}
        async with connect(server.ws_url, ssl=context, additional_headers=headers) as ws:
            message_id = str(uuid.uuid4())
            await ws.send(
                json.dumps({"type": "send", "message_id": message_id, "to": names[1], "body": "über TLS"})
            )
            ack = json.loads(await asyncio.wait_for(ws.recv(), 10))
        async with connect(
            server.ws_url, ssl=context, additional_headers={"Authorization": "Bearer x.y.z"}
        ) as bad:
            with contextlib.suppress(ConnectionClosed):
                await asyncio.wait_for(bad.recv(), 10)
            return ack, bad.close_code

    ack, bad_close = asyncio.run(exchange())
    assert ack["type"] == "ack" and ack["duplicate"] is False
    assert bad_close == 4401
