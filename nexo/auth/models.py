"""Tortoise models of accounts and sessions.

A *session* is one login: it owns a family of single-use refresh tokens and
is named in every access token it issues (claim ``sid``), so logging out or
detecting refresh-token reuse ends the session's access tokens too.
"""

from tortoise import fields
from tortoise.models import Model


class User(Model):
    id = fields.BigIntField(primary_key=True)
    #: Lowercased: usernames are case-insensitive and unique.
    username = fields.CharField(max_length=32, unique=True)
    password_hash = fields.CharField(max_length=255)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "users"


class Session(Model):
    id = fields.CharField(max_length=32, primary_key=True)
    user_id = fields.BigIntField(db_index=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    revoked_at = fields.DatetimeField(null=True)
    revoked_reason = fields.CharField(max_length=32, null=True)

    class Meta:
        table = "sessions"


class RefreshToken(Model):
    #: SHA-256 (hex) of the opaque token; the token itself is never stored.
    token_hash = fields.CharField(max_length=64, primary_key=True)
    session_id = fields.CharField(max_length=32, db_index=True)
    expires_at = fields.DatetimeField()
    used_at = fields.DatetimeField(null=True)

    class Meta:
        table = "refresh_tokens"


class LoginFailure(Model):
    id = fields.BigIntField(primary_key=True)
    username = fields.CharField(max_length=64)
    address = fields.CharField(max_length=64)
    at = fields.DatetimeField(db_index=True)

    class Meta:
        table = "login_failures"
        indexes = (("username", "address", "at"),)
