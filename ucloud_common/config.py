"""Configuration: one typed, immutable ``Settings`` object, passed explicitly.

Precedence, lowest first:

1. ``config/ucloud.yaml`` in the project (the documented defaults), or the file named
   by ``UCLOUD_CONFIG``;
2. a ``.env`` file (``UCLOUD_KEY=value`` lines; the current directory's, or the one
   named by ``UCLOUD_ENV_FILE``);
3. ``UCLOUD_*`` environment variables (``UCLOUD_ETCD_ENDPOINTS`` sets ``etcd_endpoints``).

Every key is a field of :class:`Settings`; an unknown key or a value of the wrong
type raises :class:`ConfigError` with one line that names the key and where it came
from, so a daemon stops at start instead of misbehaving later. Lists are given in
the environment as comma-separated strings.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import yaml
from dotenv import dotenv_values

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_DIR / "config" / "ucloud.yaml"
ENV_PREFIX = "UCLOUD_"
# Variables that steer loading itself, not settings.
_LOADER_VARS = {"UCLOUD_CONFIG", "UCLOUD_ENV_FILE"}
# Variables of the `ucloud` CLI (ucloud_common/cli_config.py), not settings: a user who exports
# them must still be able to run the daemons and `ucloud admin`.
_LOADER_VARS |= {"UCLOUD_API_URL", "UCLOUD_REALM", "UCLOUD_NAME", "UCLOUD_SEED", "UCLOUD_CLI_CONFIG"}
# Variables of `make up` (ucloud_common/devcloud.py): where the dev cloud keeps its data, its etcd port.
_LOADER_VARS |= {"UCLOUD_DEV_DIR", "UCLOUD_DEV_ETCD_PORT"}


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message is one line for the operator."""


@dataclass(frozen=True)
class Settings:
    """Every configuration key, with its type. Defaults live in ``config/ucloud.yaml``."""

    # etcd
    etcd_endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    etcd_timeout: float = 5.0  # seconds for one etcd call
    etcd_retry_for: float = 15.0  # seconds to keep retrying an etcd call across endpoints
    # logging and metrics
    log_level: str = "INFO"
    log_json: bool = False
    # api
    api_bind: str = "127.0.0.1:8080"
    api_workers: int = 2
    api_max_body_bytes: int = 65536
    api_max_image_bytes: int = 21474836480  # POST /image/import bodies (20 GiB)
    admin_realm: str = "ucloud-admin"
    # scheduler
    scheduler_filters: tuple[str, ...] = ("host_up", "host_alive", "fits_resources")
    scheduler_weighers: tuple[str, ...] = ("spread",)
    overcommit_cpu: float = 4.0
    overcommit_ram: float = 1.0
    overcommit_hdd: float = 1.0
    overcommit_ssd: float = 1.0
    scheduler_resync_seconds: float = 30.0
    scheduler_metrics_bind: str = ""
    scheduler_batch: int = 32  # placements per etcd transaction (1-40)
    scheduler_candidates: int = 20  # feasible hosts weighed per VM; 0 = all
    # vm daemon (one per compute host)
    host_name: str = ""  # default: the machine's hostname
    host_address: str = "127.0.0.1"  # underlay address other hosts reach this one at
    host_lease_ttl: int = 10
    host_cpu: int = 0  # 0: detect from the machine
    host_ram: str = ""  # "": detect; else a size such as "16GiB"
    host_hdd: str = ""
    host_ssd: str = ""
    state_dir: str = "/var/lib/ucloud"
    image_dir: str = "/var/lib/ucloud/images"
    default_image: str = "ucloud-guest"
    qemu_binary: str = "qemu-system-x86_64"
    qemu_accel: str = "auto"  # auto | kvm | tcg
    vm_stop_timeout: float = 30.0
    vm_restart_max: int = 5  # restarts within vm_restart_window before ERROR
    vm_restart_window: float = 300.0
    notify_command: tuple[str, ...] = ()  # argv run on a VM failure, with the event as JSON on stdin
    notify_webhook: str = ""  # URL POSTed the event as JSON on a VM failure
    vm_resync_seconds: float = 30.0
    vm_metrics_bind: str = ""
    # storage
    storage_backend: str = "file"  # file | rbd
    ceph_conf: str = "/etc/ceph/ceph.conf"
    ceph_client: str = "admin"
    ceph_timeout: float = 10.0  # seconds for one Ceph connect, monitor command or OSD operation
    rbd_image_pool: str = "ucloud-images"
    rbd_hdd_pool: str = "ucloud-hdd"
    rbd_ssd_pool: str = "ucloud-ssd"
    # networks
    vxlan_underlay_device: str = ""  # "": the device that holds host_address
    vxlan_port: int = 4789
    host_netns: str = ""  # network namespace of this host's bridges/VXLANs/taps; "": the daemon's own

    @property
    def api_host_port(self) -> tuple[str, int]:
        host, _, port = self.api_bind.rpartition(":")
        return host, int(port)


