"""How /tlog/ tiles are served (issue 17's full-tile bar): the rate limit is spent only on
what costs a database read, conditional requests get 304, and entry bundles are gzipped
for clients that accept it (C2SP tlog-tiles: "Entry bundles SHOULD be compressed")."""

from __future__ import annotations

import gzip
import struct

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.support.log_writer import Tree, grow

pytestmark = pytest.mark.server

IMMUTABLE = "public, max-age=31536000, immutable"
PLAIN = {"Accept-Encoding": "identity"}


def test_distinct_uncached_tiles_spend_the_rate_limit_and_cached_ones_do_not(
    make_server: ServerFactory,
) -> None:
    server = make_server({"NEXO_RATE_LIMIT": "5/minute"})
    grow(server, Tree(), 8 * 256 + 3)  # full tiles 0/000 .. 0/007, bundles 000 .. 007
    with httpx.Client(base_url=f"{server.base_url}/tlog", timeout=30) as client:
        # A flood of distinct uncached tiles: each is a database read, so each spends a unit.
        flood = [client.get(f"/tile/0/00{n}") for n in range(8)]
        assert [r.status_code for r in flood] == [200] * 5 + [429] * 3
        assert flood[0].headers["X-RateLimit-Remaining"] == "4"
        assert flood[5].json()["error"]["code"] == "rate_limited"
        assert "Retry-After" in flood[5].headers
        # The budget is spent, but the full tiles already read are answered from memory.
        for n in range(5):
            again = client.get(f"/tile/0/00{n}")
            assert again.status_code == 200
            assert again.content == flood[n].content
            assert "X-RateLimit-Remaining" not in again.headers
        # Everything else still needs a unit: an unread full tile, a bundle, a partial tile,
        # a tile beyond the tree and a malformed path.
        for path in ("/tile/0/007", "/tile/entries/000", "/tile/0/008.p/3", "/tile/0/009", "/tile/0/1"):
            assert client.get(path).status_code == 429, path


def test_tiles_carry_an_etag_and_revalidate_with_304(make_server: ServerFactory) -> None:
    server = make_server()
    grow(server, Tree(), 300)
    with httpx.Client(base_url=f"{server.base_url}/tlog", timeout=30, headers=PLAIN) as client:
        for path in ("/tile/0/000", "/tile/0/001.p/44", "/tile/entries/000", "/tile/entries/001.p/44"):
            first = client.get(path)
            etag = first.headers["ETag"]
            assert first.status_code == 200 and etag.startswith('"') and etag.endswith('"')
            assert client.get(path).headers["ETag"] == etag  # stable
            for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
                revalidated = client.get(path, headers={"If-None-Match": header})
                assert revalidated.status_code == 304, (path, header)
                assert revalidated.content == b""
                assert revalidated.headers["ETag"] == etag
                assert revalidated.headers["Cache-Control"] == IMMUTABLE
            assert client.get(path, headers={"If-None-Match": '"other"'}).content == first.content
        distinct = ("/tile/0/000", "/tile/1/000.p/1", "/tile/entries/000")
        assert len({client.get(p).headers["ETag"] for p in distinct}) == 3


def _raw(client: httpx.Client, path: str, accept_encoding: str) -> tuple[httpx.Headers, bytes]:
    """Headers and the body as sent (httpx would decode it)."""
    with client.stream("GET", path, headers={"Accept-Encoding": accept_encoding}) as response:
        assert response.status_code == 200
        return response.headers, b"".join(response.iter_raw())


def test_entry_bundles_are_gzipped_when_the_client_accepts_it(make_server: ServerFactory) -> None:
    server = make_server()
    tree = Tree()
    grow(server, tree, 300)
    bundle = b"".join(struct.pack(">H", len(leaf)) + leaf for leaf in tree.leaves[:256])
    partial = b"".join(struct.pack(">H", len(leaf)) + leaf for leaf in tree.leaves[256:300])
    with httpx.Client(base_url=f"{server.base_url}/tlog", timeout=30) as client:
        for path, body in (("/tile/entries/000", bundle), ("/tile/entries/001.p/44", partial)):
            for accepted in ("gzip", "gzip, deflate, br", "identity;q=0.5, *"):
                headers, sent = _raw(client, path, accepted)
                assert headers["Content-Encoding"] == "gzip", accepted
                assert headers["Vary"] == "Accept-Encoding"
                assert headers["Cache-Control"] == IMMUTABLE
                assert len(sent) * 5 < len(body)
                assert gzip.decompress(sent) == body
            gzipped_etag = headers["ETag"]
            for refused in ("identity", "gzip;q=0", "deflate", ""):
                headers, sent = _raw(client, path, refused)
                assert "Content-Encoding" not in headers, refused
                assert headers["Vary"] == "Accept-Encoding"
                assert sent == body
            # Each coding has its own ETag (a shared cache must not swap them).
            assert headers["ETag"] != gzipped_etag
            conditional = client.get(path, headers={"Accept-Encoding": "gzip", "If-None-Match": gzipped_etag})
            assert conditional.status_code == 304
            assert "Content-Encoding" not in conditional.headers
            plain_etag = {"Accept-Encoding": "gzip", "If-None-Match": headers["ETag"]}
            assert client.get(path, headers=plain_etag).content == body
        # Hash tiles are random bytes: never gzipped, no Vary.
        headers, sent = _raw(client, "/tile/0/000", "gzip")
        assert "Content-Encoding" not in headers and "Vary" not in headers
        assert sent == b"".join(tree.levels[0][:256])
