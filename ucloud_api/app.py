"""The Flask application factory: ``create_app(settings)`` wires settings, etcd, auth and routes.

Nothing here runs at import time and nothing is global: gunicorn calls the factory
in each worker *after* forking, so every worker owns its gRPC channel to etcd (gRPC
channels do not survive a fork).
"""

from __future__ import annotations

import io
from typing import Any, Callable, Iterable

from flask import Flask, abort, request

from ucloud_common.config import Settings
from ucloud_common.store import Store

from . import errors, image_routes, network_routes, routes
from .auth import Authenticator, CredentialCache
from .metrics import ApiMetrics
from .openapi import build_spec


def create_app(settings: Settings, *, store: Store | None = None, cache_ttl: float | None = None) -> Flask:
    """The API as a WSGI app. ``store`` defaults to a new connection to ``settings.etcd_endpoints``."""
    app = Flask("ucloud_api")
    app.config["MAX_CONTENT_LENGTH"] = settings.api_max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    store = store or Store(settings.etcd_endpoints, timeout=settings.etcd_timeout,
                           retry_for=settings.etcd_retry_for)
    # /healthz must answer quickly when etcd is down, not after the 15 s retry window.
    health_store = Store(settings.etcd_endpoints, timeout=min(2.0, settings.etcd_timeout), retry_for=1.0)
    cache = CredentialCache() if cache_ttl is None else CredentialCache(ttl=cache_ttl)
    app.extensions["ucloud"] = routes.ApiContext(settings, store, Authenticator(store, cache), health_store)
    app.extensions["ucloud_openapi"] = build_spec()
    metrics = ApiMetrics(health_store)  # scrapes read etcd with the short timeout too
    app.extensions["ucloud_metrics"] = metrics
    metrics.install(app)
    for blueprint in (routes.vm, network_routes.network, image_routes.image, routes.host, routes.meta):
        app.register_blueprint(blueprint)
    errors.register(app)
    app.wsgi_app = ChunkedBodyLimit(app.wsgi_app, settings.api_max_body_bytes)  # type: ignore[method-assign]

    @app.before_request
    def _refuse_oversized_chunked_body() -> None:
        if request.environ.get(ChunkedBodyLimit.FLAG):
            abort(413)
        if request.path == image_routes.IMPORT_PATH:  # an image file, streamed: its own limit
            request.max_content_length = settings.api_max_image_bytes + 1  # the route answers 413 itself

    return app


class ChunkedBodyLimit:
    """Apply ``api_max_body_bytes`` to chunked bodies too.

    Flask's MAX_CONTENT_LENGTH answers 413 for a Content-Length past the limit, but a
    chunked body (no Content-Length) is silently cut at the limit, which would then
    fail as bad JSON. This middleware reads a chunked body up to limit + 1 bytes; if
    there is more, it flags the request and the app answers 413 in the usual shape.
    """

    FLAG = "ucloud.body_too_large"

    def __init__(self, app: Callable[..., Iterable[bytes]], limit: int) -> None:
        self.app = app
        self.limit = limit

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == image_routes.IMPORT_PATH:
            return self.app(environ, start_response)  # streamed to a file, bounded by api_max_image_bytes
        if not environ.get("CONTENT_LENGTH") and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            stream, data = environ["wsgi.input"], b""
            while len(data) <= self.limit:
                chunk = stream.read(self.limit + 1 - len(data))
                if not chunk:
                    break
                data += chunk
            if len(data) > self.limit:
                environ[self.FLAG] = True
                data = b""
            environ["wsgi.input"] = io.BytesIO(data)
            environ["CONTENT_LENGTH"] = str(len(data))
        return self.app(environ, start_response)
