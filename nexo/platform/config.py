"""Settings: one frozen object built from the environment (README.md "Configuration").

Every value is validated here, once, with a message an operator can act on, and
no other module reads a setting from ``os.environ``. The environment is also how
a server's worker processes get their settings: ``nexo serve``/``nexo dev``
write their command-line options, ``NEXO_DEV`` and prometheus_client's
``PROMETHEUS_MULTIPROC_DIR`` into it (``nexo/cli.py``); each worker's
``create_app`` reads ``NEXO_DEV`` to call :meth:`Settings.from_env` in dev mode
(``nexo/app.py``), ``nexo/platform/metrics.py`` checks ``PROMETHEUS_MULTIPROC_DIR`` to
sum the workers' metrics, and offline commands pass a copy of the environment
to :meth:`Settings.from_env` (``nexo/transparency/commands.py``).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from nexo.platform import filemodes
from nexo.platform.vkeys import CosignatureError, WitnessKey, parse_vkey

PLACEHOLDER_SECRETS = frozenset({"change_me", "changeme", "secret", "please_change_me"})
MIN_SECRET_BYTES = 32
_RATE_RE = re.compile(r"^\s*(\d+)\s*(?:/|per)\s*(\d+\s*)?(second|minute|hour|day)s?\s*$", re.I)
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


class ConfigError(Exception):
    """A setting is missing or invalid. The message names the variable and the fix."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``amount`` requests per ``window_seconds``."""

    amount: int
    window_seconds: int

    @classmethod
    def parse(cls, text: str, variable: str) -> RateLimit:
        """Parse ``N/second|minute|hour|day`` (also ``N per 10 seconds``)."""
        match = _RATE_RE.match(text)
        if not match or int(match.group(1)) < 1:
            raise ConfigError(
                f"{variable}={text!r} is not a rate: use N/second, N/minute or N/hour "
                "(for example 100/minute)"
            )
        multiplier = int(match.group(2)) if match.group(2) else 1
        return cls(int(match.group(1)), multiplier * _UNIT_SECONDS[match.group(3).lower()])

    def __str__(self) -> str:
        return f"{self.amount} per {self.window_seconds} seconds"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything Nexo reads from its environment. Times are in seconds."""

    jwt_secret: str
    port: int = 5000
    host: str = "0.0.0.0"  # noqa: S104 - a server listens on all interfaces by default
    jwt_issuer: str = "nexo"
    jwt_previous_secrets: tuple[str, ...] = ()
    database_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = Path("data")
    signing_key_file: Path | None = None
    log_origin: str = "nexo.local/log"
    rate_limit: RateLimit = RateLimit(100, 60)
    auth_rate_limit: RateLimit = RateLimit(30, 60)
    ws_rate_limit: RateLimit = RateLimit(6000, 60)
    trusted_proxies: int = 0
    forwarded_secret: str | None = None
    redis_prefix: str = "nexo"
    access_token_ttl: int = 3600
    refresh_token_ttl: int = 30 * 24 * 3600
    login_lockout_threshold: int = 10
    login_lockout_window: int = 15 * 60
    prune_interval: int = 3600
    max_body_bytes: int = 256 * 1024
    message_body_max_bytes: int = 64 * 1024
    ws_max_frame_bytes: int = 128 * 1024
    ws_auth_timeout: float = 5.0
    ws_push_sweep_seconds: float = 2.0
    #: Seconds a connection may leave a write pending (the client does not read) before it is dropped.
    ws_write_timeout: float = 30.0
    sth_interval: float = 0.05
    sth_max_age: float = 300.0
    #: Characters of frames one connection may have waiting for its socket (slow consumer: 1008).
    ws_outbox_bytes: int = 1024 * 1024
    witnesses: tuple[Witness, ...] = ()
    witness_quorum: int = 0
    witness_interval: float = 10.0
    #: Frames of every type one connection may send (token bucket: the amount, refilled
    #: over the window); beyond it the server stops reading the socket until it refills.
    ws_frame_rate: RateLimit = RateLimit(12000, 60)
    #: What ``sync`` may replay for one user, all its connections together (a frame a
    #: message and a KiB; token bucket of the amount, refilled over the window).
    ws_sync_rate: RateLimit = RateLimit(2000, 5)
    #: Open WebSocket connections per user in one worker process; more are closed with 4429.
    ws_max_connections_per_user: int = 20
    #: WebSocket upgrades from one address not yet authenticated, per worker; more get 429.
    ws_max_pending_per_address: int = 20
    workers: int = 1
    metrics_token: str | None = None
    console_token: str | None = None
    console_window: int = 60
    cors_origins: tuple[str, ...] = ()
    argon2_memory_kib: int = 19456
    argon2_time_cost: int = 2
    log_level: str = "INFO"
    access_log: bool = True
    tls_cert: Path | None = None
    tls_key: Path | None = None
    dev: bool = False

    @property
    def database_kind(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return "postgresql" if self.database_url else "sqlite"

    @property
    def tls(self) -> bool:
        """True when Nexo itself terminates TLS (``--cert``/``--key``)."""
        return self.tls_cert is not None

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "nexo.db"

    @property
    def signing_key_path(self) -> Path:
        return self.signing_key_file or self.data_dir / "sth_signing.key"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, dev: bool = False) -> Settings:
        """Build and validate settings; raise :class:`ConfigError` with one clear line."""
        env = os.environ if env is None else env
        data_dir = Path(env.get("NEXO_DATA_DIR") or "data")
        secret = env.get("JWT_SECRET", "")
        if not secret:
            if not dev:
                raise ConfigError(
                    "JWT_SECRET is required: set it to a random value of at least 32 bytes, "
                    "for example: export JWT_SECRET=$(python3 -c 'import secrets; "
                    "print(secrets.token_urlsafe(48))')  (or use `nexo dev`, which makes one)"
                )
            secret = dev_secret(data_dir)
        elif not dev:
            check_secret(secret, "JWT_SECRET")
        previous = tuple(s.strip() for s in env.get("JWT_PREVIOUS_SECRETS", "").split(",") if s.strip())
        for old in previous:
            if not dev:
                check_secret(old, "JWT_PREVIOUS_SECRETS")
        console_token = env.get("NEXO_CONSOLE_TOKEN") or None
        if console_token and not dev:
            check_secret(console_token, "NEXO_CONSOLE_TOKEN")
        database_url = env.get("DATABASE_URL") or None
        if database_url:
            check_database_url(database_url)
        redis_url = env.get("REDIS_URL") or None
        if redis_url and urlparse(redis_url).scheme not in {"redis", "rediss", "unix"}:
            raise ConfigError(f"REDIS_URL={redis_url!r} must start with redis:// or rediss://")
        workers = _int(env, "NEXO_WORKERS", 1, minimum=1)
        redis_prefix = env.get("NEXO_REDIS_PREFIX") or "nexo"
        if not _PREFIX_RE.match(redis_prefix):
            raise ConfigError(f"NEXO_REDIS_PREFIX={redis_prefix!r}: use 1-64 of letters, digits and _ . : -")
        key_file = env.get("NEXO_SIGNING_KEY_FILE")
        witnesses = parse_witnesses(env.get("NEXO_WITNESSES", ""))
        return cls(
            jwt_secret=secret,
            port=_int(env, "PORT", 5000, minimum=0, maximum=65535),
            host=env.get("HOST") or "0.0.0.0",  # noqa: S104
            jwt_issuer=env.get("JWT_ISSUER") or "nexo",
            jwt_previous_secrets=previous,
            database_url=database_url,
            redis_url=redis_url,
            data_dir=data_dir,
            signing_key_file=Path(key_file) if key_file else None,
            log_origin=check_log_origin(env.get("NEXO_LOG_ORIGIN") or "nexo.local/log"),
            rate_limit=RateLimit.parse(env.get("NEXO_RATE_LIMIT") or "100/minute", "NEXO_RATE_LIMIT"),
            auth_rate_limit=RateLimit.parse(
                env.get("NEXO_AUTH_RATE_LIMIT") or "30/minute", "NEXO_AUTH_RATE_LIMIT"
            ),
            ws_rate_limit=RateLimit.parse(
                env.get("NEXO_WS_RATE_LIMIT") or "6000/minute", "NEXO_WS_RATE_LIMIT"
            ),
            trusted_proxies=_int(env, "NEXO_TRUSTED_PROXIES", 0, minimum=0),
            forwarded_secret=env.get("NEXO_FORWARDED_SECRET") or None,
            redis_prefix=redis_prefix,
            access_token_ttl=_int(env, "NEXO_ACCESS_TOKEN_TTL", 3600, minimum=1),
            refresh_token_ttl=_int(env, "NEXO_REFRESH_TOKEN_TTL", 30 * 24 * 3600, minimum=1),
            login_lockout_threshold=_int(env, "NEXO_LOGIN_LOCKOUT_THRESHOLD", 10, minimum=1),
            login_lockout_window=_int(env, "NEXO_LOGIN_LOCKOUT_WINDOW", 900, minimum=1),
            prune_interval=_int(env, "NEXO_PRUNE_INTERVAL", 3600, minimum=0),
            max_body_bytes=_int(env, "NEXO_MAX_BODY_BYTES", 256 * 1024, minimum=1024),
            message_body_max_bytes=_int(env, "NEXO_MESSAGE_MAX_BYTES", 64 * 1024, minimum=1),
            ws_max_frame_bytes=_int(env, "NEXO_WS_MAX_FRAME_BYTES", 128 * 1024, minimum=1024),
            ws_outbox_bytes=_int(env, "NEXO_WS_OUTBOX_BYTES", 1024 * 1024, minimum=64 * 1024),
            ws_frame_rate=RateLimit.parse(
                env.get("NEXO_WS_FRAME_RATE") or "12000/minute", "NEXO_WS_FRAME_RATE"
            ),
            ws_sync_rate=RateLimit.parse(
                env.get("NEXO_WS_SYNC_RATE") or "2000 per 5 seconds", "NEXO_WS_SYNC_RATE"
            ),
            ws_max_connections_per_user=_int(env, "NEXO_WS_MAX_CONNECTIONS_PER_USER", 20, minimum=1),
            ws_max_pending_per_address=_int(env, "NEXO_WS_MAX_PENDING_PER_ADDRESS", 20, minimum=1),
            ws_write_timeout=_seconds(env, "NEXO_WS_WRITE_TIMEOUT", 30.0, minimum=0.1, maximum=3600.0),
            workers=workers,
            ws_push_sweep_seconds=_seconds(env, "NEXO_WS_PUSH_SWEEP_SECONDS", 2.0, minimum=0.1, maximum=60.0),
            sth_interval=_seconds(env, "NEXO_STH_INTERVAL", 0.05, minimum=0.0, maximum=60.0),
            witnesses=witnesses,
            witness_quorum=_quorum(env, witnesses),
            witness_interval=_seconds(env, "NEXO_WITNESS_INTERVAL", 10.0, minimum=0.1, maximum=3600.0),
            sth_max_age=_seconds(env, "NEXO_STH_MAX_AGE", 300.0, minimum=1.0, maximum=30 * 24 * 3600.0),
            metrics_token=env.get("NEXO_METRICS_TOKEN") or None,
            console_token=console_token,
            console_window=_int(env, "NEXO_CONSOLE_WINDOW", 60, minimum=2),
            cors_origins=tuple(o.strip() for o in env.get("NEXO_CORS_ORIGINS", "").split(",") if o.strip()),
            argon2_memory_kib=_int(env, "NEXO_ARGON2_MEMORY_KIB", 19456, minimum=8192),
            argon2_time_cost=_int(env, "NEXO_ARGON2_TIME_COST", 2, minimum=1),
            log_level=_choice(env, "NEXO_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
            access_log=_choice(env, "NEXO_ACCESS_LOG", "1", ("0", "1")) == "1",
            tls_cert=Path(env["NEXO_TLS_CERT"]) if env.get("NEXO_TLS_CERT") else None,
            tls_key=Path(env["NEXO_TLS_KEY"]) if env.get("NEXO_TLS_KEY") else None,
            dev=dev,
        )

    def check_deployment(self) -> None:
        """Refuse combinations that would silently give wrong answers."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("a TLS certificate and its key go together: give both --cert and --key")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not path.is_file():
                raise ConfigError(f"TLS file {path} does not exist")
        if self.sth_max_age <= self.sth_interval:
            raise ConfigError(
                f"NEXO_STH_MAX_AGE ({self.sth_max_age:g} s) must be longer than NEXO_STH_INTERVAL "
                f"({self.sth_interval:g} s)"
            )
        if self.workers > 1 and self.database_kind == "sqlite":
            raise ConfigError(
                f"SQLite serves one worker process; {self.workers} workers were asked for. "
                "Use PostgreSQL for several workers (DATABASE_URL=postgresql://...), or --workers 1."
            )


