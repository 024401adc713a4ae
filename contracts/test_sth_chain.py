"""Runbook "STH chain index incrementing" and "Check STH chain for anomalies".

Before checking proofs the suite grows the log by :data:`GROW` leaves (device
registrations of one throwaway user), so even on the empty log a fresh server
starts with, the proofs it checks are real: inclusion proofs at several
positions (each new leaf, the first leaf, one in the middle, the last) and
consistency proofs between trees of different sizes (neighbouring STHs, an
early tree and a middle one against the latest), on a fresh log and on a long
one alike. Every new STH's index steps by one from its predecessor, links to
its ``sth_hash`` and verifies with the key published at ``/api/log/key``;
``sth_count`` in health grows. All checking is done by ``contracts.verify``
(docs/transparency.md + RFC 9162), never by the server's own code.
"""

from __future__ import annotations

import base64
import itertools
import json
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from contracts import verify
from contracts.conftest import Accounts, Figure, Target
from contracts.wire import get_json, poll

#: Leaves (device registrations) the suite adds to the log before it checks proofs.
GROW = 6


@pytest.fixture(scope="module")
def client(target: Target) -> Any:
    with httpx.Client(timeout=10) as http:
        yield http


@pytest.fixture(scope="module")
def log_key(target: Target, client: httpx.Client) -> dict[str, Any]:
    key = get_json(client, target.url("/api/log/key"))
    assert key.get("algorithm") == "Ed25519", f"log key algorithm {key.get('algorithm')!r}"
    raw = verify.b64(key["public_key"])
    assert len(raw) == 32, "Ed25519 public keys are 32 bytes"
    assert verify.b64(key["key_id"]) == verify.key_id(key["origin"], raw), (
        "key_id is not SHA-256(origin || 0x0A || 0x01 || public_key)[:4]"
    )
    return key


def _new_public_key() -> str:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


@pytest.fixture(scope="module")
def registration(
    target: Target, accounts: Accounts, client: httpx.Client, log_key: dict[str, Any]
) -> dict[str, Any]:
    """Register :data:`GROW` devices one after another; remember the chain and health around them."""
    before_health = get_json(client, target.url("/api/health"))
    before = get_json(client, target.url("/api/sth/latest"))
    account = accounts.create()
    registered: list[dict[str, Any]] = []
    for n in range(GROW):
        body = {"name": f"contract-device-{n}", "public_key": _new_public_key(), "key_type": "ed25519"}
        response = client.post(target.url("/api/devices"), json=body, headers=account.headers)
        assert response.status_code == 201, (
            f"POST /api/devices -> {response.status_code} {response.text[:300]}"
        )
        registered.append({"public_key": body["public_key"], "answer": response.json()})

    def grown() -> dict[str, Any] | None:
        health = get_json(client, target.url("/api/health"))
        if "sth_count" not in health or "sth_count" not in before_health:
            return health
        return health if health["sth_count"] > before_health["sth_count"] else None

    after_health = poll(grown, target.sth_timeout, 0.1)
    return {
        "account": account,
        "registered": registered,
        # The first registration, for the checks written against one.
        "public_key": registered[0]["public_key"],
        "answer": registered[0]["answer"],
        "before": before,
        "before_health": before_health,
        "after_health": after_health,
    }


def _chain(target: Target, client: httpx.Client, start: int, end: int) -> list[dict[str, Any]]:
    sths: list[dict[str, Any]] = []
    while start <= end:
        page = get_json(
            client, target.url("/api/sth"), params={"start": start, "limit": min(1000, end - start + 1)}
        )
        got = page["sths"]
        assert got, f"GET /api/sth?start={start} returned nothing, the latest index is {end}"
        sths.extend(got)
        start = int(got[-1]["index"]) + 1
    return sths


def test_sth_count_grows_after_a_device_registration(
    target: Target, registration: dict[str, Any], figure: Figure
) -> None:
    before = registration["before_health"]
    after = registration["after_health"]
    if "sth_count" not in before or (after and "sth_count" not in after):
        pytest.skip("health has no sth_count (the Health promise reports that)")
    figure(
        f"grew the log by {GROW} leaves; sth_count {before['sth_count']} -> "
        f"{after['sth_count'] if after else 'unchanged'} within {target.sth_timeout} s",
    )
    assert after, (
        f"health sth_count stayed {before['sth_count']} for {target.sth_timeout} s "
        f"after {GROW} device registrations"
    )


