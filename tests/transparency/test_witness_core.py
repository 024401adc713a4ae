"""Witness configuration, cosignatures and tile paths: pure parts of issue 17."""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from nexo.platform.config import ConfigError, Settings
from nexo.transparency import cosignature, tiles
from nexo.transparency.tiles import TileId, TilePathError

GOOD = "s" * 40


def _vkey(name: str, private: Ed25519PrivateKey, key_type: int = 4) -> str:
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    key_id = hashlib.sha256(name.encode() + b"\n" + bytes([key_type]) + public).digest()[:4]
    return f"{name}+{key_id.hex()}+{base64.b64encode(bytes([key_type]) + public).decode()}"


def test_witnesses_and_quorum_parse() -> None:
    a, b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    env = {
        "JWT_SECRET": GOOD,
        "NEXO_WITNESSES": f"https://w1.example/ {_vkey('w1.example/w', a)} ,"
        f"http://127.0.0.1:7380 {_vkey('w2', b)}",
        "NEXO_WITNESS_QUORUM": "2",
        "NEXO_WITNESS_INTERVAL": "2.5",
    }
    settings = Settings.from_env(env)
    assert [w.url for w in settings.witnesses] == ["https://w1.example", "http://127.0.0.1:7380"]
    assert [w.name for w in settings.witnesses] == ["w1.example/w", "w2"]
    assert settings.witnesses[0].key.vkey == _vkey("w1.example/w", a)
    assert settings.witness_quorum == 2 and settings.witness_interval == 2.5
    assert Settings.from_env({"JWT_SECRET": GOOD}).witnesses == ()


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"NEXO_WITNESSES": "https://w.example"}, "is not '<url> <vkey>'"),
        ({"NEXO_WITNESSES": "ftp://w.example VKEY"}, "is not an http"),
        ({"NEXO_WITNESSES": "https://w.example w+00000000+AAAA"}, "not a type 0x04"),
        ({"NEXO_WITNESSES": "https://w.example w+zz+AAAA"}, "8 lowercase hex"),
        ({"NEXO_WITNESSES": "https://w.example novkey"}, "is not a vkey"),
        ({"NEXO_WITNESS_QUORUM": "1"}, "lists no witness"),
        ({"NEXO_WITNESS_QUORUM": "2", "W": "1"}, "at most 1"),
        ({"NEXO_WITNESS_QUORUM": "0", "W": "1"}, "at least 1"),
        ({"NEXO_WITNESS_INTERVAL": "0", "W": "1"}, "NEXO_WITNESS_INTERVAL"),
        ({"NEXO_STH_INTERVAL": "x"}, "NEXO_STH_INTERVAL"),
        ({"NEXO_STH_MAX_AGE": "0.5"}, "NEXO_STH_MAX_AGE"),
    ],
)
def test_bad_witness_settings_are_refused_in_one_line(env: dict[str, str], match: str) -> None:
    env = {"JWT_SECRET": GOOD, **env}
    if env.pop("W", None):
        env["NEXO_WITNESSES"] = f"https://w.example {_vkey('w', Ed25519PrivateKey.generate())}"
    with pytest.raises(ConfigError, match=match) as caught:
        Settings.from_env(env).check_deployment()
    assert "\n" not in str(caught.value)


def test_a_vkey_whose_key_id_lies_or_whose_type_is_not_04_is_refused() -> None:
    private = Ed25519PrivateKey.generate()
    good = _vkey("w", private)
    name, _, material = good.split("+", 2)
    with pytest.raises(cosignature.CosignatureError, match="key ID"):
        cosignature.parse_vkey(f"{name}+00000000+{material}")
    with pytest.raises(cosignature.CosignatureError, match="0x04"):
        cosignature.parse_vkey(_vkey("w", private, key_type=1))
    with pytest.raises(ConfigError, match="listed twice"):
        Settings.from_env({"JWT_SECRET": GOOD, "NEXO_WITNESSES": f"http://a {good}, http://b {good}"})


