"""Static files of the web client and console: read once, served with ETags and a strict CSP.

Every file under ``nexo/web/static`` is loaded into memory at start (a few dozen
kilobytes). Responses carry ``Cache-Control: no-cache`` with a strong ETag (the
file's SHA-256), so a browser revalidates with one 304 and never runs an old
script after an upgrade. Pages get a Content-Security-Policy that allows only
this origin's own scripts and styles, no inline script, and ``connect-src
'self'`` (CSP Level 3: 'self' also matches this host's ``ws:``/``wss:``).
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from sanic import Request
from sanic.response import HTTPResponse, raw

from nexo.platform.errors import NotFound

STATIC_DIR = Path(__file__).parent / "static"

PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load(directory: Path = STATIC_DIR) -> dict[str, Asset]:
    """Every file under ``directory`` by its relative path (``vendor/hpke.js``)."""
    assets = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            body = path.read_bytes()
            content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if content_type.startswith("text/") or content_type.endswith("javascript"):
                content_type += "; charset=utf-8"
            assets[path.relative_to(directory).as_posix()] = Asset(
                body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            )
    return assets


def respond(request: Request, assets: dict[str, Asset], name: str) -> HTTPResponse:
    """The asset, or 304 when the browser's copy is current, or 404."""
    asset = assets.get(name)
    if asset is None:
        raise NotFound(f"no such file: {name}")
    headers = {"Cache-Control": "no-cache", "ETag": asset.etag, "Content-Security-Policy": PAGE_CSP}
    if request.headers.get("if-none-match") == asset.etag:
        return HTTPResponse(status=304, headers=headers)
    return raw(asset.body, content_type=asset.content_type, headers=headers)
