"""HTTP endpoints of the transparency feature."""

from sanic import Blueprint, Sanic

bp = Blueprint("transparency", url_prefix="/api")


def setup(app: Sanic) -> None:
    app.blueprint(bp)
