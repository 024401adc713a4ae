"""HTTP endpoints of the auth feature."""

from sanic import Blueprint, Sanic

bp = Blueprint("auth", url_prefix="/api")


def setup(app: Sanic) -> None:
    app.blueprint(bp)
