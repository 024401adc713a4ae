"""HTTP endpoints of the devices feature."""

from sanic import Blueprint, Sanic

bp = Blueprint("devices", url_prefix="/api")


def setup(app: Sanic) -> None:
    app.blueprint(bp)
