"""``/openapi.json`` (OpenAPI 3.1) built from the pydantic models, and ``/docs`` rendered from it.

The spec is data: one :class:`Operation` per endpoint names its request model,
parameters and responses, and the JSON Schemas come from pydantic, so the spec
cannot drift from what the handlers validate. ``/docs`` is one small HTML page
generated from the same spec (no CDN is needed or reachable): every operation with
its parameters, schemas and an example, and a form that sends the request with
``fetch`` and shows the response.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from . import schemas as s

_REF = "#/components/schemas/{model}"
ERROR_CODES = {400: "invalid request (names the field)", 401: "missing or wrong credentials",
               403: "not allowed", 404: "no such VM or network (or not yours)", 405: "method not allowed",
               409: "does not fit the current state", 413: "body too large", 415: "body is not JSON",
               500: "internal error", 503: "etcd unavailable"}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    description: str
    ok: tuple[int, type[BaseModel] | None, str]  # status, model, description
    body: type[BaseModel] | None = None
    body_required: bool = True
    query: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {schema, required, description}
    raw_body: str | None = None  # a non-JSON body's media type (the image file of /image/import)
    auth: bool = True
    idempotency: bool = False
    errors: tuple[int, ...] = (400, 401, 404, 405, 413, 415, 500, 503)
    tag: str = "vm"


OPERATIONS: tuple[Operation, ...] = (
    Operation("post", "/vm/create", "Create a VM",
              "The seed's body. The VM is written as REQUESTED_NEW for the scheduler. With an "
              "Idempotency-Key header a retry returns the same VM (header Idempotent-Replayed: true).",
              (201, s.Created, "created: the VM's id"), s.CreateVM, idempotency=True,
              errors=(400, 401, 405, 409, 413, 415, 500, 503)),
    Operation("post", "/vm/delete", "Delete a VM",
              "A VM never placed on a host is removed at once (status DELETED); otherwise its host "
              "stops and removes it (status REQUESTED_DELETE).",
              (202, s.Accepted, "accepted"), s.DeleteVM),
    Operation("get", "/vm/status", "A VM's status",
              "Either the seed's JSON body {id, name, realm, seed} sent with GET, or ?id= with the "
              "credentials in the X-Ucloud-Name, X-Ucloud-Realm and X-Ucloud-Seed headers.",
              (200, s.VMOut, "the VM"), s.StatusBody, body_required=False,
              query={"id": {"schema": {"type": "string", "minLength": 1, "maxLength": 128}, "required": False,
                            "description": "the VM's id (when no JSON body is sent)"}}),
    Operation("get", "/vm/list", "Your VMs",
              "Credentials in the X-Ucloud-* headers, or in a JSON body.",
              (200, s.VMList, "your VMs, oldest first"), s.Credentials, body_required=False,
              errors=(400, 401, 405, 413, 415, 500, 503)),
    Operation("post", "/vm/action", "Start, stop or reboot a VM",
              "Sets REQUESTED_START / REQUESTED_STOP / REQUESTED_REBOOT for the VM's host. start needs "
              "STOPPED or ERROR; stop needs RUNNING, KILLED, REQUESTED_REBOOT or ERROR; reboot needs RUNNING; "
              "else 409.",
              (202, s.Accepted, "accepted"), s.VMAction, errors=(400, 401, 404, 405, 409, 413, 415, 500, 503)),
    Operation("post", "/network/create", "Create a network",
              "A network (a VXLAN segment) owned by you, with a VXLAN id unique in the cloud and optionally "
              "an IPv6 prefix and/or IPv4 subnet. Its label must be unique among your networks (else 409).",
              (201, s.NetworkCreated, "created"), s.CreateNetwork, tag="network",
              errors=(400, 401, 405, 409, 413, 415, 500, 503)),
    Operation("get", "/network/list", "Your networks",
              "Each with its VXLAN id, prefixes and the ids of your VMs attached to it.",
              (200, s.NetworkList, "your networks, oldest first"), s.Credentials, body_required=False,
              tag="network", errors=(400, 401, 405, 413, 415, 500, 503)),
    Operation("post", "/network/attach", "Attach a VM to a network",
              "Your VM gets a NIC on your network, with a MAC unique in the cloud; its host hot-plugs it "
              "when the VM runs, else it is there at the next start. 409 if already attached.",
              (202, s.NicChange, "accepted: the new NIC"), s.NetworkVM, tag="network",
              errors=(400, 401, 404, 405, 409, 413, 415, 500, 503)),
    Operation("post", "/network/detach", "Detach a VM from a network",
              "Removes the VM's NIC on that network (hot-unplugged by its host) and frees its MAC.",
              (202, s.NicChange, "accepted: the NIC removed"), s.NetworkVM, tag="network",
              errors=(400, 401, 404, 405, 409, 413, 415, 500, 503)),
    Operation("post", "/network/delete", "Delete a network",
              "Removes the network and frees its VXLAN id; 409 while any VM is attached to it.",
              (202, s.NetworkDeleted, "deleted (hosts remove its bridges)"), s.DeleteNetwork, tag="network",
              errors=(400, 401, 404, 405, 409, 413, 415, 500, 503)),
    Operation("get", "/image/list", "Images",
              "The images a VM can boot (`image` in /vm/create) and the default one.",
              (200, s.ImageList, "the images"), s.Credentials, body_required=False, tag="image",
              errors=(400, 401, 405, 413, 415, 500, 503)),
    Operation("post", "/image/import", "Import an image (administrators only)",
              "The body is the image file (raw or qcow2, Content-Type: application/octet-stream, at most "
              "api_max_image_bytes), credentials in the X-Ucloud-* headers; stored in the configured "
              "store (RBD or this host's image_dir). 409 if the name exists.",
              (201, s.ImageImported, "imported"), raw_body="application/octet-stream", tag="image",
              query={"name": {"schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"},
                              "required": True, "description": "the image's name"}},
              errors=(400, 401, 403, 405, 409, 413, 415, 500, 503)),
    Operation("get", "/host/list", "Hosts (administrators only)",
              "Capacity, what the scheduler promised, what is free (with overcommit), status and liveness "
              "of every host. For users of the admin realm or with the admin flag.",
              (200, s.HostList, "every host"), s.Credentials, body_required=False,
              errors=(400, 401, 403, 405, 413, 415, 500, 503), tag="host"),
    Operation("get", "/healthz", "Health", "200 when etcd answers, else 503.",
              (200, s.Health, "healthy"), auth=False, errors=(503,), tag="meta"),
    Operation("get", "/metrics", "Prometheus metrics",
              "Text exposition format: requests by endpoint/method/status, latency histogram, etcd errors "
              "(summed over all gunicorn workers), and VMs by status / networks read from etcd when scraped.",
              (200, None, "metrics in the Prometheus text format"), auth=False, errors=(), tag="meta"),
)

_HEADERS = (
    (s.HEADER_NAME, "user name (instead of `name` in the body)"),
    (s.HEADER_REALM, "user realm (instead of `realm` in the body)"),
    (s.HEADER_SEED, "user secret (instead of `seed` in the body)"),
)


def _model_schemas() -> tuple[dict[Any, Any], dict[str, Any]]:
    models: list[type[BaseModel]] = [s.Error]
    for op in OPERATIONS:
        models += [m for m in (op.body, op.ok[1]) if m is not None]
    unique = list(dict.fromkeys(models))
    keys = [(m, "validation") for m in unique]
    refs, top = models_json_schema(keys, ref_template=_REF)
    return {m: refs[(m, "validation")] for m in unique}, top.get("$defs", {})


def _operation(op: Operation, refs: dict[Any, Any]) -> dict[str, Any]:
    status, model, what = op.ok
    body: dict[str, Any] = {"description": what}
    if model is not None:
        body["content"] = {"application/json": {"schema": refs[model]}}
    responses: dict[str, Any] = {str(status): body}
    for code in op.errors:
        responses[str(code)] = {"description": ERROR_CODES[code],
                                "content": {"application/json": {"schema": refs[s.Error]}}}
    out: dict[str, Any] = {"summary": op.summary, "description": op.description, "tags": [op.tag],
                           "operationId": op.method + op.path.replace("/", "_"), "responses": responses}
    parameters = [{"name": name, "in": "query", **spec} for name, spec in op.query.items()]
    if op.auth:
        parameters += [{"name": name, "in": "header", "required": False, "description": text,
                        "schema": {"type": "string"}} for name, text in _HEADERS]
    if op.idempotency:
        parameters.append({"name": s.HEADER_IDEMPOTENCY, "in": "header", "required": False,
                           "description": "a retry with the same key returns the same VM (kept 24 h)",
                           "schema": {"type": "string", "minLength": 1, "maxLength": 255}})
    if parameters:
        out["parameters"] = parameters
    if op.body is not None:
        out["requestBody"] = {"required": op.body_required,
                              "content": {"application/json": {"schema": refs[op.body]}}}
    if op.raw_body is not None:
        out["requestBody"] = {"required": True,
                              "content": {op.raw_body: {"schema": {"type": "string", "format": "binary"}}}}
    return out


def build_spec() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every endpoint."""
    refs, components = _model_schemas()
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "ucloud API", "version": "1",
                 "description": "Create, inspect and delete VMs and their networks. Credentials (name, realm, seed) travel in the "
                                "JSON body, as in the seed, or in the X-Ucloud-Name/-Realm/-Seed headers. "
                                "Every error has one shape: {\"error\": {status, code, field, message}}."},
        "paths": paths,
        "components": {"schemas": components},
    }


