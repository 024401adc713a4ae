"""Tortoise models of the transparency log."""

from tortoise import fields
from tortoise.models import Model


class SignedTreeHead(Model):
    index = fields.BigIntField(primary_key=True)
    tree_size = fields.BigIntField()
    root_hash = fields.BinaryField()
    timestamp_ms = fields.BigIntField()
    prev_sth_hash = fields.BinaryField()
    signature = fields.BinaryField()
    sth_hash = fields.BinaryField()

    class Meta:
        table = "sths"
