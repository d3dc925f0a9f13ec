"""The circuit breaker (THREAT_MODEL F-10, ADR 0016): the state machine on a clock we
drive, then a daemon of two mock backends spoken to over its real sockets."""

from __future__ import annotations

import json

import pytest

from daemon_harness import dial, line, read_json, read_until_terminal, req, roundtrip
from inferd.cli import admin_cmds
from inferd.client import AdminClient
from inferd.daemon.pipeline.breaker import Breaker, BreakerPolicy, CircuitState, StateChange

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(failures: int = 3, cooldown: float = 10.0, max_cooldown: float = 35.0):
    clock = Clock()
    b = Breaker("remote", BreakerPolicy(failures=failures, cooldown=cooldown, max_cooldown=max_cooldown), clock)
    changes: list[StateChange] = []
    b.listener = changes.append
    return b, clock, changes


def fail(b: Breaker, reason: str = "connection refused") -> None:
    attempt = b.admit()
    assert attempt is not None
    attempt.failed(reason)


def succeed(b: Breaker) -> None:
    attempt = b.admit()
    assert attempt is not None
    attempt.succeeded()


# ---- the state machine -------------------------------------------------------------

def test_consecutive_failures_open_it_and_a_success_in_between_resets_the_count():
    b, _, changes = breaker(failures=3)
    fail(b), fail(b), succeed(b), fail(b), fail(b)
    assert b.state is CircuitState.CLOSED and b.failures == 2 and changes == []
    fail(b, "HTTP 500")
    assert b.state is CircuitState.OPEN
    assert changes == [StateChange("remote", CircuitState.OPEN, "HTTP 500", 3, 10.0)]


def test_open_refuses_until_the_cooldown_then_lets_exactly_one_trial_through():
    b, clock, changes = breaker(failures=1, cooldown=10.0)
    fail(b)
    assert b.admit() is None and not b.would_admit()
    assert "open after 1 consecutive failure (connection refused); next trial in 10 s" in b.refusal()
    clock.now += 9.9
    assert b.admit() is None
    clock.now += 0.1
    assert b.would_admit()
    trial = b.admit()
    assert trial is not None and trial.trial and b.state is CircuitState.HALF_OPEN
    assert b.admit() is None and not b.would_admit()  # one trial at a time
    assert "trial request is still in flight" in b.refusal()
    trial.succeeded()
    assert b.state is CircuitState.CLOSED and b.failures == 0 and not b.trial_in_flight
    assert [c.state for c in changes] == ["open", "half_open", "closed"]
    assert changes[-1].reason == "trial request succeeded"


def test_a_failed_trial_reopens_for_a_doubled_but_bounded_cooldown():
    b, clock, changes = breaker(failures=1, cooldown=10.0, max_cooldown=35.0)
    fail(b)
    for expected in (20.0, 35.0, 35.0):
        clock.now += 100
        trial = b.admit()
        assert trial is not None
        trial.failed("still down")
        assert b.state is CircuitState.OPEN and changes[-1].retry_in == expected
        clock.now += expected - 0.01
        assert b.admit() is None
    clock.now += 0.01
    b.admit().succeeded()
    fail(b)  # closed again: the cool-down starts over from its base
    assert changes[-1].retry_in == 10.0


def test_a_trial_without_a_verdict_hands_the_slot_to_the_next_request():
    b, clock, _ = breaker(failures=1)
    fail(b)
    clock.now += 10
    trial = b.admit()
    trial.release()  # e.g. its client hung up, or it asked for something invalid
    assert b.state is CircuitState.HALF_OPEN and not b.trial_in_flight
    again = b.admit()
    assert again is not None and again.trial
    again.release()
    assert not b.trial_in_flight


def test_verdicts_from_before_a_state_change_are_ignored():
    b, clock, changes = breaker(failures=2)
    early = b.admit()  # in flight while the circuit opens
    fail(b), fail(b)
    assert b.state is CircuitState.OPEN
    early.succeeded()  # a stream that began before the outage must not close it
    assert b.state is CircuitState.OPEN
    clock.now += 10
    trial = b.admit()
    assert b.admit() is None
    trial.failed("x")
    trial.succeeded()  # settled once; the second verdict is a no-op
    assert b.state is CircuitState.OPEN and [c.state for c in changes] == ["open", "half_open", "open"]


