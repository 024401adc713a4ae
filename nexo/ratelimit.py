"""Rate limiting (DESIGN.md "Rate limiting")."""

from sanic import Sanic


def setup(app: Sanic) -> None:
    """Install the limiter middleware."""
