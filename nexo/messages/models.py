"""Tortoise models of the messages feature.

The table is ``messages`` with a unique ``message_id`` column, as the runbook's
duplicate query expects; ``id`` is the server ``seq``.
"""

from tortoise import fields
from tortoise.models import Model


class Message(Model):
    id = fields.BigIntField(primary_key=True)
    message_id = fields.CharField(max_length=36, unique=True)
    sender_id = fields.BigIntField(db_index=True)
    recipient_id = fields.BigIntField(db_index=True)
    body = fields.TextField()
    server_ts = fields.BigIntField()
    delivered_at = fields.BigIntField(null=True)

    class Meta:
        table = "messages"
