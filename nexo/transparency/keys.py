"""The log's Ed25519 signing key on disk: made once, never regenerated silently.

The key lives at ``$NEXO_DATA_DIR/sth_signing.key`` or ``NEXO_SIGNING_KEY_FILE``
(PKCS#8 PEM, mode 0600). If the log already has STHs, the key must exist and
verify the latest one; otherwise the server refuses to start.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nexo.platform import filemodes
from nexo.platform.config import ConfigError, Settings
from nexo.transparency import sth as sth_mod
from nexo.transparency.sth import SignedTreeHead


def read_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the log signing key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"the log signing key {path} is not an unencrypted PEM private key: {exc}"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"the log signing key {path} is not an Ed25519 key")
    return key


def create_key(path: Path) -> Ed25519PrivateKey:
    """Write a new key with mode 0600; never overwrites an existing file."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    filemodes.private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, filemodes.FILE_MODE)
    except FileExistsError:
        return read_key(path)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return key


def load_signing_key(settings: Settings, latest: SignedTreeHead | None) -> Ed25519PrivateKey:
    """The signing key, created on first start; :class:`ConfigError` if it cannot be trusted."""
    path = settings.signing_key_path
    if not path.exists():
        if latest is not None:
            raise ConfigError(
                f"the transparency log has {latest.index + 1} signed tree heads but its signing key "
                f"{path} is missing: restore the key file (or set NEXO_SIGNING_KEY_FILE to it). "
                "A new key would break the published chain, so Nexo will not make one."
            )
        return create_key(path)
    key = read_key(path)
    if latest is not None:
        try:
            sth_mod.verify(latest, sth_mod.public_key_bytes(key))
        except sth_mod.STHError:
            raise ConfigError(
                f"the log signing key {path} does not match the published key: it does not verify "
                f"STH {latest.index}. Restore the original key (or point NEXO_SIGNING_KEY_FILE at it)."
            ) from None
    return key
