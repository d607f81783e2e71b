"""The vm daemon's pure decisions: what to do with a VM record given what runs on the host,
how a QEMU exit is described, the restart back-off, and /proc/meminfo parsing."""

from __future__ import annotations

import pytest

from ucloud_common.models import VM, Specs, VMStatus
from ucloud_vm.host import mem_total
from ucloud_vm.lifecycle import Action, Exit, Observed, Policy, decide, restart_delay
from ucloud_vm.monitor import describe_exit

HERE = "/v1/host/h1"
POLICY = Policy(stop_timeout=30.0, restart_max=3, restart_window=300.0, backoff_base=1.0, backoff_max=60.0)
NOW = 10_000.0


def vm(status: VMStatus, hostname: str = HERE) -> VM:
    return VM(id="v1", owner="r/u", specs=Specs(1, 128 << 20, 1 << 30, 0), hostname=hostname, status=status)


def act(status: VMStatus | None, observed: Observed, hostname: str = HERE) -> Action:
    record = None if status is None else vm(status, hostname)
    return decide(record, HERE, observed, NOW, POLICY).action


UP = Observed(running=True, has_local_state=True)
DOWN = Observed(running=False)


@pytest.mark.parametrize("status, observed, action", [
    (VMStatus.SCHEDULED_DEPLOY, DOWN, Action.START),
    (VMStatus.SCHEDULED_DEPLOY, UP, Action.MARK_RUNNING),  # started, but the CAS to RUNNING was lost
    (VMStatus.REQUESTED_START, DOWN, Action.START),
    (VMStatus.REQUESTED_REBOOT, UP, Action.RESET),
    (VMStatus.REQUESTED_REBOOT, DOWN, Action.START),
    (VMStatus.RUNNING, UP, Action.NOTHING),
    (VMStatus.RUNNING, DOWN, Action.MARK_KILLED),  # found dead after a daemon restart
    (VMStatus.REQUESTED_STOP, UP, Action.POWERDOWN),
    (VMStatus.REQUESTED_STOP, DOWN, Action.MARK_STOPPED),
    (VMStatus.STOPPED, UP, Action.HARD_STOP),  # must not run
    (VMStatus.STOPPED, DOWN, Action.NOTHING),
    (VMStatus.REQUESTED_DELETE, UP, Action.DELETE),
    (VMStatus.REQUESTED_DELETE, DOWN, Action.DELETE),
    (VMStatus.KILLED, DOWN, Action.START),
    (VMStatus.KILLED, UP, Action.MARK_RUNNING),
    (VMStatus.HOST_LOST, DOWN, Action.START),
    (VMStatus.ERROR, DOWN, Action.NOTHING),
    (VMStatus.ERROR, UP, Action.NOTHING),
])
def test_each_status_on_this_host(status: VMStatus, observed: Observed, action: Action) -> None:
    assert act(status, observed) is action


def test_a_vm_that_is_not_ours_is_cleaned_up_only_if_something_is_here() -> None:
    assert act(None, UP) is Action.CLEANUP
    assert act(None, Observed(running=False, has_local_state=True)) is Action.CLEANUP
    assert act(None, DOWN) is Action.NOTHING
    assert act(VMStatus.RUNNING, UP, hostname="/v1/host/other") is Action.CLEANUP
    assert act(VMStatus.RUNNING, DOWN, hostname="/v1/host/other") is Action.NOTHING
    decision = decide(vm(VMStatus.RUNNING, "/v1/host/other"), HERE, UP, NOW, POLICY)
    assert "/v1/host/other" in decision.message


def test_a_guest_that_powered_itself_off_is_stopped_not_killed() -> None:
    off = Observed(running=False, exit=Exit("guest powered itself off", guest_poweroff=True))
    assert act(VMStatus.RUNNING, off) is Action.MARK_STOPPED
    killed = Observed(running=False, exit=Exit("QEMU killed by signal 9 (SIGKILL)"))
    decision = decide(vm(VMStatus.RUNNING), HERE, killed, NOW, POLICY)
    assert decision.action is Action.MARK_KILLED and "signal 9" in decision.message


def test_stop_waits_for_the_guest_then_stops_hard() -> None:
    waiting = decide(vm(VMStatus.REQUESTED_STOP), HERE, Observed(True, powerdown_sent=NOW - 10), NOW, POLICY)
    assert waiting.action is Action.WAIT and waiting.delay == pytest.approx(20.0)
    late = decide(vm(VMStatus.REQUESTED_STOP), HERE, Observed(True, powerdown_sent=NOW - 30), NOW, POLICY)
    assert late.action is Action.HARD_STOP and "30s" in late.message


def test_restarts_back_off_and_a_crash_loop_gives_up() -> None:
    killed = vm(VMStatus.KILLED)
    first = decide(killed, HERE, Observed(False), NOW, POLICY)
    assert first.action is Action.START and first.extra == {"restart": True}
    # one restart 0.2 s ago: wait out the rest of 1 s
    second = decide(killed, HERE, Observed(False, restarts=(NOW - 0.2,)), NOW, POLICY)
    assert second.action is Action.WAIT and second.delay == pytest.approx(0.8)
    # two restarts: the back-off doubles, counted from the last one
    assert restart_delay((NOW - 5, NOW - 0.5), NOW, POLICY) == pytest.approx(1.5)
    # restarts older than the window do not count
    assert decide(killed, HERE, Observed(False, restarts=(NOW - 400,) * 5), NOW, POLICY).action is Action.START
    loop = decide(killed, HERE, Observed(False, restarts=(NOW - 50, NOW - 40, NOW - 30)), NOW, POLICY)
    assert loop.action is Action.GIVE_UP and "crash loop" in loop.message


def test_restart_delay_is_capped() -> None:
    policy = Policy(restart_max=100, backoff_base=1.0, backoff_max=4.0)
    assert restart_delay(tuple(NOW - 0.01 * i for i in range(20)), NOW, policy) == pytest.approx(4.0, abs=0.01)


def test_describe_exit() -> None:
    off = describe_exit([{"event": "SHUTDOWN", "data": {"guest": True, "reason": "guest-shutdown"}}],
                        "exit status 0", True, "")
    assert off.guest_poweroff
    panic = describe_exit([{"event": "GUEST_PANICKED"}], "exit status 1", True, "")
    assert "panic" in panic.cause and not panic.guest_poweroff
    assert describe_exit([], "killed by signal 9 (SIGKILL)", True, "").cause == "QEMU killed by signal 9 (SIGKILL)"
    crashed = describe_exit([], "exit status 1", True, "qemu: could not open disk")
    assert "could not open disk" in crashed.cause
    adopted = describe_exit([], None, False, "last words")
    assert "adopted" in adopted.cause and "last words" in adopted.cause


def test_mem_total() -> None:
    assert mem_total("MemFree:  10 kB\nMemTotal:   2048 kB\n") == 2048 * 1024
    with pytest.raises(ValueError):
        mem_total("MemFree: 1 kB\n")
