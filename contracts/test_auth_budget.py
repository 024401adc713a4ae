"""The auth budget applies to every spelling of the auth paths (docs/ratelimit.md, docs/security.md).

Register, login and refresh share a per-address budget of their own
(``NEXO_AUTH_RATE_LIMIT``, 30 a minute), stricter than the API's. A request
the server routes to one of them under another spelling — a trailing slash, a
doubled slash, a query string, a percent-encoded letter — must be charged to
that budget too, or a password guesser escapes it: its answer carries
``RateLimit-Policy: "auth";...``. Spellings the server does not route (404,
405) escape nothing and are only counted. Each request is a login for a user
that does not exist (or a refresh with a made-up token), so no account is
touched; about a dozen units of the address's auth budget are spent.
"""

from __future__ import annotations

import secrets

import httpx

from contracts.conftest import Figure, Target

LOGIN_SPELLINGS = [
    "/api/auth/login",
    "/api/auth/login/",
    "/api/auth/login//",
    "//api/auth/login",
    "/api//auth/login",
    "/api/auth//login",
    "/api/auth/login?x=1",
    "/api/auth/login/?x=1",
    "/api/auth/login%2F",
    "/api/auth/%6cogin",
    "/API/auth/login",
]
OTHER_SPELLINGS = ["/api/auth/register/", "/api/auth/refresh/"]


def test_every_spelling_of_an_auth_path_is_charged_to_the_auth_budget(target: Target, figure: Figure) -> None:
    nobody = f"ct_nobody_{secrets.token_hex(6)}"
    routed, not_routed, escaped = [], [], []
    with httpx.Client(timeout=30) as client:
        for path in LOGIN_SPELLINGS + OTHER_SPELLINGS:
            if "refresh" in path:
                body = {"refresh_token": secrets.token_urlsafe(32)}
            elif "register" in path:
                body = {"username": "", "password": ""}  # refused by validation: creates no one
            else:
                body = {"username": nobody, "password": secrets.token_urlsafe(12)}
            response = client.post(target.base_url + path, json=body)
            assert response.status_code < 500, f"POST {path} -> {response.status_code}: bad input must be 4xx"
            if response.status_code in (404, 405):
                not_routed.append(path)
                continue
            routed.append(path)
            policy = response.headers.get("ratelimit-policy", "")
            if not policy.startswith('"auth"'):
                escaped.append(f"{path} ({response.status_code}, RateLimit-Policy {policy or 'missing'})")
    figure(f"{len(routed)} spellings routed to an auth endpoint, {len(not_routed)} not routed")
    assert "/api/auth/login" in routed, "POST /api/auth/login itself was not answered by the login route"
    assert not escaped, f"charged to another budget than auth: {', '.join(escaped)}"