@dataclass(frozen=True, slots=True)
class Witness:
    """A C2SP tlog-witness: its submission prefix and its cosigner key."""

    url: str
    key: WitnessKey

    @property
    def name(self) -> str:
        return self.key.name


def parse_witnesses(text: str) -> tuple[Witness, ...]:
    """``NEXO_WITNESSES``: comma-separated ``<url> <vkey>`` pairs."""
    found: list[Witness] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        fields_ = item.split()
        if len(fields_) != 2:
            raise ConfigError(
                f"NEXO_WITNESSES: {item!r} is not '<url> <vkey>' (pairs are separated by commas)"
            )
        url, vkey = fields_
        parsed = urlparse(url)
        if parsed.scheme not in {"http", "https"} or not parsed.netloc or parsed.query or parsed.fragment:
            raise ConfigError(f"NEXO_WITNESSES: {url!r} is not an http(s) URL prefix")
        try:
            key = parse_vkey(vkey)
        except CosignatureError as exc:
            raise ConfigError(f"NEXO_WITNESSES: {exc}") from None
        if any(w.name == key.name for w in found):
            raise ConfigError(f"NEXO_WITNESSES: the witness {key.name} is listed twice")
        found.append(Witness(url.rstrip("/"), key))
    return tuple(found)


def _quorum(env: Mapping[str, str], witnesses: tuple[Witness, ...]) -> int:
    if not witnesses:
        if env.get("NEXO_WITNESS_QUORUM"):
            raise ConfigError("NEXO_WITNESS_QUORUM is set but NEXO_WITNESSES lists no witness")
        return 0
    return _int(env, "NEXO_WITNESS_QUORUM", 1, minimum=1, maximum=len(witnesses))


