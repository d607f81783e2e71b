"""What every ``ucloud`` command shares: the global flags, resolved lazily into a config and
an API client (so ``ucloud --help`` and ``ucloud admin ...`` need no credentials), and
the error handling that turns any expected failure into one line on stderr.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import click

from .cli_config import CliConfig, CliConfigError, resolve
from .client import ApiClient, ClientError


@dataclass
class CliContext:
    """The global flags (``None`` when not given) and what is built from them on demand."""

    flags: dict[str, str | None]
    config_file: str | None = None
    timeout: float = 30.0
    _config: CliConfig | None = field(default=None, repr=False)
    _client: ApiClient | None = field(default=None, repr=False)

    def config(self) -> CliConfig:
        if self._config is None:
            self._config = resolve(self.flags, self.config_file)
        return self._config

    def client(self) -> ApiClient:
        if self._client is None:
            cfg = self.config()
            self._client = ApiClient(cfg.api_url, cfg.credentials(), self.timeout)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def cli_context() -> CliContext:
    return click.get_current_context().find_object(CliContext)  # type: ignore[no-any-return]


class UcloudGroup(click.Group):
    """The top-level group: expected failures print ``ucloud: <message>`` and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ClientError, CliConfigError) as exc:
            click.echo(f"ucloud: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("ucloud: interrupted", err=True)
            sys.exit(130)