def test_new_sths_step_by_one_link_and_verify(
    target: Target,
    client: httpx.Client,
    registration: dict[str, Any],
    log_key: dict[str, Any],
    figure: Figure,
) -> None:
    before = registration["before"]
    answered = registration["answer"]["sth"]
    latest = get_json(client, target.url("/api/sth/latest"))
    assert int(latest["index"]) >= int(answered["index"]) > int(before["index"]), (
        f"STH index did not advance: before {before['index']}, "
        f"answered {answered['index']}, latest {latest['index']}"
    )
    chain = _chain(target, client, int(before["index"]), int(latest["index"]))
    public_key = verify.b64(log_key["public_key"])
    assert chain[0] == before, f"GET /api/sth?start={before['index']} disagrees with the STH served before"
    if int(chain[0]["index"]) == 0:
        verify.verify_genesis(chain[0])
    verify.verify_sth(chain[0], public_key)
    for prev, cur in itertools.pairwise(chain):
        assert cur["origin"] == log_key["origin"], f"STH {cur['index']} has origin {cur['origin']!r}"
        verify.verify_link(prev, cur)
        verify.verify_sth(cur, public_key)
        first, second = int(prev["tree_size"]), int(cur["tree_size"])
        if first > 0:
            proof = get_json(
                client, target.url("/api/log/proof/consistency"), params={"first": first, "second": second}
            )
            verify.verify_consistency(
                first,
                second,
                verify.b64(prev["root_hash"]),
                verify.b64(cur["root_hash"]),
                [verify.b64(h) for h in proof["consistency_path"]],
            )
    by_index = {int(s["index"]): s for s in chain}
    assert by_index.get(int(answered["index"])) == answered, (
        "the STH in the registration answer is not in the chain"
    )
    figure(
        f"STH {before['index']} -> {latest['index']}: {len(chain) - 1} new; "
        "signatures, links and proofs verify",
    )


def _entry(target: Target, client: httpx.Client, index: int) -> bytes:
    """The raw leaf at ``index``, after checking that the entry's ``leaf_hash`` is its RFC 9162 hash."""
    entries = get_json(client, target.url("/api/log/entries"), params={"start": index, "end": index})[
        "entries"
    ]
    assert len(entries) == 1 and int(entries[0]["leaf_index"]) == index, f"log entry {index}: {entries}"
    leaf = verify.b64(entries[0]["leaf"])
    assert verify.b64(entries[0]["leaf_hash"]) == verify.leaf_hash(leaf), (
        f"the leaf_hash of entry {index} is not SHA-256(0x00 || leaf)"
    )
    return leaf


def _audit_path(proof: Any, index: int, tree_size: int) -> list[bytes]:
    # docs/transparency.md leaves the shape open: the audit path itself, or the proof endpoint's object.
    if isinstance(proof, dict):
        assert int(proof.get("leaf_index", index)) == index, "inclusion proof for another leaf"
        assert int(proof.get("tree_size", tree_size)) == tree_size, "proof and STH sizes differ"
        proof = proof["audit_path"]
    return [verify.b64(h) for h in proof]


def _inclusion_from_endpoint(
    target: Target, client: httpx.Client, index: int, leaf_hash: bytes, sth: dict[str, Any]
) -> int:
    """Verify ``/api/log/proof/inclusion`` for ``index`` against ``sth``; return the path length."""
    size = int(sth["tree_size"])
    proof = get_json(
        client, target.url("/api/log/proof/inclusion"), params={"leaf_index": index, "tree_size": size}
    )
    path = _audit_path(proof, index, size)
    verify.verify_inclusion(index, size, leaf_hash, path, verify.b64(sth["root_hash"]))
    return len(path)


