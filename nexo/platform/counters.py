"""Maintained counters, so health can report totals in O(1).

A feature bumps its counter inside the same transaction as the row it adds
or removes (``await counters.add("users", 1, using=conn)``), so the counter
never drifts from the table.
"""

from __future__ import annotations

from tortoise import fields
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.expressions import F
from tortoise.models import Model

from nexo.platform import db


class Counter(Model):
    name = fields.CharField(max_length=64, primary_key=True)
    value = fields.BigIntField(default=0)

    class Meta:
        table = "counters"


async def add(name: str, delta: int, *, using: BaseDBAsyncClient | None = None) -> None:
    """Add ``delta`` to counter ``name`` (created at zero on first use)."""
    updated = await Counter.filter(name=name).using_db(using).update(value=F("value") + delta)
    if not updated:
        await Counter.get_or_create(name=name, defaults={"value": 0}, using_db=using)
        await Counter.filter(name=name).using_db(using).update(value=F("value") + delta)


async def set_value(name: str, value: int, *, using: BaseDBAsyncClient | None = None) -> None:
    updated = await Counter.filter(name=name).using_db(using).update(value=value)
    if not updated:
        await Counter.create(name=name, value=value, using_db=using)


def read_all_now() -> dict[str, int] | None:
    """:func:`read_all` in place through the SQLite :class:`nexo.platform.db.QuickReader` (never waits
    behind the writer); ``None`` when there is none or it cannot read at once."""
    reader = db.quick_reader()
    rows = reader.fetch("SELECT name, value FROM counters", ()) if reader is not None else None
    return None if rows is None else {str(name): int(value) for name, value in rows}


async def read_all() -> dict[str, int]:
    """Every counter by name, in one query."""
    return {name: int(value) for name, value in await Counter.all().values_list("name", "value")}
