"""Simulated objects and their lazily evaluated lifecycles.

A run's whole future is computed once, when it is created, from its `RunPlan`: a list of run status transitions
and, per step, creation time, end time and final status. The state at time `t` is then a lookup (a bisect), so
reading one of 10,000 live runs costs the same as reading one of ten. Only client events change a timeline:
`submit_tool_outputs` and `cancel` record the event and rebuild that run's timeline (`SimRun.rebuild`).

Lifecycle rules, as the Assistants API documents them: queued -> in_progress (`started_at`) -> steps; a step with
function calls moves the run to requires_action until outputs arrive, then queued -> in_progress again and the step
completes; the last step fails for a failed run; a cancel moves the run to cancelling, then cancelled, and its
open steps to cancelled; at `expires_at` an unfinished run expires and its open step with it.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

from stepscope.simulator.messages import MessageLog, SimMessage
from stepscope.simulator.plan import RunPlan, StepPlan

RUN_TERMINAL = frozenset({"completed", "failed", "cancelled", "expired", "incomplete"})
CANCELLABLE = frozenset({"queued", "in_progress", "requires_action"})
CANCEL_DELAY_S = 1.0
_ACTION_LAG_S = 0.5


class SimStep:
    """One step on a timeline. `end` is when it takes `end_status`; `outputs_at` when function outputs appear."""

    __slots__ = ("cache", "created", "end", "end_status", "error", "outputs", "outputs_at", "plan")

    def __init__(self, plan: StepPlan, created: float) -> None:
        self.plan = plan
        self.created = created
        self.end = created
        self.end_status = "completed"
        self.error: tuple[str, str] | None = None
        self.outputs_at: float | None = None
        self.outputs: dict[str, str] = {}
        # Serialised forms by (terminal, outputs shown, include content): a step has at most a few states.
        self.cache: dict[tuple[bool, bool, bool], Any] = {}


@dataclass(slots=True)
class SimThread:
    """A thread, its runs in creation order (`run_pos` maps run id to position) and its messages (`log`).

    At most one run is active at a time: `add_run` and `add_message` refuse while the newest run is not terminal,
    which also keeps the message log's settled part final (see `messages.MessageLog`).
    """

    id: str
    created: float
    metadata: dict[str, str] = field(default_factory=dict)
    runs: list[SimRun] = field(default_factory=list)
    run_pos: dict[str, int] = field(default_factory=dict)
    log: MessageLog = field(default_factory=MessageLog)

    def add_run(self, run: SimRun) -> None:
        """Append `run`, created at `run.created`; ValueError while another run is active then."""
        self._ensure_idle(run.created)
        self.run_pos[run.id] = len(self.runs)
        self.runs.append(run)
        self.log.open(run)

    def add_message(self, message: SimMessage) -> None:
        """Append a written message; ValueError while a run is active at its creation."""
        self._ensure_idle(message.created)
        self.log.add(message)

    def active_run(self, t: float) -> SimRun | None:
        """The run that blocks new runs and messages at `t`: the newest one, if it is not terminal yet."""
        if self.runs and self.runs[-1].terminal_at > t:
            return self.runs[-1]
        return None

    def _ensure_idle(self, t: float) -> None:
        # The API layer answers 400 first; this guards every other path (the workload, direct engine use).
        active = self.active_run(t)
        if active is not None:
            raise ValueError(f"Thread {self.id} already has an active run {active.id}.")


class SimRun:
    """A run: request fields, its plan, the client events so far and the timeline derived from them."""

    __slots__ = (
        "assistant_id",
        "auto",
        "cancel_at",
        "created",
        "expires_at",
        "id",
        "instructions",
        "metadata",
        "model",
        "options",
        "plan",
        "started",
        "step_created",
        "step_pos",
        "steps",
        "submits",
        "terminal_at",
        "terminal_status",
        "thread_id",
        "tools",
        "trans",
        "trans_times",
    )  # fmt: skip

    def __init__(
        self,
        *,
        run_id: str,
        thread_id: str,
        assistant_id: str,
        model: str,
        instructions: str,
        tools: list[dict[str, Any]],
        metadata: dict[str, str],
        created: float,
        lifetime: float,
        plan: RunPlan,
        auto: bool,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.id = run_id
        self.thread_id = thread_id
        self.assistant_id = assistant_id
        self.model = model
        self.instructions = instructions
        self.tools = tools
        self.metadata = metadata
        self.created = created
        self.expires_at = created + lifetime
        self.plan = plan
        self.auto = auto
        self.options = options or {}
        self.submits: dict[int, tuple[float, dict[str, str]]] = {}
        self.cancel_at: float | None = None if plan.cancel_after is None else created + plan.cancel_after
        self.step_pos = {sp.id: i for i, sp in enumerate(plan.steps)}
        self.rebuild()

    def rebuild(self) -> None:
        """Derive the timeline from plan, submissions and cancel. Deterministic: same inputs, same timeline."""
        plan, x = self.plan, self.expires_at
        trans: list[tuple[float, str, int]] = [(self.created, "queued", -1)]
        steps: list[SimStep] = []
        t = self.created + plan.queue_delay
        self.started: float | None = None
        end_t, end_status = x, "expired"
        if t < x:
            self.started = t
            trans.append((t, "in_progress", -1))
            last = len(plan.steps) - 1
            for k, sp in enumerate(plan.steps):
                step = SimStep(sp, t)
                steps.append(step)
                end = t + sp.duration
                if sp.needs_action:
                    block = t + min(sp.duration, _ACTION_LAG_S)
                    sub_t, outputs = self._answer(k, sp, block)
                    if block < x:
                        trans.append((block, "requires_action", k))
                    if sub_t is None or sub_t >= x or block >= x:
                        step.end, step.end_status = x, "expired"
                        break
                    step.outputs_at, step.outputs = sub_t, outputs
                    resume = sub_t + plan.requeue_delay
                    trans += [(sub_t, "queued", -1), (resume, "in_progress", -1)]
                    end = resume + sp.duration / 2
                if end >= x:
                    step.end, step.end_status = x, "expired"
                    break
                step.end = end
                if k == last and plan.outcome == "failed":
                    step.end_status, step.error = "failed", plan.error
                    end_t, end_status = end, "failed"
                    break
                t = end
            else:
                end_t, end_status = t, "incomplete" if plan.outcome == "incomplete" else "completed"
        if self.cancel_at is not None and self.cancel_at < end_t:
            end_t, end_status = self.cancel_at + CANCEL_DELAY_S, "cancelled"
            trans, steps = _cut(trans, steps, self.cancel_at, end_t)
            if self.started is not None and self.started > self.cancel_at:
                self.started = None  # cancelled while queued: the run never started
        trans.append((end_t, end_status, -1))
        self.trans = trans
        self.trans_times = [tr[0] for tr in trans]
        self.steps = steps
        self.step_created = [s.created for s in steps]
        self.terminal_at = end_t
        self.terminal_status = end_status

    def _answer(self, k: int, sp: StepPlan, block: float) -> tuple[float | None, dict[str, str]]:
        """When step `k`'s function outputs arrive, and which: the client's, else the workload's, else never."""
        answer = self.submits.get(k)
        if answer is not None:
            return answer
        if self.auto and sp.submit_delay is not None:
            return block + sp.submit_delay, sp.outputs
        return None, {}

    def status_at(self, t: float) -> tuple[str, int]:
        """The run status at `t`, and the index of the step awaiting outputs (-1 unless requires_action)."""
        i = bisect_right(self.trans_times, t) - 1
        _, status, k = self.trans[max(i, 0)]
        return status, k

    def visible(self, t: float) -> int:
        """How many steps exist at `t` (steps are created in order, so they are a prefix of `steps`)."""
        return bisect_right(self.step_created, t)

    def step_index(self, step_id: str, t: float) -> int | None:
        i = self.step_pos.get(step_id)
        if i is None or i >= self.visible(t):
            return None
        return i

    def cancel(self, t: float) -> str | None:
        """Request cancellation at `t`; returns an error message when the run cannot be cancelled."""
        status, _ = self.status_at(t)
        if status not in CANCELLABLE:
            return f"Cannot cancel run with status '{status}'."
        self.cancel_at = t
        self.rebuild()
        return None

    def submit(self, t: float, outputs: dict[str, str]) -> str | None:
        """Record tool outputs at `t`; returns an error message unless they answer exactly the pending calls."""
        status, k = self.status_at(t)
        if status != "requires_action":
            return f'Runs in status "{status}" do not accept tool outputs.'
        expected = {c["id"] for c in self.plan.steps[k].calls}
        if set(outputs) != expected:
            missing = sorted(expected - set(outputs))
            return f"Expected tool outputs for call_ids {sorted(expected)}, got {sorted(outputs)}; missing {missing}."
        self.submits[k] = (t, dict(outputs))
        self.rebuild()
        return None


