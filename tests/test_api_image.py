"""``/image/list`` and ``/image/import`` (issue 6: the admin API call beside ``ucloud image
import``): a real file streamed into the file backend of the test's image dir, through the
Flask test client and through gunicorn over HTTP; administrators only; bad input changes
nothing."""

from __future__ import annotations

import hashlib
import http.client
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from ucloud_api import create_app
from ucloud_common import accounts
from ucloud_common.config import Settings, replace
from ucloud_common.store import Store

from test_api import assert_error, headers_of
from api_harness import running_api


@pytest.fixture
def app(settings: Settings, store: Store) -> Iterator[Any]:
    application = create_app(replace(settings, api_max_image_bytes=8 << 20))
    yield application
    application.extensions["ucloud"].close()


@pytest.fixture
def admin(store: Store) -> dict[str, str]:
    _, seed = accounts.create_user(store, "ops", "root", admin=True)
    return {"realm": "ops", "name": "root", "seed": seed}


@pytest.fixture
def user(store: Store) -> dict[str, str]:
    _, seed = accounts.create_user(store, "r1", "alice")
    return {"realm": "r1", "name": "alice", "seed": seed}


@pytest.fixture
def qcow2(tmp_path: Path) -> bytes:
    path = tmp_path / "small.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return path.read_bytes()


def octets(creds: dict[str, str]) -> dict[str, str]:
    return {**headers_of(creds), "Content-Type": "application/octet-stream"}


def test_admin_imports_an_image_users_can_list_and_boot_by_name(app, settings, admin, user, qcow2) -> None:
    client = app.test_client()
    reply = client.post("/image/import?name=tiny", data=qcow2, headers=octets(admin))
    assert reply.status_code == 201, reply.json
    assert reply.json == {"name": "tiny", "size": len(qcow2)}
    stored = Path(settings.image_dir) / "tiny.qcow2"
    assert hashlib.sha256(stored.read_bytes()).digest() == hashlib.sha256(qcow2).digest()

    listed = client.get("/image/list", headers=headers_of(user))
    assert listed.status_code == 200
    assert listed.json == {"images": ["tiny"], "default": settings.default_image}
    created = client.post("/vm/create", json={**user, "image": "tiny",
                                              "specs": {"cpu": 1, "ram": "128MiB", "hdd": "1GiB", "ssd": 0}})
    assert created.status_code == 201, created.json

    again = client.post("/image/import?name=tiny", data=b"other bytes", headers=octets(admin))
    assert_error(again, 409, "name")
    assert hashlib.sha256(stored.read_bytes()).digest() == hashlib.sha256(qcow2).digest()  # kept


@pytest.mark.parametrize("query, headers, body, status, field", [
    ("?name=x", "user", b"data", 403, None),               # not an administrator
    ("?name=x", None, b"data", 401, "X-Ucloud-Name"),      # no credentials
    ("", "admin", b"data", 400, "name"),                   # no name
    ("?name=../etc", "admin", b"data", 400, "name"),       # a name that is not an image name
    ("?name=x&size=3", "admin", b"data", 400, "size"),     # unknown parameter
    ("?name=x", "admin", b"", 400, "body"),                # empty file
    ("?name=x", "admin-json", b"{}", 415, "Content-Type"),  # not an octet stream
    ("?name=x", "admin", b"\0" * ((8 << 20) + 1), 413, "body"),  # past api_max_image_bytes
])
def test_bad_imports_are_refused_and_store_nothing(app, settings, admin, user, query, headers, body, status,
                                                    field) -> None:
    sent = {"user": octets(user), "admin": octets(admin), None: {"Content-Type": "application/octet-stream"},
            "admin-json": {**headers_of(admin), "Content-Type": "application/json"}}[headers]
    assert_error(app.test_client().post(f"/image/import{query}", data=body, headers=sent), status, field)
    images = Path(settings.image_dir)
    assert not images.exists() or list(images.iterdir()) == []


def test_import_streams_over_http_past_the_json_body_limit(etcd, store, tmp_path, admin, qcow2) -> None:
    """Through gunicorn: a body far past api_max_body_bytes (64 KiB) is fine for an image,
    sent chunked (no Content-Length), and lands byte for byte."""
    image_dir = tmp_path / "images"
    with running_api(etcd, tmp_path, UCLOUD_IMAGE_DIR=str(image_dir)) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        chunks = [qcow2[i:i + 65536] for i in range(0, len(qcow2), 65536)]
        conn.request("POST", "/image/import?name=streamed", body=iter(chunks), headers=octets(admin),
                     encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 201, response.read()
    assert (image_dir / "streamed.qcow2").read_bytes() == qcow2
