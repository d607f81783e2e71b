"""ucloud-api: the HTTP API (Flask app factory in ``app``, served by gunicorn from ``main``)."""

from .app import create_app

__all__ = ["create_app"]