def _cut(
    trans: list[tuple[float, str, int]], steps: list[SimStep], cut: float, done: float
) -> tuple[list[tuple[float, str, int]], list[SimStep]]:
    """Apply a cancel requested at `cut` and completed at `done` to a timeline."""
    trans = [tr for tr in trans if tr[0] <= cut]
    trans.append((cut, "cancelling", -1))
    steps = [s for s in steps if s.created <= cut]
    for step in steps:
        if step.end > cut:
            step.end, step.end_status, step.error = done, "cancelled", None
        if step.outputs_at is not None and step.outputs_at > cut:
            step.outputs_at = None
    return trans, steps


def page_window(count: int, limit: int, desc: bool, after: int | None, before: int | None) -> tuple[range, bool]:
    """Positions (ascending storage indices) of one page, in listing order, and `has_more`.

    `after`/`before` are storage indices of the cursor objects. Listing order is ascending storage order, or its
    reverse for `desc`. With only `before`, the page is the `limit` items just before the cursor and `has_more`
    says whether more precede it; otherwise the page starts after `after` (or at the start) and `has_more` says
    whether more follow, stopping at `before` when both are given.
    """
    a = -1 if after is None else (count - 1 - after if desc else after)
    b = count if before is None else (count - 1 - before if desc else before)
    start, stop = a + 1, max(b, a + 1)
    if before is not None and after is None:
        lo = max(start, stop - limit)
        ranks, more = range(lo, stop), lo > start
    else:
        hi = min(stop, start + limit)
        ranks, more = range(start, hi), hi < stop
    if desc:
        return range(count - 1 - ranks.start, count - 1 - ranks.stop, -1), more
    return ranks, more
