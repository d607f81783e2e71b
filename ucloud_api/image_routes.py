"""The ``/image`` endpoints: which images VMs can boot, and an administrator's import.

``POST /image/import?name=NAME`` takes the image file itself as the body
(``application/octet-stream``, raw or qcow2) with the credentials in the X-Ucloud-*
headers. The body is streamed to a temporary file (never held in memory), bounded by
``api_max_image_bytes`` instead of the small JSON limit, then imported into the store the
settings name (``storage_backend``) by the same backend call as ``ucloud image import``.
With the file backend the image lands in this API host's ``image_dir`` — right for a
one-box cloud; with several hosts use RBD (shared) or import on each host.
"""

from __future__ import annotations

import os
import tempfile

from flask import Blueprint, Response, request

from ucloud_common.storage import StorageBackend, StorageError, open_backend
from ucloud_common.storage.file import check_image_name

from .errors import ApiError
from .routes import _query, caller, ctx, no_query, parse_optional_body, reply
from .schemas import Credentials

image = Blueprint("image", __name__, url_prefix="/image")
IMPORT_PATH = "/image/import"
CHUNK = 1 << 20


def _backend() -> StorageBackend:
    try:
        return open_backend(ctx().settings)
    except StorageError as exc:
        raise ApiError(503, f"the image store is not available: {exc}") from None


def _close(backend: StorageBackend) -> None:
    close = getattr(backend, "close", None)
    if close is not None:
        close()


@image.get("/list")
def list_images() -> Response:
    no_query()
    caller(parse_optional_body(Credentials))
    backend = _backend()
    try:
        names = backend.images()
    except StorageError as exc:
        raise ApiError(503, f"the image store is not available: {exc}") from None
    finally:
        _close(backend)
    return reply({"images": sorted(names), "default": ctx().settings.default_image})


@image.post("/import")
def import_image() -> Response:
    query = _query()
    for name in query:
        if name != "name":
            raise ApiError(400, f"{name}: unknown query parameter", name)
    user = caller(None)
    settings = ctx().settings
    if not user.is_admin(settings.admin_realm):
        raise ApiError(403, f"only administrators (realm {settings.admin_realm!r} or the admin flag) may import images")
    name = query.get("name")
    if not name:
        raise ApiError(400, "name: the image's name is required (?name=)", "name")
    try:
        check_image_name(name)
    except StorageError as exc:
        raise ApiError(400, f"name: {exc}", "name") from None
    if request.mimetype != "application/octet-stream":
        raise ApiError(415, f"the body must be the image file (Content-Type: application/octet-stream), "
                            f"not {request.mimetype or 'none'}", "Content-Type")
    limit = settings.api_max_image_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"the image is larger than api_max_image_bytes ({limit})", "body")
    backend = _backend()
    fd, path = tempfile.mkstemp(prefix="ucloud-import-", dir=os.environ.get("TMPDIR"))
    try:
        if backend.has_image(name):
            raise ApiError(409, f"image {name!r} already exists in the {backend.name} store", "name")
        size = 0
        with os.fdopen(fd, "wb") as out:
            while chunk := request.stream.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"the image is larger than api_max_image_bytes ({limit})", "body")
                out.write(chunk)
        if size == 0:
            raise ApiError(400, "body: the image file is empty", "body")
        backend.import_image(name, path)
    except StorageError as exc:
        raise ApiError(400, f"body: {exc}", "body") from None
    finally:
        os.unlink(path)
        _close(backend)
    return reply({"name": name, "size": size}, 201)
