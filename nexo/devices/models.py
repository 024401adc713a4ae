"""Tortoise models of the devices feature."""

from tortoise import fields
from tortoise.models import Model


class Device(Model):
    """A device key. ``leaf_index`` is its registration leaf; ``revoke_leaf_index`` its revocation."""

    id = fields.UUIDField(primary_key=True)
    user_id = fields.BigIntField(db_index=True)
    name = fields.CharField(max_length=64)
    key_type = fields.CharField(max_length=16)
    public_key = fields.CharField(max_length=64)
    created_at = fields.DatetimeField(db_index=True)
    revoked_at = fields.DatetimeField(null=True, db_index=True)
    leaf_index = fields.BigIntField(unique=True)
    revoke_leaf_index = fields.BigIntField(null=True, unique=True)

    class Meta:
        table = "devices"
