"""The WebSocket endpoint ``/ws``."""

from sanic import Blueprint, Sanic

bp = Blueprint("realtime")


def setup(app: Sanic) -> None:
    app.blueprint(bp)
