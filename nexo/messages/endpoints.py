"""HTTP endpoints of the messages feature."""

from sanic import Blueprint, Sanic

bp = Blueprint("messages", url_prefix="/api")


def setup(app: Sanic) -> None:
    app.blueprint(bp)
