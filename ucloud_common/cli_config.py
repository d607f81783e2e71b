"""Where the ``ucloud`` CLI finds the API URL and the user's credentials.

The config file is JSON with four string keys — the same shape ``make up`` writes
to ``var/devcloud/credentials.json``, so that file can be used as it is (or copied
to ``~/.ucloud``)::

    {"api_url": "http://127.0.0.1:8080", "realm": "dev", "name": "dev", "seed": "..."}

Each value comes from the first of, highest first:

1. a flag: ``--api``, ``--realm``, ``--name``, ``--seed``;
2. the environment: ``UCLOUD_API_URL``, ``UCLOUD_REALM``, ``UCLOUD_NAME``, ``UCLOUD_SEED``;
3. the config file: the one named by ``--config`` or ``UCLOUD_CLI_CONFIG`` (it must
   exist), else ``~/.ucloud`` if it exists, else the dev cloud's
   ``var/devcloud/credentials.json`` (under ``UCLOUD_DEV_DIR`` if set) if it exists;
4. for the URL only, ``http://127.0.0.1:8080``.

(``UCLOUD_CONFIG`` is taken: it names the daemons' YAML settings file.)
Everything here is pure except :func:`read_file` and :func:`save`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .client import Credentials, check_url
from .config import PROJECT_DIR

KEYS = ("api_url", "realm", "name", "seed")
ENV_VARS = {"api_url": "UCLOUD_API_URL", "realm": "UCLOUD_REALM", "name": "UCLOUD_NAME", "seed": "UCLOUD_SEED"}
FLAGS = {"api_url": "--api", "realm": "--realm", "name": "--name", "seed": "--seed"}
CONFIG_ENV = "UCLOUD_CLI_CONFIG"
DEFAULT_API_URL = "http://127.0.0.1:8080"
USER_FILE = ".ucloud"


class CliConfigError(Exception):
    """A config file that cannot be used, or credentials that are missing; one line."""


@dataclass(frozen=True)
class CliConfig:
    """The resolved values, and where each came from (for ``ucloud config show``)."""

    api_url: str
    realm: str = ""
    name: str = ""
    seed: str = ""
    sources: Mapping[str, str] = field(default_factory=dict)
    file: Path | None = None

    def credentials(self) -> Credentials:
        """The credentials, or CliConfigError naming what is missing and how to give it."""
        missing = [k for k in ("realm", "name", "seed") if not getattr(self, k)]
        if missing:
            how = ", ".join(f"{FLAGS[k]}/{ENV_VARS[k]}" for k in missing)
            where = f"{self.file}" if self.file else "~/.ucloud (none found)"
            raise CliConfigError(f"no {', '.join(missing)} given: set {how}, or put them in {where}")
        return Credentials(self.realm, self.name, self.seed)

    def as_file(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in KEYS}


def dev_credentials_path(env: Mapping[str, str]) -> Path:
    base = env.get("UCLOUD_DEV_DIR") or str(PROJECT_DIR / "var" / "devcloud")
    return Path(base) / "credentials.json"


def find_file(explicit: str | None, env: Mapping[str, str], home: Path) -> tuple[Path | None, bool]:
    """The config file to read and whether it was named explicitly (then it must exist)."""
    named = explicit or env.get(CONFIG_ENV)
    if named:
        return Path(named).expanduser(), True
    for candidate in (home / USER_FILE, dev_credentials_path(env)):
        if candidate.is_file():
            return candidate, False
    return None, False


def parse_file(text: str, where: str) -> dict[str, str]:
    """The values of a config file's text; CliConfigError on anything but the documented shape."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CliConfigError(f"config file {where} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CliConfigError(f"config file {where} must hold a JSON object with keys {', '.join(KEYS)}")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise CliConfigError(f"config file {where}: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    for key, value in data.items():
        if not isinstance(value, str):
            raise CliConfigError(f"config file {where}: {key} must be a string")
    return dict(data)


def read_file(path: Path, must_exist: bool) -> dict[str, str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        if must_exist:
            raise CliConfigError(f"config file {path} does not exist") from None
        return {}
    except OSError as exc:
        raise CliConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    return parse_file(text, str(path))


def merge(flags: Mapping[str, str | None], env: Mapping[str, str], file_values: Mapping[str, str],
          file: Path | None) -> CliConfig:
    """Pick each value by precedence: flag, environment, file, default (pure)."""
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    for key in KEYS:
        for source, value in ((f"flag {FLAGS[key]}", flags.get(key)), (f"env {ENV_VARS[key]}", env.get(ENV_VARS[key])),
                              (f"file {file}", file_values.get(key))):
            if value:
                values[key], sources[key] = value, source
                break
    if "api_url" not in values:
        values["api_url"], sources["api_url"] = DEFAULT_API_URL, "default"
    try:
        values["api_url"] = check_url(values["api_url"])
    except ValueError as exc:
        raise CliConfigError(f"{exc} (from {sources['api_url']})") from None
    return CliConfig(sources=sources, file=file, **values)


def resolve(flags: Mapping[str, str | None], explicit_file: str | None = None,
            env: Mapping[str, str] | None = None, home: Path | None = None) -> CliConfig:
    """The CLI's configuration from flags, the environment and the config file."""
    env = os.environ if env is None else env
    path, must_exist = find_file(explicit_file, env, home or Path.home())
    file_values = read_file(path, must_exist) if path else {}
    return merge(flags, env, file_values, path)


def save(path: Path, values: Mapping[str, str]) -> None:
    """Write a config file readable by its owner only (it holds a secret), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({k: values[k] for k in KEYS if values.get(k)}, out, indent=2)
        out.write("\n")
    os.replace(tmp, path)