def test_settling_twice_and_releasing_after_a_verdict_change_nothing():
    b, _, _ = breaker(failures=2)
    a = b.admit()
    a.failed("x")
    a.failed("x")
    a.release()
    assert b.failures == 1


# ---- a daemon with two mocks ------------------------------------------------------

def two_mocks(sockdir, first: dict, *, failures: int = 2, cooldown: float = 300.0) -> str:
    path = sockdir / "config.json"
    path.write_text(json.dumps({
        "breaker": {"failures": failures, "cooldown_secs": cooldown},
        "backends": [
            {"kind": "mock", "name": "flaky", "tokens": ["from-", "flaky"], **first},
            {"kind": "mock", "name": "steady", "tokens": ["from-", "steady"]},
        ],
    }))
    return str(path)


async def admin_until(reader, status: str, timeout: float = 10.0) -> dict:
    while True:
        frame = await read_json(reader, timeout)
        assert frame is not None, "admin stream ended"
        if frame["status"] == status:
            return frame


async def test_pre_stream_failures_fail_over_then_open_the_circuit(daemon_factory, sockdir, capsys):
    d = await daemon_factory(config=two_mocks(sockdir, {"pre_stream_error": "Unavailable"}))
    admin_r, admin_w = await dial(d.admin)
    assert [(await read_json(admin_r))["status"] for _ in range(3)] == ["capabilities", "capabilities", "ready"]
    flaky = d.server.router.entries[0]
    for i in range(2):
        frames = await roundtrip(d.infer, req(f"r{i}"))
        assert frames[-1]["type"] == "done" and frames[-1]["content"] == "from-steady"
        assert frames[-1]["backend"] == "steady"  # the config entry's name (ADR 0016)
    event = await admin_until(admin_r, "backend_state")
    assert event == {"id": "admin", "type": "status", "status": "backend_state", "backend": "flaky",
                     "state": "open", "reason": "mock", "failures": 2,
                     "retry_in_ms": 300000}
    before = flaky.admission.outstanding
    frames = await roundtrip(d.infer, req("r3"))
    assert frames[-1]["backend"] == "steady" and flaky.breaker.state is CircuitState.OPEN
    assert flaky.admission.outstanding == before == 0  # skipped: not even admitted there
    # A late subscriber learns the state from the replay, and the snapshot is still `ready`.
    late_r, late_w = await dial(d.admin)
    caps = [await read_json(late_r) for _ in range(3)]
    assert [c["status"] for c in caps] == ["capabilities", "capabilities", "ready"]
    assert caps[0]["backend"] == "flaky" and caps[0]["state"] == "open"
    assert caps[0]["reason"] == "mock"
    assert "state" not in caps[1]
    for w in (admin_w, late_w):
        w.close()
    # The public client: the snapshot is still `ready`; the state rides on the capabilities.
    async with await AdminClient.dial_admin(d.admin) as admin:
        snap = await admin.snapshot()
    assert snap.ready and [(c.backend, c.state, c.reason) for c in snap.capabilities] == [
        ("flaky", "open", "mock"), ("steady", None, None)]
    # `inferd status`: the same frames on stdout, exit 0 (the daemon serves), a note on stderr.
    capsys.readouterr()
    assert await admin_cmds.status(d.admin) == 0
    out, err = capsys.readouterr()
    printed = [json.loads(x) for x in out.splitlines()]
    assert [(p["status"], p.get("state")) for p in printed] == [("capabilities", "open"), ("capabilities", None),
                                                                 ("ready", None)]
    assert err == ('note: backend flaky is open: mock; requests go to the next backend that can serve them\n')


