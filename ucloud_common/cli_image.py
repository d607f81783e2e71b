"""``ucloud image ...``: put boot images into the configured store, by an operator, on a host.

``ucloud image import NAME FILE`` stores a raw or qcow2 file as image ``NAME`` in the
backend the settings name (``storage_backend``): with ``rbd`` an RBD image in
``rbd_image_pool`` with its protected snapshot (qcow2 converted by ``qemu-img``), with
``file`` a copy in ``image_dir`` (of every host that should run it: file images are
local). A progress bar (on stderr) shows the bytes written. ``ucloud image list`` prints the names.
An existing image is never replaced: importing a name that exists fails.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from .daemon import load_or_exit
from .storage import StorageBackend, StorageError, open_backend

NAME = "ucloud"


def _fail(message: str) -> "SystemExit":
    click.echo(f"{NAME}: {message}", err=True)
    return SystemExit(1)


def _close(backend: StorageBackend) -> None:
    close = getattr(backend, "close", None)
    if close is not None:
        close()


@click.group()
def image() -> None:
    """Boot images in the configured store (file or Ceph RBD)."""


@image.command("import")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--quiet", "-q", is_flag=True, help="no progress bar")
def import_command(name: str, file: Path, quiet: bool) -> None:
    """Import FILE (raw or qcow2) as image NAME."""
    settings = load_or_exit(NAME)
    backend = open_backend(settings)
    try:
        if backend.has_image(name):
            raise _fail(f"image {name!r} already exists in the {backend.name} store")
        with Progress(TextColumn("importing {task.description}"), BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), TimeRemainingColumn(), disable=quiet,
                      console=Console(stderr=True)) as bar:  # stdout stays for the result
            task = bar.add_task(name, total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total or None)

            backend.import_image(name, str(file), progress=progress)
    except StorageError as exc:
        raise _fail(str(exc)) from None
    finally:
        _close(backend)
    click.echo(f"image {name} imported into the {backend.name} store")


@image.command("list")
def list_command() -> None:
    """Print the name of every image in the store, one a line."""
    settings = load_or_exit(NAME)
    backend = open_backend(settings)
    try:
        names = backend.images()  # type: ignore[attr-defined]  # both backends have it
    except StorageError as exc:
        raise _fail(str(exc)) from None
    finally:
        _close(backend)
    for image_name in names:
        click.echo(image_name)
