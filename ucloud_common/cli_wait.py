"""``--wait``: follow a VM through its states until it gets where the command sent it.

The decision is pure (:func:`outcome`: a goal and the status just seen -> done, failed
or keep waiting); :func:`wait_for` polls ``/vm/status`` and shows each new state
as a line under a live spinner (rich), so the user sees ``REQUESTED_NEW ->
SCHEDULED_DEPLOY -> RUNNING`` as it happens. A VM that is gone (404) is what a
delete waits for. An API that cannot answer for a moment (refused, 5xx) is retried
until the timeout: a wait of minutes should outlive an API restart. ``KILLED`` is not a failure: the vm daemon restarts it; ``ERROR``
and ``HOST_LOST`` are, and the VM's ``reason`` says why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

from rich.markup import escape

from .cli_output import console, host_of, styled_status
from .client import ApiFailure, ClientError, Unreachable

FAILED_STATES = frozenset({"ERROR", "HOST_LOST"})
GONE = None  # the status of a VM that no longer exists


class Outcome(Enum):
    DONE = "done"
    FAILED = "failed"
    WAITING = "waiting"


@dataclass(frozen=True)
class Goal:
    """Where a command sends a VM: a status to reach (``None`` = deleted)."""

    verb: str
    status: str | None

    @property
    def description(self) -> str:
        return "deleted" if self.status is GONE else self.status  # type: ignore[return-value]


GOALS = {
    "create": Goal("create", "RUNNING"),
    "start": Goal("start", "RUNNING"),
    "reboot": Goal("reboot", "RUNNING"),
    "stop": Goal("stop", "STOPPED"),
    "delete": Goal("delete", GONE),
}


def outcome(goal: Goal, status: str | None) -> Outcome:
    if status == goal.status:
        return Outcome.DONE
    if status is GONE or status in FAILED_STATES:
        return Outcome.FAILED
    return Outcome.WAITING


class WaitFailed(ClientError):
    """The VM failed, vanished or took too long; the message says which and why."""


class Transient(Exception):
    """The API could not answer this time (unreachable, or a 5xx such as etcd unavailable)."""


def _read(status_of: Callable[[str], dict[str, Any]], vm_id: str) -> dict[str, Any] | None:
    try:
        return status_of(vm_id)
    except ApiFailure as exc:
        if exc.status == 404:
            return None
        if exc.status >= 500:
            raise Transient(str(exc)) from None
        raise
    except Unreachable as exc:
        raise Transient(str(exc)) from None


def wait_for(status_of: Callable[[str], dict[str, Any]], vm_id: str, goal: Goal, timeout: float,
             interval: float = 0.5, quiet: bool = False) -> dict[str, Any] | None:
    """Poll until ``goal`` is reached (return the last record, ``None`` when deleted), or raise
    :class:`WaitFailed` on a failure state or after ``timeout`` seconds."""
    out = console(stderr=True)
    start = time.monotonic()
    last: tuple[str | None, str] | None = None
    record: dict[str, Any] | None = None
    with out.status(f"waiting for VM {vm_id} to be {goal.description}", spinner="dots") as spinner:
        while True:
            try:
                record = _read(status_of, vm_id)
            except Transient as exc:  # a long wait outlives an API restart or an etcd election
                if time.monotonic() - start > timeout:
                    raise WaitFailed(f"timed out after {timeout:g} s waiting for VM {vm_id}: {exc}") from None
                if not quiet and (None, str(exc)) != last:
                    out.print(f"{time.monotonic() - start:6.1f}s  [yellow]{escape(str(exc))}; retrying[/]")
                last = (None, str(exc))
                time.sleep(max(interval, 1.0))
                continue
            status = None if record is None else record["status"]
            reason = (record or {}).get("reason") or ""
            if (status, reason) != last:
                last = (status, reason)
                elapsed = time.monotonic() - start
                if not quiet:
                    where = f" on {host_of(record.get('hostname', ''))}" if record and record.get("hostname") else ""
                    why = f"  ({escape(reason)})" if reason else ""
                    out.print(f"{elapsed:6.1f}s  {styled_status(status) if status else 'deleted'}{where}{why}")
                spinner.update(f"{shown_plain(status)} - waiting for {goal.description}")
            result = outcome(goal, status)
            if result is Outcome.DONE:
                return record
            if result is Outcome.FAILED:
                if status is GONE:
                    raise WaitFailed(f"VM {vm_id} was deleted while waiting for {goal.description}")
                raise WaitFailed(f"VM {vm_id} is {status}: {reason or 'no reason recorded'}")
            if time.monotonic() - start > timeout:
                raise WaitFailed(f"timed out after {timeout:g} s waiting for VM {vm_id} to be "
                                 f"{goal.description} (it is {shown_plain(status)})")
            time.sleep(interval)


def shown_plain(status: str | None) -> str:
    return status or "deleted"
