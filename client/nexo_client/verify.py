"""Verified keys only: tree heads checked against the pinned log key and the stored head,
and every device key checked by an inclusion proof of its log leaf.

Nothing here writes to the store: callers commit :attr:`Lookup.head` (and what
they derived from it) only after every check of an operation passed, so a
failed verification leaves the state exactly as it was.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from . import merkle
from .errors import ProofInvalid, ServerError, SplitViewDetected, UnknownUser
from .log import TreeHead, Witness, b64d, parse_checkpoint, verify_cosignatures
from .session import Session
from .store import Store


@dataclass(frozen=True)
class VerifiedKey:
    """A device key whose ``register`` leaf is proven to be in ``tree_size``."""

    device_id: str
    username: str
    key_type: str
    public_key: bytes
    leaf_index: int
    name: str
    tree_size: int


@dataclass
class Lookup:
    """A verified tree head and what was checked against it."""

    head: TreeHead
    previous: TreeHead | None
    consistent_from: int | None
    cosigned_by: list[str] = field(default_factory=list)


class LogVerifier:
    def __init__(self, session: Session, store: Store, witnesses: Sequence[Witness] = (),
                 quorum: int | None = None) -> None:
        self.session = session
        self.store = store
        self.witnesses = list(witnesses)
        self.quorum = len(self.witnesses) if quorum is None else quorum

    async def log_key(self) -> bytes:
        """The log's Ed25519 key: pinned on first use (TOFU), never replaced afterwards."""
        pinned = self.store.get("log_key")
        if pinned is not None:
            return b64d(pinned["public_key"], "pinned log key")
        doc = await self.session.json("GET", "/api/log/key", auth=False)
        key = b64d(doc["public_key"], "log public key")
        if len(key) != 32:
            raise ProofInvalid("the log's public key is not 32 bytes")
        self.store.put("log_key", {"public_key": doc["public_key"], "origin": doc.get("origin")})
        return key

    def trusted(self) -> TreeHead | None:
        doc = self.store.get("sth")
        return None if doc is None else TreeHead.from_json(doc)

    async def latest(self) -> Lookup:
        """The server's latest tree head, verified: signature, witnesses, consistency."""
        key = await self.log_key()
        cosigned: list[str] = []
        if self.witnesses:
            note = (await self.session.call("GET", "/api/log/checkpoint", auth=False)).text
            checkpoint = parse_checkpoint(note, key)
            head = checkpoint.head
            head.verify(key)
            cosigned = verify_cosignatures(checkpoint, self.witnesses, self.quorum)
        else:
            head = TreeHead.from_json(await self.session.json("GET", "/api/sth/latest", auth=False))
            head.verify(key)
        return await self.extend(head, cosigned)

    async def cosigner_names(self) -> list[str]:
        """Names on the checkpoint's cosignature lines, unchecked (no witness keys configured)."""
        key = await self.log_key()
        note = (await self.session.call("GET", "/api/log/checkpoint", auth=False)).text
        checkpoint = parse_checkpoint(note, key)
        return sorted({name for name, _ in checkpoint.signature_lines if name != checkpoint.head.origin})

    async def extend(self, head: TreeHead, cosigned: list[str] | None = None) -> Lookup:
        """Check that an already signature-checked ``head`` extends the trusted one."""
        previous = self.trusted()
        lookup = Lookup(head, previous, None, cosigned or [])
        if previous is None:
            return lookup  # trust on first use
        if head.origin != previous.origin:
            raise SplitViewDetected(f"log origin changed from {previous.origin!r} to {head.origin!r}")
        if head.index == previous.index and head.sth_hash != previous.sth_hash:
            raise SplitViewDetected(f"two different tree heads with index {head.index}")
        # An older head is legitimate (the checkpoint served with witnesses is the newest
        # *cosigned* one, which may lag behind a head this client saw in a registration
        # answer), but it must be a prefix of the trusted one: the proof then runs backwards.
        older, newer = (head, previous) if head.index < previous.index else (previous, head)
        if older.tree_size > newer.tree_size:
            raise SplitViewDetected(
                f"tree head {newer.index} has a smaller tree ({newer.tree_size}) than tree head "
                f"{older.index} ({older.tree_size})"
            )
        path: list[bytes] = []
        if older.tree_size and older.tree_size != newer.tree_size:
            doc = await self.session.json(
                "GET", "/api/log/proof/consistency", auth=False,
                params={"first": older.tree_size, "second": newer.tree_size},
            )
            path = [b64d(item, "consistency_path") for item in doc.get("consistency_path", [])]
        try:
            merkle.verify_consistency(older.tree_size, newer.tree_size, older.root_hash,
                                      newer.root_hash, path)
        except ProofInvalid as exc:
            raise SplitViewDetected(
                f"tree head {head.index} (size {head.tree_size}) is not consistent with the verified "
                f"tree head {previous.index} (size {previous.tree_size}): {exc}"
            ) from None
        lookup.consistent_from = previous.tree_size
        return lookup

    def commit(self, head: TreeHead) -> None:
        """Remember ``head`` as the last verified tree head (only ever moves forward)."""
        previous = self.trusted()
        if previous is None or head.tree_size > previous.tree_size or head.index > previous.index:
            self.store.put("sth", head.to_json())

    # -- keys -------------------------------------------------------------------------------

    async def verify_registration(self, answer: dict[str, Any], public_key: bytes, key_type: str) -> Lookup:
        """A device registration answer: its STH, our leaf and its inclusion proof."""
        key = await self.log_key()
        head = TreeHead.from_json(answer["sth"])
        head.verify(key)
        lookup = await self.extend(head)
        leaf = b64d(answer["log"]["leaf"], "leaf")
        device = answer["device"]
        _check_leaf(leaf, device["id"], None, key_type, public_key)
        path = [b64d(p, "inclusion_proof") for p in answer.get("inclusion_proof") or []]
        merkle.verify_inclusion(int(answer["log"]["leaf_index"]), head.tree_size, merkle.leaf_hash(leaf),
                                path, head.root_hash)
        return lookup

    async def user_keys(self, username: str) -> tuple[Lookup, list[VerifiedKey]]:
        """Every active key of ``username``, each proven in the log against a fresh verified head."""
        try:
            devices = (await self.session.json("GET", f"/api/users/{username}/devices"))["devices"]
        except ServerError as exc:
            if exc.status == 404:
                raise UnknownUser(f"no user {username!r} on this server") from None
            raise
        lookup = await self.latest()  # after the list: every listed leaf is in this head...
        # ...unless the head is the newest cosigned one (witnesses), which may not cover a key
        # registered since: such a key is not provable yet and is left out until it is.
        provable = [d for d in devices if int(d["leaf_index"]) < lookup.head.tree_size]
        keys = await asyncio.gather(*(self._prove(username, d, lookup.head) for d in provable))
        return lookup, list(keys)

    async def _prove(self, username: str, device: dict[str, Any], head: TreeHead) -> VerifiedKey:
        index = int(device["leaf_index"])
        if index >= head.tree_size:
            raise ProofInvalid(f"device {device['id']}: leaf {index} is beyond the verified tree")
        entries, proof = await asyncio.gather(
            self.session.json("GET", "/api/log/entries", auth=False, params={"start": index, "end": index}),
            self.session.json("GET", "/api/log/proof/inclusion", auth=False,
                              params={"leaf_index": index, "tree_size": head.tree_size}),
        )
        if not entries.get("entries"):
            raise ProofInvalid(f"device {device['id']}: the log has no leaf {index}")
        leaf = b64d(entries["entries"][0]["leaf"], "leaf")
        public_key = b64d(device["public_key"], "public_key")
        _check_leaf(leaf, str(device["id"]), username, str(device["key_type"]), public_key)
        path = [b64d(p, "audit_path") for p in proof.get("audit_path") or []]
        try:
            merkle.verify_inclusion(index, head.tree_size, merkle.leaf_hash(leaf), path, head.root_hash)
        except ProofInvalid as exc:
            raise ProofInvalid(f"{username}'s device {device['id']}: {exc}") from None
        return VerifiedKey(str(device["id"]), username, str(device["key_type"]), public_key, index,
                           str(device.get("name", "")), head.tree_size)


def _check_leaf(leaf: bytes, device_id: str, username: str | None, key_type: str, public_key: bytes) -> None:
    """The log leaf must register exactly this key for this device and user."""
    try:
        event = json.loads(leaf)
        fields = (event["action"], event["device_id"], event["key_type"],
                  b64d(event["public_key"], "leaf public_key"), event["username"])
    except (ValueError, KeyError, TypeError):
        raise ProofInvalid(f"device {device_id}: its log leaf is not a Nexo key event") from None
    action, leaf_device, leaf_type, leaf_key, leaf_user = fields
    if action != "register" or leaf_device != device_id or leaf_type != key_type:
        raise ProofInvalid(f"device {device_id}: the log leaf records another event or device")
    if leaf_key != public_key:
        raise ProofInvalid(f"device {device_id}: the key served differs from the key in the log")
    if username is not None and leaf_user != username.lower():
        raise ProofInvalid(f"device {device_id}: the log leaf belongs to {leaf_user!r}, not {username!r}")
