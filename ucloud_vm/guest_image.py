"""The ucloud guest image, as the daemon sees it: where the build script puts it, and making
sure the storage backend has it as the default image.

``scripts/build-guest-image.sh`` builds it from Debian packages into ``build/guest/``
(cached). A fresh host whose storage lacks ``settings.default_image`` (``ucloud-guest``)
gets it imported at daemon start, so ``make up`` on a new machine can boot VMs
without a separate step. Other images are imported by an operator.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from ucloud_common.config import PROJECT_DIR, Settings
from ucloud_common.storage import StorageBackend, StorageError

log = logging.getLogger(__name__)

GUEST_IMAGE_NAME = "ucloud-guest"
BUILD_SCRIPT = PROJECT_DIR / "scripts" / "build-guest-image.sh"
BUILT_IMAGE = PROJECT_DIR / "build" / "guest" / "ucloud-guest.img"


def build(timeout: float = 900.0) -> Path:
    """Run the build script (a no-op when the image is up to date); the image's path."""
    done = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise StorageError(f"building the guest image failed: {done.stderr.strip()[-500:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def ensure_default_image(settings: Settings, backend: StorageBackend) -> None:
    """Import the built guest image as the default image if the backend lacks it."""
    image = settings.default_image
    if backend.has_image(image):
        return
    if image != GUEST_IMAGE_NAME:
        log.warning("default image %r is not in the %s store; VMs without an image will fail until "
                    "it is imported", image, backend.name)
        return
    log.info("default image %r missing from the %s store: building and importing it", image, backend.name)
    path = build()  # quick when build/guest/ holds an up-to-date image
    backend.import_image(image, str(path))
    log.info("imported %s as image %r", path, image)
