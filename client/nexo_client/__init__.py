"""Nexo's Python client: end-to-end encryption, verified keys, an exactly-once outbox."""

from .client import Message, NexoClient, SendFailed
from .errors import (
    AuthError,
    CosignatureInvalid,
    EnvelopeInvalid,
    LogKeyChanged,
    NexoClientError,
    NoDevices,
    NotLoggedIn,
    ProofInvalid,
    ServerError,
    ServerUnavailable,
    SessionRevoked,
    SignatureInvalid,
    SplitViewDetected,
    StateError,
    UnknownUser,
    VerificationFailed,
)
from .log import Witness

__all__ = [
    "AuthError", "CosignatureInvalid", "EnvelopeInvalid", "LogKeyChanged", "Message", "NexoClient",
    "NexoClientError", "NoDevices", "NotLoggedIn", "ProofInvalid", "SendFailed", "ServerError",
    "ServerUnavailable", "SessionRevoked", "SignatureInvalid", "SplitViewDetected", "StateError",
    "UnknownUser", "VerificationFailed", "Witness",
]