def test_cosignature_lines_verify_only_for_their_key_and_body() -> None:
    private = Ed25519PrivateKey.generate()
    key = cosignature.parse_vkey(_vkey("witness.example/w1", private))
    body = b"nexo.local/log\n3\nAAAA\n5\n1700000000000\nBBBB\n"
    timestamp = 1_700_000_123
    signature = private.sign(b"cosignature/v1\ntime 1700000123\n" + body)
    blob = key.key_id + struct.pack(">Q", timestamp) + signature
    line = f"\u2014 witness.example/w1 {base64.b64encode(blob).decode()}"
    other = "\u2014 someone.else/w AAAA"
    found = cosignature.verify_lines(f"{other}\n{line}\n", body, key)
    assert found == [cosignature.Cosignature("witness.example/w1", key.key_id, timestamp, signature)]
    assert found[0].line() == line
    with pytest.raises(cosignature.CosignatureError, match="does not verify"):
        cosignature.verify_lines(line, body.replace(b"\n3\n", b"\n4\n"), key)
    zero = key.key_id + bytes(8) + signature
    with pytest.raises(cosignature.CosignatureError, match="timestamp"):
        cosignature.verify_lines(f"\u2014 witness.example/w1 {base64.b64encode(zero).decode()}", body, key)


@pytest.mark.parametrize(
    ("index", "path"),
    [(0, "000"), (5, "005"), (999, "999"), (1000, "x001/000"), (1234067, "x001/x234/067"), (273, "273")],
)
def test_tile_index_encoding_round_trips(index: int, path: str) -> None:
    assert tiles.encode_index(index) == path
    assert tiles.parse_path(f"0/{path}") == TileId(0, index, 256)
    assert tiles.parse_path(f"entries/{path}.p/7") == TileId(None, index, 7)
    assert TileId(3, index, 17).path() == f"tile/3/{path}.p/17"


@pytest.mark.parametrize(
    "path", ["0/1", "0/x000/001", "00/000", "64/000", "0/000.p/0", "0/000.p/256", "0", "x/000"]
)
def test_non_canonical_tile_paths_are_refused(path: str) -> None:
    with pytest.raises(TilePathError):
        tiles.parse_path(path)


def test_the_tiles_of_a_checkpoint_follow_the_spec_examples() -> None:
    partial = [(t.level, t.index, t.width) for t in tiles.checkpoint_tiles(70_000) if not t.full]
    assert partial == [(0, 273, 112), (1, 1, 17), (2, 0, 1)]
    assert sum(t.full for t in tiles.checkpoint_tiles(70_000)) == 273 + 1
    assert [(t.level, t.width) for t in tiles.checkpoint_tiles(256)] == [(0, 256), (1, 1)]
    assert tiles.checkpoint_tiles(0) == []
    assert tiles.entry_bundle([b"ab", b""]) == b"\x00\x02ab\x00\x00"


def test_the_wire_examples_of_the_docs_are_byte_exact() -> None:
    """docs/transparency.md's witness examples, recomputed from their fixed seeds."""
    from pathlib import Path

    from nexo.transparency import merkle
    from nexo.transparency import sth as sth_mod
    from nexo.transparency.witness import request_body
    from tests.support.log_writer import Tree, leaf_bytes, log_vkey

    docs = (Path(__file__).resolve().parents[2] / "docs" / "transparency.md").read_text()
    log_key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    witness_key = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
    origin, name = "nexo.example.com/log", "witness.example.org/w1"
    public = sth_mod.public_key_bytes(log_key)
    witness = cosignature.parse_vkey(_vkey(name, witness_key))
    tree = Tree()
    for i in range(3):
        tree.append(leaf_bytes(i))
    genesis = sth_mod.sign(sth_mod.genesis_head(origin, 1796000000000), log_key)
    first = sth_mod.sign(sth_mod.next_head(genesis, 1, tree.root(1), 1796000000100), log_key)
    head = sth_mod.sign(sth_mod.next_head(first, 3, tree.root(3), 1796000000200), log_key)
    nodes = {(level, i): h for level, row in enumerate(tree.levels) for i, h in enumerate(row)}
    proof = merkle.build_path(merkle.consistency_ranges(1, 3), nodes)
    note = sth_mod.signed_note(head, public)
    body = request_body(1, [base64.b64encode(p).decode() for p in proof], note).decode()
    message = cosignature.signed_message(head.head.signed_bytes(), 1796000001)
    line = cosignature.Cosignature(name, witness.key_id, 1796000001, witness_key.sign(message)).line()
    for block in (body, message.decode(), line + "\n", note + line + "\n"):
        assert f"\n{block}```" in docs, block
    assert log_vkey(origin, public) in docs and witness.vkey in docs
