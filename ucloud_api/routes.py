"""The HTTP endpoints. Each one parses, calls one service function and serialises.

Parsing is the same everywhere: the body must be JSON (415 for another Content-Type,
400 for bad JSON, 413 past ``api_max_body_bytes``), it is validated by a strict model
from :mod:`.schemas` (400 naming the field), then the caller is authenticated (401).
Errors are raised, never returned: :mod:`.errors` maps them to the one error shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import BaseModel

from ucloud_common.accounts import User
from ucloud_common.config import Settings
from ucloud_common.store import Store

from . import services
from .auth import Authenticator
from .errors import ApiError
from .metrics import metrics_response
from .schemas import HEADER_IDEMPOTENCY, CreateVM, Credentials, DeleteVM, StatusBody, StatusQuery, VMAction

M = TypeVar("M", bound=BaseModel)

vm = Blueprint("vm", __name__, url_prefix="/vm")
host = Blueprint("host", __name__, url_prefix="/host")
meta = Blueprint("meta", __name__)


@dataclass
class ApiContext:
    """What the handlers need, built once per worker process by ``create_app``."""

    settings: Settings
    store: Store
    auth: Authenticator
    health_store: Store

    def close(self) -> None:
        """Close the etcd connections (tests; gunicorn workers just exit)."""
        self.health_store.close()
        self.store.close()


def ctx() -> ApiContext:
    return current_app.extensions["ucloud"]  # type: ignore[no-any-return]


# -- parsing -----------------------------------------------------------------------------


def _raw_body(required: bool) -> bytes | None:
    data = request.get_data(cache=True)  # 413 (from MAX_CONTENT_LENGTH) past api_max_body_bytes
    if not data.strip():
        if required:
            raise ApiError(400, "a JSON object is required as the request body", "body")
        return None
    mimetype = request.mimetype
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise ApiError(415, f"the body must be JSON (Content-Type: application/json), not {mimetype}",
                       "Content-Type")
    return data


def parse_body(model: type[M]) -> M:
    """The JSON body, validated by ``model`` (required)."""
    return model.model_validate_json(_raw_body(required=True) or b"")


def parse_optional_body(model: type[M]) -> M | None:
    """The JSON body validated by ``model``, or None when the request has no body (GET)."""
    raw = _raw_body(required=False)
    return None if raw is None else model.model_validate_json(raw)


def _query() -> dict[str, str]:
    args = request.args.to_dict(flat=False)
    for name, values in args.items():
        if len(values) > 1:
            raise ApiError(400, f"{name}: given more than once", name)
    return {name: values[0] for name, values in args.items()}


def no_query() -> None:
    for name in request.args:
        raise ApiError(400, f"{name}: unknown query parameter", name)


def caller(body: Credentials | None) -> User:
    return ctx().auth.user_for(body)


def idempotency_header() -> str | None:
    value = request.headers.get(HEADER_IDEMPOTENCY)
    if value is None:
        return None
    if not 1 <= len(value) <= 255 or not value.isascii() or not value.isprintable():
        raise ApiError(400, f"{HEADER_IDEMPOTENCY} must be 1-255 printable ASCII characters", HEADER_IDEMPOTENCY)
    return value


def reply(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = jsonify(data)
    response.status_code = status
    response.headers.update(headers or {})
    return response


# -- /vm ---------------------------------------------------------------------------------


@vm.post("/create")
def create_vm() -> Response:
    no_query()
    body = parse_body(CreateVM)
    specs = services.check_specs(body.specs.model_dump())
    key = idempotency_header()
    user = caller(body)
    c = ctx()
    vm_id, created = services.create_vm(c.store, user.owner, specs, image=body.image or c.settings.default_image,
                                        vm_name=body.vm_name or "", idempotency=key)
    headers = {"Location": f"/vm/status?id={vm_id}"}
    if key and not created:
        headers["Idempotent-Replayed"] = "true"
    return reply({"id": vm_id}, 201, headers)


@vm.post("/delete")
def delete_vm() -> Response:
    no_query()
    body = parse_body(DeleteVM)
    user = caller(body)
    status = services.delete_vm(ctx().store, user.owner, body.vmid)
    return reply({"id": body.vmid, "status": status}, 202)


@vm.get("/status")
def vm_status() -> Response:
    body = parse_optional_body(StatusBody)
    query = _query()
    if body is not None:
        if query:
            raise ApiError(400, "give the id either in the JSON body or as ?id=, not both", next(iter(query)))
        vm_id = body.id
    else:
        vm_id = StatusQuery.model_validate(query).id
    user = caller(body)
    return reply(services.vm_view(services.get_vm(ctx().store, user.owner, vm_id)))


@vm.get("/list")
def list_vms() -> Response:
    no_query()
    user = caller(parse_optional_body(Credentials))
    return reply({"vms": [services.vm_view(v) for v in services.list_vms(ctx().store, user.owner)]})


@vm.post("/action")
def vm_action() -> Response:
    no_query()
    body = parse_body(VMAction)
    user = caller(body)
    new = services.act_on_vm(ctx().store, user.owner, body.vmid, body.action)
    return reply({"id": new.id, "status": new.status.value}, 202)


# -- /host (administrators) ---------------------------------------------------------------


@host.get("/list")
def list_hosts() -> Response:
    no_query()
    user = caller(parse_optional_body(Credentials))
    c = ctx()
    if not user.is_admin(c.settings.admin_realm):
        raise ApiError(403, f"only administrators (realm {c.settings.admin_realm!r} or the admin flag) "
                            f"may list hosts")
    return reply({"hosts": services.list_hosts(c.store, c.settings)})


# -- health, spec, docs ------------------------------------------------------------------


@meta.get("/healthz")
def healthz() -> Response:
    return reply(services.health(ctx().health_store))


@meta.get("/metrics")
def metrics() -> Response:
    return metrics_response()


@meta.get("/openapi.json")
def openapi_json() -> Response:
    return reply(current_app.extensions["ucloud_openapi"])


@meta.get("/docs")
def docs() -> Response:
    from .openapi import docs_html

    return Response(docs_html(current_app.extensions["ucloud_openapi"]), mimetype="text/html")