def _example(op: Operation) -> str:
    if op.body is None:
        return ""
    examples = (op.body.model_json_schema().get("examples") or [{}])
    return json.dumps(examples[0], indent=2) if op.body_required else ""


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>ucloud API</title>
<style>body{font:15px/1.4 system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em}
section{border:1px solid #ccc;border-radius:6px;padding:0 1em 1em;margin:1em 0}
code,pre,textarea,input{font:13px ui-monospace,monospace}pre{background:#f5f5f5;padding:.5em;overflow:auto}
textarea{width:100%;height:9em}input{width:22em}.m{font-weight:bold;text-transform:uppercase}
details{margin:.3em 0}</style></head><body>
<h1>ucloud API</h1><p>{intro} The machine-readable spec is <a href="/openapi.json">/openapi.json</a>.</p>
<p>Credentials for the forms below (sent as X-Ucloud-* headers when the body does not carry them):
realm <input id="realm" style="width:10em"> name <input id="name" style="width:10em">
seed <input id="seed" type="password" style="width:14em"></p>
{sections}
<script>
async function send(id, method, path) {
  const f = document.getElementById(id), out = f.querySelector("pre.out");
  const headers = {"X-Ucloud-Realm": realm.value, "X-Ucloud-Name": name.value, "X-Ucloud-Seed": seed.value};
  const query = f.querySelector("input.q"), body = f.querySelector("textarea").value.trim();
  let url = path + (query && query.value ? "?id=" + encodeURIComponent(query.value) : "");
  const init = {method: method.toUpperCase(), headers};
  if (body && method !== "get") { init.body = body; headers["Content-Type"] = "application/json"; }
  try { const r = await fetch(url, init);
        out.textContent = r.status + " " + r.statusText + "\\n" + await r.text(); }
  catch (e) { out.textContent = String(e); }
}
</script></body></html>"""


def docs_html(spec: dict[str, Any]) -> str:
    """One page: each operation with its parameters, schemas and a try-it form."""
    esc = html.escape
    sections = []
    for i, op in enumerate(OPERATIONS):
        entry = spec["paths"][op.path][op.method]
        params = "".join(f"<li><code>{esc(p['name'])}</code> ({p['in']}) — {esc(p.get('description', ''))}</li>"
                         for p in entry.get("parameters", []))
        body = entry.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        body_html = f"<details><summary>request body</summary><pre>{esc(json.dumps(body, indent=2))}</pre></details>" \
            if body else ""
        responses = "".join(f"<li><code>{code}</code> {esc(r['description'])}</li>"
                            for code, r in entry["responses"].items())
        query = '<p>?id= <input class="q"></p>' if "id" in op.query else ""
        textarea = f"<textarea>{esc(_example(op))}</textarea>" if op.method != "get" else \
            '<textarea style="display:none"></textarea>'
        sections.append(
            f'<section id="op{i}"><h2><span class="m">{op.method}</span> <code>{esc(op.path)}</code> — '
            f"{esc(op.summary)}</h2><p>{esc(op.description)}</p><ul>{params}</ul>{body_html}"
            f"<details><summary>responses</summary><ul>{responses}</ul></details>{query}{textarea}"
            f'<p><button onclick="send(\'op{i}\', \'{op.method}\', \'{op.path}\')">Send</button></p>'
            f'<pre class="out"></pre></section>')
    return _PAGE.replace("{intro}", esc(spec["info"]["description"])).replace("{sections}", "\n".join(sections))
