"""Property tests of the simulator: pagination invariants and run/step lifecycle invariants."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepscope.simulator import ManualClock, Simulator, scenario_named
from stepscope.simulator.handlers import Handlers, Request
from stepscope.simulator.state import page_window

_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _sim_with_run(n_steps: int) -> tuple[Simulator, Handlers, dict[str, str]]:
    clock = ManualClock()
    sim = Simulator(scenario_named("quiet"), clock=clock)
    handlers = Handlers(sim.engine)
    t = clock.now()
    asst = sim.engine.create_assistant({"model": "gpt-4o", "tools": [{"type": "code_interpreter"}]}, t)
    thread = sim.engine.create_thread({}, t)
    meta = {"sim_steps": str(n_steps), "sim_step_seconds": "0.4"}
    run = sim.engine.create_run(thread, asst, {"metadata": meta}, t)
    clock.advance(n_steps + 10)
    return sim, handlers, {"thread_id": thread.id, "run_id": run.id}


def _list(handlers: Handlers, ids: dict[str, str], **query: Any) -> dict[str, Any]:
    req = Request(ids, {k: str(v) for k, v in query.items()}, [], {}, handlers.engine.now(), False, as_dicts=True)
    obj: dict[str, Any] = handlers.list_steps(req).obj
    return obj


@_SETTINGS
@given(n=st.integers(1, 60), limit=st.integers(1, 100), order=st.sampled_from(["asc", "desc"]))
def test_paging_with_after_yields_every_step_exactly_once(n: int, limit: int, order: str) -> None:
    """Following `after=last_id` until `has_more` is false lists every step once, in the requested order."""
    _, handlers, ids = _sim_with_run(n)
    seen: list[str] = []
    cursor: dict[str, Any] = {}
    while True:
        page = _list(handlers, ids, limit=limit, order=order, **cursor)
        assert len(page["data"]) <= limit
        seen += [s["id"] for s in page["data"]]
        if page["data"]:
            assert page["first_id"] == page["data"][0]["id"] and page["last_id"] == page["data"][-1]["id"]
        if not page["has_more"]:
            break
        cursor = {"after": page["last_id"]}
    stored = [s.plan.id for s in handlers.engine.runs[ids["run_id"]].steps]
    assert seen == (stored if order == "asc" else stored[::-1])


@_SETTINGS
@given(n=st.integers(1, 60), limit=st.integers(1, 100), data=st.data())
def test_before_mirrors_after_in_the_opposite_order(n: int, limit: int, data: st.DataObject) -> None:
    """`before=X` in one order returns `after=X` in the other order, reversed, with the same `has_more`."""
    _, handlers, ids = _sim_with_run(n)
    steps = handlers.engine.runs[ids["run_id"]].steps
    cursor = steps[data.draw(st.integers(0, n - 1))].plan.id
    for order, other in (("asc", "desc"), ("desc", "asc")):
        before = _list(handlers, ids, limit=limit, order=order, before=cursor)
        after = _list(handlers, ids, limit=limit, order=other, after=cursor)
        assert [s["id"] for s in before["data"]] == [s["id"] for s in after["data"]][::-1]
        assert before["has_more"] == after["has_more"]


@_SETTINGS
@given(
    n=st.integers(0, 300),
    limit=st.integers(1, 100),
    desc=st.booleans(),
    after=st.none() | st.integers(0, 299),
    before=st.none() | st.integers(0, 299),
)
def test_page_window_stays_within_bounds_and_between_cursors(
    n: int, limit: int, desc: bool, after: int | None, before: int | None
) -> None:
    """A page never exceeds `limit`, never includes a cursor, and lies strictly between the cursors."""
    after = None if after is None or after >= n else after
    before = None if before is None or before >= n else before
    window, _ = page_window(n, limit, desc, after, before)
    items = list(window)
    assert len(items) <= limit and all(0 <= i < n for i in items)
    assert after not in items and before not in items
    assert items == sorted(items, reverse=desc)
    if after is not None:
        assert all((i < after) if desc else (i > after) for i in items)


def _check_run(run: dict[str, Any]) -> None:
    status = run["status"]
    ends = {
        "completed": "completed_at",
        "failed": "failed_at",
        "cancelled": "cancelled_at",
        "incomplete": "completed_at",
    }
    set_ends = {k for k in ("completed_at", "failed_at", "cancelled_at") if run[k] is not None}
    terminal = status in ("completed", "failed", "cancelled", "expired", "incomplete")
    assert set_ends == ({ends[status]} if status in ends else set()), run
    assert (run["usage"] is None) == (not terminal), run
    if run["started_at"] is not None:
        assert run["started_at"] >= run["created_at"]
    for key in set_ends:
        assert run[key] >= run["created_at"] and run[key] >= (run["started_at"] or 0)
    assert (run["required_action"] is not None) == (status == "requires_action")
    assert (run["last_error"] is not None) == (status == "failed")
    assert (run["incomplete_details"] is not None) == (status == "incomplete")
    assert (run["expires_at"] is not None) == (not terminal or status == "expired")


def _check_step(step: dict[str, Any], run: dict[str, Any]) -> None:
    status = step["status"]
    set_ends = {k for k in ("completed_at", "failed_at", "cancelled_at", "expired_at") if step[k] is not None}
    assert set_ends == (set() if status == "in_progress" else {f"{status}_at"}), step
    assert (step["usage"] is None) == (status == "in_progress"), step
    for key in set_ends:
        assert step[key] >= step["created_at"]
    if run["status"] in ("completed", "failed", "cancelled", "expired", "incomplete"):
        assert status != "in_progress", (run, step)
    if run["status"] in ("cancelled", "expired"):
        assert status in ("completed", run["status"]), (run, step)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), times=st.lists(st.floats(0.0, 400.0), min_size=1, max_size=4))
def test_lifecycle_invariants_hold_for_seeded_workloads(seed: int, times: list[float]) -> None:
    """Exactly the terminal timestamp of the status is set, ends follow starts, usage is null only in progress."""
    clock = ManualClock()
    sim = Simulator(scenario_named("faulty", runs_per_second=0.5, expires_after_s=60.0), clock=clock, seed=seed)
    elapsed = 0.0
    for target in sorted(times):
        clock.advance(target - elapsed)
        elapsed = target
        for run in sim.truth()["runs"]:
            _check_run(run)
            for step in run["steps"]:
                _check_step(step, run)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 1000), cancel_after=st.floats(0.0, 20.0), check_after=st.floats(0.0, 20.0))
def test_cancel_at_any_moment_keeps_invariants(seed: int, cancel_after: float, check_after: float) -> None:
    """Cancelling a client run at any time yields cancelling, then cancelled with its open steps cancelled."""
    clock = ManualClock()
    sim = Simulator(scenario_named("quiet"), clock=clock, seed=seed)
    eng = sim.engine
    asst = eng.create_assistant({"model": "m", "tools": [{"type": "code_interpreter"}]}, clock.now())
    run = eng.create_run(eng.create_thread({}, clock.now()), asst, {"metadata": {"sim_steps": "5"}}, clock.now())
    clock.advance(cancel_after)
    problem = run.cancel(clock.now())
    clock.advance(check_after)
    truth = sim.truth()["runs"][0]
    _check_run(truth)
    for step in truth["steps"]:
        _check_step(step, truth)
    if problem is None:
        assert truth["status"] == ("cancelled" if check_after >= 1.0 else "cancelling")


def test_same_seed_gives_same_objects_and_other_seed_differs() -> None:
    """Two simulators with one seed produce identical truth; another seed produces other ids."""

    def truth(seed: int) -> dict[str, Any]:
        clock = ManualClock()
        sim = Simulator(scenario_named("lively"), clock=clock, seed=seed)
        for _ in range(6):
            clock.advance(10)
            sim.truth()
        return sim.truth()

    first = truth(7)
    assert first == truth(7) and len(first["runs"]) > 20
    assert first["threads"] != truth(8)["threads"]


def test_run_cancelled_while_queued_never_started() -> None:
    """A seeded run cancelled before it left the queue has no started_at (found by the lifecycle property)."""
    clock = ManualClock()
    sim = Simulator(scenario_named("faulty", runs_per_second=0.5, expires_after_s=60.0), clock=clock, seed=9615)
    clock.advance(262.0)
    for run in sim.truth()["runs"]:
        _check_run(run)
