"""Tortoise models of the devices feature."""

from tortoise import fields
from tortoise.models import Model


class Device(Model):
    id = fields.UUIDField(primary_key=True)
    user_id = fields.BigIntField(db_index=True)
    name = fields.CharField(max_length=64)
    key_type = fields.CharField(max_length=16)
    public_key = fields.CharField(max_length=64)
    created_at = fields.DatetimeField(auto_now_add=True)
    revoked_at = fields.DatetimeField(null=True)

    class Meta:
        table = "devices"