async def test_the_clients_own_faults_never_open_a_circuit(daemon_factory, sockdir):
    """F-10: a client sending requests the backend refuses cannot switch it off."""
    d = await daemon_factory(config=two_mocks(sockdir, {"pre_stream_error": "InvalidRequest"}, failures=1))
    for i in range(5):
        frames = await roundtrip(d.infer, req(f"bad{i}"))
        assert frames[-1]["type"] == "error" and frames[-1]["code"] == "invalid_request"
    flaky = d.server.router.entries[0]
    assert flaky.breaker.state is CircuitState.CLOSED and flaky.breaker.failures == 0


async def test_a_mid_stream_drop_is_not_retried_and_counts_against_the_backend(daemon_factory, sockdir):
    d = await daemon_factory(config=two_mocks(sockdir, {"drop_after": 1}, failures=2))
    admin_r, admin_w = await dial(d.admin)
    for _ in range(3):
        await read_json(admin_r)
    for i in range(2):
        frames = await roundtrip(d.infer, req(f"m{i}"))
        assert [f["type"] for f in frames] == ["token", "error"], frames  # partial, then the error
        assert frames[0]["content"] == "from-"
        assert frames[1]["code"] == "backend_unavailable"
    event = await admin_until(admin_r, "backend_state")
    assert event["state"] == "open" and event["reason"] == "backend ended stream without terminal frame"
    frames = await roundtrip(d.infer, req("after"))
    assert frames[-1]["content"] == "from-steady"
    admin_w.close()


async def test_a_client_that_hangs_up_mid_stream_is_no_verdict(daemon_factory, sockdir):
    d = await daemon_factory(config=two_mocks(sockdir, {"token_delay_ms": 50, "tokens": ["a"] * 200}, failures=1))
    flaky = d.server.router.entries[0]
    reader, writer = await dial(d.infer)
    writer.write(line(req("gone")))
    await writer.drain()
    assert (await read_json(reader))["type"] == "token"
    writer.close()
    await flaky.admission.wait_idle()
    assert flaky.breaker.state is CircuitState.CLOSED and flaky.breaker.failures == 0
    frames = await roundtrip(d.infer, req("next", max_tokens=2), timeout=30)
    assert frames[-1]["backend"] == "flaky" and frames[-1]["stop_reason"] == "length"


async def test_every_backend_open_is_a_clear_refusal(daemon_factory, sockdir):
    path = sockdir / "config.json"
    path.write_text(json.dumps({"breaker": {"failures": 1, "cooldown_secs": 300},
                                "backends": [{"kind": "mock", "name": "only", "pre_stream_error": "Unavailable"}]}))
    d = await daemon_factory(config=str(path))
    first = await roundtrip(d.infer, req("a"))
    assert first[-1]["code"] == "backend_unavailable" and first[-1]["message"] == "mock"
    second = await roundtrip(d.infer, req("b"))
    assert second[-1]["code"] == "backend_unavailable"
    assert second[-1]["message"].startswith('backend "only" is open after 1 consecutive failure')
    reader, writer = await dial(d.embed)
    writer.write(line({"id": "e", "input": ["x"]}))
    await writer.drain()
    frames = await read_until_terminal(reader)
    assert frames[-1]["code"] == "backend_unavailable" and "is open" in frames[-1]["message"]
    writer.close()


async def test_a_reload_starts_every_circuit_closed(daemon_factory, sockdir):
    d = await daemon_factory(config=two_mocks(sockdir, {"pre_stream_error": "Unavailable"}, failures=1))
    await roundtrip(d.infer, req("a"))
    assert d.server.router.entries[0].breaker.state is CircuitState.OPEN
    admin_r, admin_w = await dial(d.admin)
    assert (await read_json(admin_r))["state"] == "open"  # flaky's replayed capabilities
    assert [(await read_json(admin_r))["status"] for _ in range(2)] == ["capabilities", "ready"]
    d.server.request_reload()
    await admin_until(admin_r, "restarting")
    await admin_until(admin_r, "ready")
    assert all(e.breaker.state is CircuitState.CLOSED for e in d.server.router.entries)
    late_r, late_w = await dial(d.admin)
    caps = [await read_json(late_r) for _ in range(3)]
    assert not any("state" in c for c in caps)
    for w in (admin_w, late_w):
        w.close()
