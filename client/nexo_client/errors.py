"""The client's exceptions: one tree, each with the CLI exit code that reports it.

Every verification failure is a :class:`VerificationFailed`; when one is raised
the client's stored state (trusted tree head, keys, outbox) is unchanged and
nothing was sent.
"""

from __future__ import annotations


class NexoClientError(Exception):
    """Base of every error the SDK raises on purpose."""

    exit_code = 1


class ServerError(NexoClientError):
    """The server answered with an error document (``{"error": {"code", "message"}}``)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"server: {message} ({code}, HTTP {status})")
        self.status = status
        self.code = code


class ServerUnavailable(NexoClientError):
    """The server could not be reached (connection refused, reset, timeout)."""

    exit_code = 5


class AuthError(NexoClientError):
    """Not logged in, wrong password, or the session ended."""

    exit_code = 4


class NotLoggedIn(AuthError):
    """No session in the state directory: run ``login`` first."""


class SessionRevoked(AuthError):
    """The refresh token was refused (reused, revoked or expired): log in again.

    Raised once, never retried: a reused refresh token means someone else may
    hold a copy, and the server has ended the whole session family.
    """


class UnknownUser(NexoClientError):
    """The recipient does not exist."""


class NoDevices(NexoClientError):
    """The recipient has no verified device to encrypt to."""


class StateError(NexoClientError):
    """The state directory is unusable (wrong permissions, another account, corrupt)."""


class VerificationFailed(NexoClientError):
    """Something the server said about keys or the log did not verify."""

    exit_code = 3


class SignatureInvalid(VerificationFailed):
    """A tree head's or checkpoint's signature does not verify with the pinned log key."""


class SplitViewDetected(VerificationFailed):
    """The server's tree head is not an extension of the one this client trusts (a fork)."""


class ProofInvalid(VerificationFailed):
    """An inclusion proof is missing or wrong, or a key differs from its log leaf."""


class CosignatureInvalid(VerificationFailed):
    """Fewer valid witness cosignatures than the configured quorum."""


class EnvelopeInvalid(VerificationFailed):
    """A received envelope is malformed, its signature fails, or its sender key is unverified."""


class LogKeyChanged(VerificationFailed):
    """``/api/log/key`` no longer matches the key pinned on first use."""
