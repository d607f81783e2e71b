"""A small HTTP client of the ucloud API, for the ``ucloud`` CLI (and scripts).

Two halves: :func:`build` turns a call into a :class:`Request` (pure: method, path,
query, JSON body, headers — testable without a server), and :class:`ApiClient` sends
it with ``requests`` and turns every way it can go wrong into one exception type,
:class:`ClientError`, whose message is a single line fit for a terminal:

* the API's JSON error shape (``{"error": {"status", "code", "field", "message"}}``)
  becomes :class:`ApiFailure` carrying those fields;
* a refused connection, a timeout or a non-JSON answer becomes :class:`Unreachable`
  or :class:`ApiFailure` with a message that names the URL.

Credentials always travel in the ``X-Ucloud-Realm/-Name/-Seed`` headers (the API
accepts them on every endpoint), so request bodies hold only what the call is about.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlsplit

import requests

HEADER_REALM = "X-Ucloud-Realm"
HEADER_NAME = "X-Ucloud-Name"
HEADER_SEED = "X-Ucloud-Seed"
DEFAULT_TIMEOUT = 30.0


class ClientError(Exception):
    """Anything that stops a call; ``str()`` is one line for the user."""


class Unreachable(ClientError):
    """No HTTP answer at all: connection refused, DNS, timeout."""


class ApiFailure(ClientError):
    """The API answered with an error status."""

    def __init__(self, status: int, message: str, code: str = "", field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.field = field
        self.message = message

    def __str__(self) -> str:
        where = f" [{self.field}]" if self.field and self.field not in self.message else ""
        return f"{self.message}{where} (HTTP {self.status}{' ' + self.code if self.code else ''})"


@dataclass(frozen=True)
class Credentials:
    realm: str
    name: str
    seed: str

    def headers(self) -> dict[str, str]:
        return {HEADER_REALM: self.realm, HEADER_NAME: self.name, HEADER_SEED: self.seed}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    params: Mapping[str, str] = field(default_factory=dict)
    body: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


def build(method: str, path: str, credentials: Credentials | None, body: Mapping[str, Any] | None = None,
          params: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None) -> Request:
    """The request for one call (no I/O)."""
    all_headers = dict(credentials.headers() if credentials else {})
    all_headers.update(headers or {})
    if body is not None:
        all_headers["Content-Type"] = "application/json"
    return Request(method, path, dict(params or {}), dict(body) if body is not None else None, all_headers)


def check_url(url: str) -> str:
    """``url`` without a trailing slash, or ValueError if it is not an http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"API URL must look like http://host:port, not {url!r}")
    return url.rstrip("/")


def error_from(status: int, text: str) -> ApiFailure:
    """An :class:`ApiFailure` from an error answer: the API's JSON shape, or the first line of
    whatever else answered (a proxy's HTML page, say)."""
    try:
        data = json.loads(text)
        error = data["error"]
        return ApiFailure(int(error.get("status", status)), str(error["message"]), str(error.get("code", "")),
                          error.get("field"))
    except (ValueError, KeyError, TypeError, AttributeError):
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        return ApiFailure(status, f"unexpected answer from the API: {first[:200] or '(empty body)'}")


class ApiClient:
    """The API's calls as methods; each returns the decoded JSON answer or raises ClientError."""

    def __init__(self, url: str, credentials: Credentials | None, timeout: float = DEFAULT_TIMEOUT,
                 session: requests.Session | None = None) -> None:
        self.url = check_url(url)
        self.credentials = credentials
        self.timeout = timeout
        self.session = session or requests.Session()

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> "ApiClient":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- transport ----------------------------------------------------------------------

    def send(self, request: Request) -> Any:
        url = self.url + request.path
        try:
            response = self.session.request(
                request.method, url, params=dict(request.params) or None,
                data=None if request.body is None else json.dumps(request.body),
                headers=dict(request.headers), timeout=self.timeout)
        except requests.ConnectionError as exc:
            reason = "connection refused" if "refused" in str(exc).lower() else "cannot connect"
            raise Unreachable(f"cannot reach the API at {self.url} ({reason})") from None
        except requests.Timeout:
            raise Unreachable(f"the API at {self.url} did not answer within {self.timeout:g} s") from None
        except requests.RequestException as exc:
            raise Unreachable(f"request to {self.url} failed: {exc}") from None
        if response.status_code >= 400:
            raise error_from(response.status_code, response.text)
        try:
            return response.json() if response.content else None
        except ValueError:
            raise error_from(response.status_code, response.text) from None

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None,
             params: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None) -> Any:
        return self.send(build(method, path, self.credentials, body, params, headers))

    # -- VMs ------------------------------------------------------------------------------

    def vm_create(self, specs: Mapping[str, Any], image: str | None = None, vm_name: str | None = None,
                  idempotency_key: str | None = None) -> str:
        body: dict[str, Any] = {"specs": dict(specs)}
        if image:
            body["image"] = image
        if vm_name:
            body["vm_name"] = vm_name
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return str(self.call("POST", "/vm/create", body, headers=headers)["id"])

    def vm_list(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/vm/list")["vms"])

    def vm_status(self, vm_id: str) -> dict[str, Any]:
        return dict(self.call("GET", "/vm/status", params={"id": vm_id}))

    def vm_action(self, vm_id: str, action: str) -> dict[str, Any]:
        return dict(self.call("POST", "/vm/action", {"vmid": vm_id, "action": action}))

    def vm_delete(self, vm_id: str) -> dict[str, Any]:
        return dict(self.call("POST", "/vm/delete", {"vmid": vm_id}))

    # -- hosts (administrators) -----------------------------------------------------------

    def host_list(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/host/list")["hosts"])

    # -- networks ---------------------------------------------------------------------------

    def network_create(self, network: str, **options: Any) -> Any:
        return self.call("POST", "/network/create", {"network": network, **options})

    def network_list(self) -> Any:
        return self.call("GET", "/network/list")

    def network_attach(self, vm_id: str, network: str) -> Any:
        return self.call("POST", "/network/attach", {"vmid": vm_id, "network": network})

    def network_detach(self, vm_id: str, network: str) -> Any:
        return self.call("POST", "/network/detach", {"vmid": vm_id, "network": network})

    def network_delete(self, network: str) -> Any:
        return self.call("POST", "/network/delete", {"network": network})
