"""Nexo: accounts, a verifiable key transparency log and an exactly-once message relay."""

__version__ = "0.1.0"
