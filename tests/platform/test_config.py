"""Settings parsing: pure, no I/O beyond the dev secret file."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexo.platform.config import ConfigError, RateLimit, Settings

GOOD = "s" * 40


def test_defaults_follow_design() -> None:
    settings = Settings.from_env({"JWT_SECRET": GOOD})
    assert settings.port == 5000
    assert settings.jwt_issuer == "nexo"
    assert settings.database_kind == "sqlite"
    assert settings.sqlite_path == Path("data/nexo.db")
    assert settings.rate_limit == RateLimit(100, 60)
    assert settings.access_token_ttl == 3600


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100/minute", RateLimit(100, 60)),
        ("5/second", RateLimit(5, 1)),
        ("10 per 2 seconds", RateLimit(10, 2)),
        ("1000/hour", RateLimit(1000, 3600)),
    ],
)
def test_rate_limit_parsing(text: str, expected: RateLimit) -> None:
    assert RateLimit.parse(text, "X") == expected


@pytest.mark.parametrize("text", ["", "abc", "0/minute", "10/fortnight", "-1/second"])
def test_rate_limit_rejects_garbage(text: str) -> None:
    with pytest.raises(ConfigError, match="X="):
        RateLimit.parse(text, "X")


def test_previous_secrets_are_split_and_checked() -> None:
    settings = Settings.from_env({"JWT_SECRET": GOOD, "JWT_PREVIOUS_SECRETS": f"{'a' * 32}, {'b' * 33}"})
    assert settings.jwt_previous_secrets == ("a" * 32, "b" * 33)


def test_postgres_url_selects_postgresql() -> None:
    settings = Settings.from_env({"JWT_SECRET": GOOD, "DATABASE_URL": "postgresql://u:p@h:5432/db"})
    assert settings.database_kind == "postgresql"


def test_database_url_without_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="names no database"):
        Settings.from_env({"JWT_SECRET": GOOD, "DATABASE_URL": "postgresql://u:p@h:5432"})


def test_dev_mode_makes_and_reuses_a_secret(tmp_path: Path) -> None:
    env = {"NEXO_DATA_DIR": str(tmp_path)}
    first = Settings.from_env(env, dev=True).jwt_secret
    assert len(first) >= 32
    assert Settings.from_env(env, dev=True).jwt_secret == first
    assert (tmp_path / "dev_jwt_secret").stat().st_mode & 0o777 == 0o600


def test_log_origin_setting() -> None:
    from nexo.platform.config import ConfigError as _ConfigError
    from nexo.platform.config import Settings as _Settings

    base = {"JWT_SECRET": "k" * 40}
    assert _Settings.from_env(base).log_origin == "nexo.local/log"
    assert _Settings.from_env({**base, "NEXO_LOG_ORIGIN": "example.com/log"}).log_origin == "example.com/log"
    for bad in ("two words", "a+b", "line\nbreak"):
        with pytest.raises(_ConfigError, match="NEXO_LOG_ORIGIN"):
            _Settings.from_env({**base, "NEXO_LOG_ORIGIN": bad})
