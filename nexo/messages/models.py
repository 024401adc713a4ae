"""Tortoise models of the messages feature.

The table is ``messages`` with a unique ``message_id`` column, as the runbook's
duplicate query expects (docs/troubleshooting.md "Duplicate messages"). The
primary key ``id`` is the server ``seq``: assigned at insert, increasing, and
the sync cursor. Times are unix milliseconds.
"""

from tortoise import fields
from tortoise.models import Model


class Message(Model):
    """One stored message. ``message_id`` is the client's UUID, unique forever."""

    id = fields.BigIntField(primary_key=True)
    message_id = fields.CharField(max_length=36, unique=True)
    sender_id = fields.BigIntField()
    recipient_id = fields.BigIntField()
    body = fields.TextField()
    server_ts = fields.BigIntField()
    delivered_at = fields.BigIntField(null=True)

    class Meta:
        table = "messages"
        indexes = (("recipient_id", "id"), ("sender_id", "id"))