_FIELDS = {f.name: f for f in fields(Settings)}


def _coerce(name: str, kind: Any, value: Any, source: str) -> Any:
    """Convert ``value`` (from YAML, or a string from the environment) to ``kind``."""
    origin = typing.get_origin(kind)
    where = f"{name} (from {source})"
    if origin is tuple:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config: {where} must be a list, got {value!r}")
        return tuple(_coerce(name, str, v, source) for v in value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
            return value.strip().lower() in {"1", "true", "yes", "on"}
        raise ConfigError(f"config: {where} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value):
            return int(value)
        raise ConfigError(f"config: {where} must be an integer, got {value!r}")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            return float(value) if isinstance(value, str) else _fail()
        except ValueError:
            raise ConfigError(f"config: {where} must be a number, got {value!r}") from None
    if kind is str:
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config: {where} must be a string, got {value!r}")
        return str(value)
    raise ConfigError(f"config: {where}: unsupported type {kind}")  # pragma: no cover


def _fail() -> float:
    raise ValueError


def _apply(values: dict[str, Any], raw: Mapping[str, Any], source: str) -> None:
    hints = typing.get_type_hints(Settings)
    for key, value in raw.items():
        name = key.lower()
        if name not in _FIELDS:
            raise ConfigError(f"config: unknown key {key!r} (from {source})")
        values[name] = _coerce(name, hints[name], value, source)


def _env_settings(env: Mapping[str, str], source: str) -> dict[str, str]:
    return {k[len(ENV_PREFIX):]: v for k, v in env.items()
            if k.startswith(ENV_PREFIX) and k not in _LOADER_VARS and v is not None}


def load_settings(env: Mapping[str, str] | None = None, *, config_file: str | Path | None = None,
                  env_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from the defaults file, a ``.env`` file, the environment and
    keyword ``overrides`` (highest; for tests and command-line flags)."""
    env = dict(os.environ if env is None else env)
    values: dict[str, Any] = {}

    path = Path(config_file or env.get("UCLOUD_CONFIG") or DEFAULT_CONFIG)
    if path.exists():
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config: {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config: {path} must hold a mapping of keys to values")
        _apply(values, data, str(path))
    elif config_file or env.get("UCLOUD_CONFIG"):
        raise ConfigError(f"config: file {path} does not exist")

    dotenv_path = Path(env_file or env.get("UCLOUD_ENV_FILE") or ".env")
    if dotenv_path.is_file():
        _apply(values, _env_settings(dotenv_values(dotenv_path), str(dotenv_path)), str(dotenv_path))

    _apply(values, _env_settings(env, "environment"), "environment")
    _apply(values, overrides, "arguments")
    settings = Settings(**values)
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    """Checks that span more than a type: endpoints parse, choices are known."""
    from .store import parse_endpoint

    if not settings.etcd_endpoints:
        raise ConfigError("config: etcd_endpoints must name at least one host:port")
    for endpoint in settings.etcd_endpoints:
        try:
            parse_endpoint(endpoint)
        except ValueError as exc:
            raise ConfigError(f"config: etcd_endpoints: {exc}") from None
    host, _, port = settings.api_bind.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"config: api_bind {settings.api_bind!r} is not host:port")
    if settings.qemu_accel not in {"auto", "kvm", "tcg"}:
        raise ConfigError(f"config: qemu_accel must be auto, kvm or tcg, got {settings.qemu_accel!r}")
    if settings.storage_backend not in {"file", "rbd"}:
        raise ConfigError(f"config: storage_backend must be file or rbd, got {settings.storage_backend!r}")
    if settings.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ConfigError(f"config: log_level {settings.log_level!r} is not a logging level")
    if settings.host_lease_ttl < 2:
        raise ConfigError("config: host_lease_ttl must be at least 2 seconds")
    if "/" in settings.host_netns or settings.host_netns in (".", ".."):
        raise ConfigError(f"config: host_netns {settings.host_netns!r} is not a network namespace name "
                          f"(as in `ip netns add <name>`)")


def replace(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings`` with ``changes``, validated like a fresh load."""
    new = dataclasses.replace(settings, **changes)
    validate(new)
    return new

