"""The vm daemon's decision: given a VM record and what is observed on this host, what to do.

Pure functions over plain data (no etcd, no processes), so every transition of the
life cycle (DESIGN.md §2) can be read in one place and unit-tested:

    SCHEDULED_DEPLOY / REQUESTED_START -> start QEMU -> RUNNING
    REQUESTED_REBOOT                    -> system_reset (or start) -> RUNNING
    REQUESTED_STOP                      -> ACPI powerdown, hard stop after the timeout -> STOPPED
    REQUESTED_DELETE                    -> hard stop, delete disks, remove the record
    RUNNING, but QEMU gone              -> KILLED (cause in the log), or STOPPED if the guest powered off
    KILLED                              -> restart after a back-off -> RUNNING; crash loop -> ERROR
    HOST_LOST (this host is back)       -> restart -> RUNNING
    record gone / on another host       -> stop it here, clean up

The daemon applies the decision (a compare-and-swap on the record for every
transition) and calls ``decide`` again when anything changes, so a decision only ever
needs the *current* record and observation: it is level-triggered, and running it
twice changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ucloud_common.models import VM, VMStatus


class Action(str, Enum):
    NOTHING = "nothing"
    START = "start"  # create disks if needed, start QEMU, then record RUNNING
    MARK_RUNNING = "mark_running"  # QEMU is running already: record RUNNING
    RESET = "reset"  # QMP system_reset, then record RUNNING
    POWERDOWN = "powerdown"  # QMP system_powerdown (the guest's ACPI power button)
    HARD_STOP = "hard_stop"  # SIGKILL the QEMU (verified by its cmdline)
    MARK_STOPPED = "mark_stopped"
    MARK_KILLED = "mark_killed"  # QEMU died: record KILLED with the cause, notify
    GIVE_UP = "give_up"  # crash loop: record ERROR with the reason, notify
    WAIT = "wait"  # nothing yet; look again after ``delay``
    DELETE = "delete"  # hard stop, delete the disks, remove the record
    CLEANUP = "cleanup"  # not ours (any more): stop it here and remove what is local


@dataclass(frozen=True)
class Exit:
    """How a VM's QEMU ended, as the watcher saw it."""

    cause: str  # in words, for the VM's log: "QEMU killed by signal 9 (SIGKILL)"
    guest_poweroff: bool = False  # the guest shut itself down (SHUTDOWN event, guest=true)
    time: float = 0.0  # epoch seconds


@dataclass(frozen=True)
class Observed:
    """What this host knows about one VM right now."""

    running: bool  # a verified QEMU of this VM is alive here
    exit: Exit | None = None  # how it last ended, if it ended since it was started here
    powerdown_sent: float | None = None  # epoch seconds of the ACPI powerdown we sent, if any
    restarts: tuple[float, ...] = ()  # epoch seconds of its recent automatic restarts here
    has_local_state: bool = False  # a runtime dir (or local disks) exists here


@dataclass(frozen=True)
class Policy:
    """The knobs of the decision (from settings)."""

    stop_timeout: float = 30.0  # vm_stop_timeout
    restart_max: int = 5  # vm_restart_max
    restart_window: float = 300.0  # vm_restart_window
    backoff_base: float = 1.0  # seconds before the 2nd restart in a window; doubles after
    backoff_max: float = 60.0


@dataclass(frozen=True)
class Decision:
    action: Action
    message: str = ""  # for the VM's event log / reason
    delay: float | None = None  # look at the VM again after this many seconds
    extra: dict = field(default_factory=dict)


SHOULD_RUN = {VMStatus.SCHEDULED_DEPLOY, VMStatus.REQUESTED_START, VMStatus.REQUESTED_REBOOT,
              VMStatus.RUNNING, VMStatus.KILLED, VMStatus.HOST_LOST}


def recent_restarts(restarts: tuple[float, ...], now: float, window: float) -> tuple[float, ...]:
    return tuple(t for t in restarts if now - t < window)


