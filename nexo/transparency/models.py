"""Tortoise models of the transparency log.

``log_nodes`` holds every complete subtree hash of the Merkle tree, keyed by
:func:`node_key` ``(level << 48) | index`` (level 0 are the leaf hashes), so
any proof or root needs only O(log n) primary-key reads (see ``merkle.py``).
Rows are written once and never changed.
"""

from tortoise import fields
from tortoise.models import Model

#: Bits of ``node_key`` reserved for the index within a level (2**48 leaves).
NODE_INDEX_BITS = 48


def node_key(level: int, index: int) -> int:
    return (level << NODE_INDEX_BITS) | index


def node_of_key(key: int) -> tuple[int, int]:
    return key >> NODE_INDEX_BITS, key & ((1 << NODE_INDEX_BITS) - 1)


class SignedTreeHeadRow(Model):
    """One signed tree head as stored (``sth.SignedTreeHead`` is the value the code passes around;
    ``repository.py`` reads and writes these rows in raw SQL)."""

    index = fields.BigIntField(primary_key=True, generated=False)
    tree_size = fields.BigIntField()
    root_hash = fields.BinaryField()
    timestamp_ms = fields.BigIntField()
    prev_sth_hash = fields.BinaryField()
    origin = fields.CharField(max_length=255)
    signature = fields.BinaryField()
    sth_hash = fields.BinaryField()

    class Meta:
        table = "sths"


class LogLeaf(Model):
    """One leaf's bytes (canonical JSON of a device event)."""

    leaf_index = fields.BigIntField(primary_key=True, generated=False)
    leaf = fields.BinaryField()

    class Meta:
        table = "log_leaves"


class LogNode(Model):
    """A complete subtree hash: ``key = (level << 48) | index``."""

    key = fields.BigIntField(primary_key=True, generated=False)
    hash = fields.BinaryField()

    class Meta:
        table = "log_nodes"


class STHCosignature(Model):
    """A witness's verified cosignature (C2SP tlog-cosignature v1) of one STH's checkpoint."""

    id = fields.BigIntField(primary_key=True)
    sth_index = fields.BigIntField(db_index=True)
    witness = fields.CharField(max_length=255)
    key_id = fields.BinaryField()
    timestamp = fields.BigIntField()
    signature = fields.BinaryField()

    class Meta:
        table = "sth_cosignatures"
        unique_together = (("sth_index", "witness"),)


class WitnessState(Model):
    """What Nexo knows of one witness: the tree size it holds and how submissions went."""

    name = fields.CharField(max_length=255, primary_key=True)
    size = fields.BigIntField(default=0)
    cosigned_index = fields.BigIntField(default=-1)
    last_attempt_ms = fields.BigIntField(default=0)
    last_success_ms = fields.BigIntField(default=0)
    last_error = fields.TextField(null=True)
    last_error_ms = fields.BigIntField(default=0)
    failures = fields.BigIntField(default=0)

    class Meta:
        table = "witness_states"


class WitnessLease(Model):
    """Who submits to the witnesses now: one worker of one instance at a time."""

    name = fields.CharField(max_length=64, primary_key=True)
    holder = fields.CharField(max_length=128)
    until_ms = fields.BigIntField()

    class Meta:
        table = "witness_lease"
