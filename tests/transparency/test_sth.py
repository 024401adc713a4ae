"""STH bytes, signing, hashing and the signed note, checked byte for byte against DESIGN.md."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from nexo.transparency import sth
from nexo.transparency.merkle import EMPTY_ROOT
from nexo.transparency.sth import SignedTreeHead, STHError, TreeHead

SEED = bytes(range(32))


def _key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(SEED)


def test_signed_bytes_are_exactly_the_design_layout() -> None:
    root = hashlib.sha256(b"root").digest()
    prev = hashlib.sha256(b"prev").digest()
    head = TreeHead("nexo.local/log", 7, 42, root, 1700000000123, prev)
    expected = (
        "nexo.local/log\n42\n"
        + base64.b64encode(root).decode()
        + "\n7\n1700000000123\n"
        + base64.b64encode(prev).decode()
        + "\n"
    ).encode()
    assert head.signed_bytes() == expected


def test_sign_verify_and_sth_hash() -> None:
    key = _key()
    head = sth.genesis_head("nexo.local/log", 1000)
    assert head.root_hash == EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert head.prev_sth_hash == bytes(32)
    signed = sth.sign(head, key)
    assert len(signed.signature) == 64
    public = sth.public_key_bytes(key)
    Ed25519PublicKey.from_public_bytes(public).verify(signed.signature, head.signed_bytes())
    sth.verify(signed, public)
    assert signed.sth_hash == hashlib.sha256(head.signed_bytes() + signed.signature).digest()

    wire = signed.to_json()
    assert list(wire) == [
        "index",
        "tree_size",
        "root_hash",
        "timestamp_ms",
        "prev_sth_hash",
        "origin",
        "signature",
        "sth_hash",
    ]
    assert SignedTreeHead.from_json(wire) == signed

    other = sth.public_key_bytes(Ed25519PrivateKey.generate())
    with pytest.raises(STHError):
        sth.verify(signed, other)
    tampered = SignedTreeHead(TreeHead("nexo.local/log", 0, 1, EMPTY_ROOT, 1000, bytes(32)), signed.signature)
    with pytest.raises(STHError):
        sth.verify(tampered, public)


def test_next_head_links_and_never_goes_back() -> None:
    key = _key()
    first = sth.sign(sth.genesis_head("o", 5000), key)
    head = sth.next_head(first, 3, b"r" * 32, 4000)
    assert head.index == 1 and head.prev_sth_hash == first.sth_hash and head.timestamp_ms == 5000
    with pytest.raises(STHError):
        sth.next_head(sth.sign(head, key), 2, b"r" * 32, 6000)


def test_from_json_rejects_bad_objects() -> None:
    wire = sth.sign(sth.genesis_head("o", 1), _key()).to_json()
    for broken in (
        {**wire, "sth_hash": base64.b64encode(bytes(32)).decode()},
        {**wire, "index": -1},
        {**wire, "index": True},
        {**wire, "root_hash": "not base64!"},
        {k: v for k, v in wire.items() if k != "origin"},
        [],
    ):
        with pytest.raises(STHError):
            SignedTreeHead.from_json(broken)


def test_key_id_and_signed_note() -> None:
    key = _key()
    public = sth.public_key_bytes(key)
    origin = "example.com/log"
    assert sth.key_id(origin, public) == hashlib.sha256(origin.encode() + b"\n\x01" + public).digest()[:4]
    signed = sth.sign(sth.genesis_head(origin, 99), key)
    note = sth.signed_note(signed, public)
    text, signature_line = note.split("\n\n")
    assert (text + "\n").encode() == signed.head.signed_bytes()
    assert signature_line.startswith("\u2014 example.com/log ")
    blob = base64.b64decode(signature_line.split(" ")[2])
    assert blob == sth.key_id(origin, public) + signed.signature
    assert sth.parse_signed_note(note, origin, public) == signed
    with pytest.raises(STHError):
        sth.parse_signed_note(note.replace("\n99\n", "\n98\n"), origin, public)


def test_origin_must_be_one_line() -> None:
    with pytest.raises(STHError):
        TreeHead("a\nb", 0, 0, EMPTY_ROOT, 0, bytes(32)).signed_bytes()
