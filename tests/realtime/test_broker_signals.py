"""The broker's account-deletion signal (nexo/realtime/broker.py; issue 14, finding 5)."""

from __future__ import annotations

from nexo.realtime.broker import DELETED_PREFIX, decode, deleted_user


def test_a_deletion_signal_names_the_user_for_other_processes_only() -> None:
    payload = f"peer|{DELETED_PREFIX}42"
    assert deleted_user(payload, "me") == 42
    assert deleted_user(payload.encode(), "me") == 42
    assert deleted_user(payload, "peer") is None  # our own: already forgotten here


def test_a_deletion_signal_is_never_read_as_new_messages_and_vice_versa() -> None:
    assert decode(f"peer|{DELETED_PREFIX}42", "me") == []
    assert deleted_user("peer|1,2,3", "me") is None
    assert deleted_user(f"peer|{DELETED_PREFIX}x", "me") is None