def test_each_new_leaf_is_included_and_describes_the_device(
    target: Target, client: httpx.Client, registration: dict[str, Any], log_key: dict[str, Any]
) -> None:
    public_key = verify.b64(log_key["public_key"])
    for device in registration["registered"]:
        answer = device["answer"]
        sth = answer["sth"]
        index = int(answer["log"]["leaf_index"])
        verify.verify_sth(sth, public_key)
        leaf = _entry(target, client, index)
        leaf_hash = verify.leaf_hash(leaf)
        assert verify.b64(answer["log"]["leaf_hash"]) == leaf_hash, "leaf_hash is not SHA-256(0x00 || leaf)"
        event = json.loads(leaf)
        canonical = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        assert leaf == canonical, "a leaf is JSON with sorted keys and no spaces"
        assert event["action"] == "register" and event["public_key"] == device["public_key"], event
        assert event["username"] == registration["account"].username, event
        size = int(sth["tree_size"])
        path = _audit_path(answer["inclusion_proof"], index, size)
        verify.verify_inclusion(index, size, leaf_hash, path, verify.b64(sth["root_hash"]))


def test_inclusion_proofs_verify_at_several_positions(
    target: Target, client: httpx.Client, registration: dict[str, Any], figure: Figure
) -> None:
    latest = get_json(client, target.url("/api/sth/latest"))
    size = int(latest["tree_size"])
    ours = [int(d["answer"]["log"]["leaf_index"]) for d in registration["registered"]]
    positions = sorted({0, size // 2, size - 1, *ours})
    lengths = []
    for index in positions:
        lengths.append(
            _inclusion_from_endpoint(
                target, client, index, verify.leaf_hash(_entry(target, client, index)), latest
            )
        )
    # And against an older tree: the one the first registration was answered with.
    older = registration["answer"]["sth"]
    for index in [p for p in positions if p < int(older["tree_size"])]:
        _inclusion_from_endpoint(
            target, client, index, verify.leaf_hash(_entry(target, client, index)), older
        )
    figure(
        f"inclusion verified at leaves {positions} of tree {size} "
        f"(audit paths of {min(lengths)}-{max(lengths)} hashes)"
    )
    assert size > 1 and max(lengths) > 0, f"tree of size {size}: every inclusion proof was empty"


def test_consistency_proofs_verify_between_trees_of_different_sizes(
    target: Target, client: httpx.Client, registration: dict[str, Any], figure: Figure
) -> None:
    latest = get_json(client, target.url("/api/sth/latest"))
    last_index, size = int(latest["index"]), int(latest["tree_size"])
    older = [registration["before"], *(d["answer"]["sth"] for d in registration["registered"])]
    for index in {1, last_index // 2}:
        if 0 < index < last_index:
            older.append(get_json(client, target.url(f"/api/sth/{index}")))
    checked: list[str] = []
    for sth in sorted({int(s["tree_size"]): s for s in older}.values(), key=lambda s: int(s["tree_size"])):
        first = int(sth["tree_size"])
        if not 0 < first < size:
            continue
        proof = get_json(
            client, target.url("/api/log/proof/consistency"), params={"first": first, "second": size}
        )
        path = [verify.b64(h) for h in proof["consistency_path"]]
        verify.verify_consistency(
            first, size, verify.b64(sth["root_hash"]), verify.b64(latest["root_hash"]), path
        )
        checked.append(f"{first}->{size} ({len(path)} hashes)")
    figure("consistency verified " + ", ".join(checked))
    assert any(not c.startswith("1->") for c in checked), (
        f"no tree of size 2 or more older than the latest ({size}) to prove consistency from"
    )


def test_checkpoint_is_a_signed_note_of_an_sth(
    target: Target, client: httpx.Client, registration: dict[str, Any], log_key: dict[str, Any]
) -> None:
    """docs/transparency.md: ``/api/log/checkpoint`` serves an STH's signed bytes as a C2SP signed note."""
    response = client.get(target.url("/api/log/checkpoint"))
    assert response.status_code == 200, f"GET /api/log/checkpoint -> {response.status_code}"
    assert response.headers.get("content-type", "").startswith("text/plain"), response.headers.get(
        "content-type"
    )
    body = verify.verify_checkpoint(response.text, log_key["origin"], verify.b64(log_key["public_key"]))
    index = int(body.decode().split("\n")[3])
    sth = get_json(client, target.url(f"/api/sth/{index}"))
    assert body == verify.sth_signed_bytes(sth), f"checkpoint body is not the signed bytes of STH {index}"