def check_secret(secret: str, variable: str) -> None:
    if secret.strip().lower() in PLACEHOLDER_SECRETS:
        raise ConfigError(
            f"{variable} is the placeholder {secret!r}: set a random secret of at least "
            f"{MIN_SECRET_BYTES} bytes"
        )
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"{variable} is {len(secret.encode())} bytes: it must be at least "
            f"{MIN_SECRET_BYTES} bytes of random data"
        )


def check_log_origin(origin: str) -> str:
    """The log's origin line (C2SP checkpoint): one printable word, no spaces or ``+``."""
    if not origin.isprintable() or any(c.isspace() or c == "+" for c in origin) or len(origin) > 255:
        raise ConfigError(
            f"NEXO_LOG_ORIGIN={origin!r} must be one printable word of at most 255 characters "
            "without spaces or '+', for example example.com/log"
        )
    return origin


def check_database_url(url: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in {"postgres", "postgresql", "asyncpg"}:
        raise ConfigError(
            f"DATABASE_URL scheme {parsed.scheme or '(none)'!r} is not supported: use "
            "postgresql://user:pass@host:5432/dbname, or unset it for SQLite"
        )
    try:
        parsed.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(f"DATABASE_URL has an invalid port: {exc}") from None
    if not parsed.hostname and "host=" not in parsed.query:
        raise ConfigError("DATABASE_URL has no host: use postgresql://user:pass@host:5432/dbname")
    if not parsed.path.strip("/"):
        raise ConfigError("DATABASE_URL names no database: add /dbname at the end")


def dev_secret(data_dir: Path) -> str:
    """The development secret: made once under the data dir (0600) and reused.

    An existing file is checked like ``JWT_SECRET`` (an empty, short or placeholder
    secret would let anyone forge tokens), with the way out in the message.
    """
    path = data_dir / "dev_jwt_secret"
    if path.exists():
        secret = path.read_text(errors="replace").strip()
        try:
            check_secret(secret, f"the development secret in {path}")
        except ConfigError as exc:
            raise ConfigError(f"{exc} (delete the file and `nexo dev` makes a new one)") from None
        return secret
    filemodes.private_dir(data_dir)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (env.get(name) or default).upper()
    if value not in choices:
        raise ConfigError(f"{name}={env.get(name)!r} must be one of {', '.join(choices)}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise ConfigError(f"{name}={value} must be at least {minimum}{upper}")
    return value


def _seconds(env: Mapping[str, str], name: str, default: float, *, minimum: float, maximum: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
    if not minimum <= value <= maximum:  # also refuses nan
        raise ConfigError(f"{name}={value:g} must be between {minimum:g} and {maximum:g} seconds")
    return value