def restart_delay(restarts: tuple[float, ...], now: float, policy: Policy) -> float:
    """Seconds to wait before the next automatic restart: none for the first one in the
    window, then ``backoff_base`` doubling per restart, counted from the last restart."""
    recent = recent_restarts(restarts, now, policy.restart_window)
    if not recent:
        return 0.0
    backoff = min(policy.backoff_base * 2 ** (len(recent) - 1), policy.backoff_max)
    return max(0.0, max(recent) + backoff - now)


def decide(vm: VM | None, host_key: str, observed: Observed, now: float, policy: Policy) -> Decision:
    """What to do about one VM on the host whose key is ``host_key`` (``/v1/host/<name>``)."""
    if vm is None:
        if observed.running or observed.has_local_state:
            return Decision(Action.CLEANUP, "VM record is gone")
        return Decision(Action.NOTHING)
    if vm.hostname != host_key:
        if observed.running or observed.has_local_state:
            where = f"placed on {vm.hostname}" if vm.hostname else "not placed on any host"
            return Decision(Action.CLEANUP, f"VM is {where}, not here")
        return Decision(Action.NOTHING)

    status = vm.status
    running = observed.running
    if status is VMStatus.REQUESTED_DELETE:
        return Decision(Action.DELETE, "deleted")

    if status is VMStatus.REQUESTED_STOP:
        if not running:
            return Decision(Action.MARK_STOPPED, "stopped")
        if observed.powerdown_sent is None:
            return Decision(Action.POWERDOWN, "ACPI power-off sent", delay=policy.stop_timeout)
        waited = now - observed.powerdown_sent
        if waited >= policy.stop_timeout:
            return Decision(Action.HARD_STOP, f"guest did not power off within {policy.stop_timeout:g}s; "
                                              f"stopped hard")
        return Decision(Action.WAIT, delay=policy.stop_timeout - waited)

    if status in (VMStatus.STOPPED, VMStatus.REQUESTED_NEW):
        if running:
            return Decision(Action.HARD_STOP, f"QEMU running while the VM is {status.value}; stopped")
        return Decision(Action.NOTHING)

    if status is VMStatus.ERROR:
        return Decision(Action.NOTHING)  # left for a person (or a new request) to look at

    # What remains should run here.
    if status is VMStatus.RUNNING:
        if running:
            return Decision(Action.NOTHING)
        exit_ = observed.exit
        if exit_ is not None and exit_.guest_poweroff:
            return Decision(Action.MARK_STOPPED, "guest powered itself off")
        cause = exit_.cause if exit_ is not None else "QEMU is not running (found so after a daemon restart)"
        return Decision(Action.MARK_KILLED, cause)

    if status is VMStatus.REQUESTED_REBOOT:
        return Decision(Action.RESET, "rebooted") if running else Decision(Action.START, "started (reboot)")

    if status in (VMStatus.SCHEDULED_DEPLOY, VMStatus.REQUESTED_START):
        if running:
            return Decision(Action.MARK_RUNNING, "running")
        return Decision(Action.START, "deployed" if status is VMStatus.SCHEDULED_DEPLOY else "started")

    if status in (VMStatus.KILLED, VMStatus.HOST_LOST):
        if running:
            return Decision(Action.MARK_RUNNING, "running")
        if status is VMStatus.HOST_LOST:
            return Decision(Action.START, "host is back; restarted")
        recent = recent_restarts(observed.restarts, now, policy.restart_window)
        if len(recent) >= policy.restart_max:
            return Decision(Action.GIVE_UP, f"crash loop: QEMU died {len(recent) + 1} times within "
                                            f"{policy.restart_window:g}s ({len(recent)} restarts); "
                                            f"not restarting")
        delay = restart_delay(observed.restarts, now, policy)
        if delay > 0:
            return Decision(Action.WAIT, delay=delay)
        return Decision(Action.START, f"restarted (restart {len(recent) + 1} within "
                                      f"{policy.restart_window:g}s)", extra={"restart": True})

    return Decision(Action.NOTHING)  # pragma: no cover - every status is handled above
