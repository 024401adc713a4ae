"""The C2SP tlog-tiles read API under /tlog/ (issue 17), checked two ways: every tile against
an independent Merkle tree (tests/support/log_writer.py) at sizes 0, 1, 255, 256, 257, 65,536 and
70,000, and with ``aics-tlog`` (an off-the-shelf tlog-tiles client, tests/support/aics.py)."""

from __future__ import annotations

import base64
import struct
import subprocess
from pathlib import Path

import httpx
import pytest

from contracts.client import Account
from contracts.server import LocalServer
from nexo.transparency.tiles import TILE_WIDTH, TileId, checkpoint_tiles
from tests.conftest import ServerFactory
from tests.support import aics
from tests.support.devices import new_key
from tests.support.log_writer import Tree, grow, log_vkey

pytestmark = pytest.mark.server

SIZES = [0, 1, 255, 256, 257, 65_536, 70_000]
IMMUTABLE = "public, max-age=31536000, immutable"


def _expected(tree: Tree, tile: TileId) -> bytes:
    if tile.level is None:
        leaves = tree.leaves[tile.first : tile.first + tile.width]
        return b"".join(struct.pack(">H", len(leaf)) + leaf for leaf in leaves)
    level = tree.levels[8 * tile.level]
    return b"".join(level[tile.first : tile.first + tile.width])


def _bundles(size: int) -> list[TileId]:
    full = [TileId(None, n, TILE_WIDTH) for n in range(size // TILE_WIDTH)]
    return full + ([TileId(None, size // TILE_WIDTH, size % TILE_WIDTH)] if size % TILE_WIDTH else [])


def _checkpoint_size(client: httpx.Client) -> int:
    response = client.get("/tlog/checkpoint")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["cache-control"] == "public, max-age=1"
    return int(response.text.split("\n")[1])


def test_tiles_equal_the_merkle_nodes_at_every_size_and_never_change(make_server: ServerFactory) -> None:
    server = make_server()
    tree = Tree()
    seen_full: dict[str, bytes] = {}
    with httpx.Client(base_url=f"{server.base_url}", timeout=30) as client:
        for size in SIZES:
            if size:
                grow(server, tree, size)
            assert _checkpoint_size(client) == size
            wanted = checkpoint_tiles(size) + _bundles(size)
            for tile in wanted:
                response = client.get(f"/tlog/{tile.path()}")
                assert response.status_code == 200, (tile.path(), response.text)
                assert response.headers["content-type"] == "application/octet-stream"
                assert response.headers["cache-control"] == IMMUTABLE
                assert response.content == _expected(tree, tile), tile.path()
                if tile.full:
                    assert seen_full.setdefault(tile.path(), response.content) == response.content
            # Nothing beyond the published tree: the next width and the full tile are 404.
            for level in range(3):
                count = size >> (8 * level)
                beyond = TileId(level, count // TILE_WIDTH, count % TILE_WIDTH + 1)
                response = client.get(f"/tlog/{beyond.path()}")
                assert response.status_code == 404, beyond.path()
                assert response.json()["error"]["code"] == "tile_not_found"
        # The tile shapes the spec gives for 70,000 leaves.
        assert [(t.level, t.index, t.width) for t in checkpoint_tiles(70_000) if not t.full] == [
            (0, 273, 112),
            (1, 1, 17),
            (2, 0, 1),
        ]
        # Every full tile served on the way is unchanged in the grown log.
        for path, body in seen_full.items():
            assert client.get(f"/tlog/{path}").content == body, path
        # The server's own sequencer carries on from the tiles' tree.
        account = Account.create(server.base_url)
        response = client.post(
            "/api/devices",
            json={"name": "after", "public_key": new_key(), "key_type": "ed25519"},
            headers=account.headers,
        )
        assert response.status_code == 201, response.text
        assert response.json()["log"]["leaf_index"] == 70_000


@pytest.mark.parametrize(
    "path",
    [
        "tile/0/1",  # not zero-padded
        "tile/0/x000/001",  # a leading zero group
        "tile/00/000",  # a level with a leading zero
        "tile/64/000",  # beyond level 63
        "tile/0/000.p/0",
        "tile/0/000.p/256",
        "tile/0/000.p/07",
        "tile/0/001/002",  # the upper group lacks its x
        "tile/entries/abc",
        "tile/x",
    ],
)
def test_malformed_tile_paths_are_404_with_a_json_error(server: LocalServer, path: str) -> None:
    response = httpx.get(f"{server.base_url}/tlog/{path}", timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "tile_not_found"


def test_an_off_the_shelf_tlog_client_verifies_checkpoint_inclusion_and_consistency(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    tlog = aics.tool("aics-tlog")
    server = make_server()
    key = httpx.get(f"{server.base_url}/api/log/key", timeout=10).json()
    vkey = log_vkey(key["origin"], base64.b64decode(key["public_key"]))
    tiles = f"{server.base_url}/tlog"
    common = ["--log-key", vkey, "--origin", key["origin"], "--tiles", tiles]
    tree = Tree()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([tlog, *args], capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, f"aics-tlog {' '.join(args[:1])}: {done.stdout}\n{done.stderr}"
        return done

    grow(server, tree, 257)
    old = tmp_path / "old-checkpoint"
    run("verify-checkpoint", *common, "--save-checkpoint", str(old))
    assert old.read_text().split("\n")[1] == "257"
    grow(server, tree, 70_000)
    run("verify-checkpoint", *common)
    run("verify-consistency", *common, "--old-checkpoint", str(old))
    for index in (0, 256, 65_535, 69_999):
        leaf = tmp_path / f"leaf{index}"
        leaf.write_bytes(tree.leaves[index])
        run("verify-inclusion", *common, "--index", str(index), "--leaf", str(leaf))
    # A wrong leaf is refused: the client really checks against the tiles.
    wrong = tmp_path / "wrong"
    wrong.write_bytes(tree.leaves[1])
    done = subprocess.run(
        [tlog, "verify-inclusion", *common, "--index", "2", "--leaf", str(wrong)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
