"""The simulator's object store and workload engine.

`Engine` holds assistants, threads and runs in dicts keyed by id, creates client objects, and plays the
application: at `scenario.runs_per_second` (Poisson, simulated time) it starts runs on a fixed, seeded set of
threads and answers their tool calls. The workload is evaluated lazily: `advance(t)` creates every run due up to
`t`, each at its scheduled time, so the result depends only on the seed and the times read, never on how often
anybody looked. The same seed gives the same threads, assistants, runs, steps, messages and ids.

Like an application, the workload posts a user question to a thread and then starts a run on it, only on a thread
without an active run. Every run reads its thread's messages when it is created: its `message_creation` steps
answer the newest user message (`messages.answer_chunks`).
"""

from __future__ import annotations

import random
from typing import Any

from stepscope.simulator import serializers
from stepscope.simulator.messages import NewMessage, SimMessage, answer_chunks, question
from stepscope.simulator.plan import client_plan, new_id, workload_plan
from stepscope.simulator.scenario import Scenario, SimTime
from stepscope.simulator.state import RUN_TERMINAL, SimRun, SimStep, SimThread

_NAMES = ("Support Agent", "Data Analyst", "Research Helper", "Travel Planner", "Code Reviewer", "Billing Bot")
_DEFAULT_TOOLS: list[dict[str, Any]] = [
    {"type": "code_interpreter"},
    {"type": "file_search"},
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}},
]


class Engine:
    """State and workload. Not thread-safe: one event loop owns it (the ASGI app's)."""

    def __init__(self, scenario: Scenario, *, clock: SimTime, seed: int, azure: bool = False) -> None:
        self.scenario = scenario
        self.clock = clock
        self.seed = seed
        self.azure = azure
        self.assistants: dict[str, dict[str, Any]] = {}
        self.threads: dict[str, SimThread] = {}
        self.runs: dict[str, SimRun] = {}
        self.skipped_busy = 0
        self._client_ids = random.Random(f"{seed}/client")
        self._client_runs = 0
        self._workload_runs = 0
        self._rng = random.Random(f"{seed}/workload")
        start = clock.now()
        self.workload_assistants = [self._new_assistant(self._rng, start, i) for i in range(scenario.assistants)]
        self.workload_threads: list[str] = []
        for _ in range(scenario.threads):
            thread = SimThread(id=new_id(self._rng, "thread"), created=start)
            self.threads[thread.id] = thread
            self.workload_threads.append(thread.id)
        rate = scenario.runs_per_second
        self._next_due = start + self._rng.expovariate(rate) if rate > 0 else float("inf")

    # --- time -------------------------------------------------------------------------------------------------

    def now(self) -> float:
        """Current simulated time, with the workload brought up to it."""
        t = self.clock.now()
        if t >= self._next_due:
            self.advance(t)
        return t

    def advance(self, t: float) -> None:
        """Create every workload run scheduled at or before `t`, each at its own scheduled time."""
        rate = self.scenario.runs_per_second
        limit = self.scenario.total_runs
        while self._next_due <= t:
            if limit is not None and self._workload_runs >= limit:
                self._next_due = float("inf")  # a bounded workload is done: tests can wait for quiescence
                return
            self._spawn(self._next_due)
            self._next_due += self._rng.expovariate(rate)

    def _spawn(self, t: float) -> None:
        rng = self._rng
        thread = self._idle_thread(rng, t)
        assistant = rng.choice(self.workload_assistants)
        if thread is None:
            self.skipped_busy += 1
            return
        self._workload_runs += 1
        # The question has its own RNG so that runs, steps and their ids stay what they were before messages.
        ask = random.Random(f"{self.seed}/run/{self._workload_runs}/question")
        text = question(ask)
        content = [{"type": "text", "text": {"value": text, "annotations": []}}]
        self._store(thread, new_id(ask, "msg"), NewMessage("user", content, [], {"source": "workload"}), t)
        run_rng = random.Random(f"{self.seed}/run/{self._workload_runs}")
        run = SimRun(
            run_id=new_id(run_rng, "run"),
            thread_id=thread.id,
            assistant_id=assistant["id"],
            model=run_rng.choice(self.scenario.models),
            instructions=assistant["instructions"],
            tools=assistant["tools"],
            metadata={"source": "workload"},
            created=t,
            lifetime=self.scenario.expires_after_s,
            plan=workload_plan(run_rng, self.scenario, azure=self.azure),
            auto=True,
        )
        self._add_run(thread, run)

    def _idle_thread(self, rng: random.Random, t: float) -> SimThread | None:
        """A random workload thread without an active run at `t`, or None when all are busy.

        A few random draws find one in O(1) while most threads are idle (a full shuffle per run made 10,000 threads
        cost 10^8 steps); only when those all hit busy threads does a shuffled scan decide.
        """
        threads = self.workload_threads
        for _ in range(8):
            thread = self.threads[rng.choice(threads)]
            if thread.active_run(t) is None:
                return thread
        order = rng.sample(threads, len(threads))
        return next((self.threads[tid] for tid in order if self.threads[tid].active_run(t) is None), None)

    def _add_run(self, thread: SimThread, run: SimRun) -> None:
        """Store `run` (ValueError if `thread` has an active run) and write its answers from the thread's messages."""
        thread.add_run(run)
        self.runs[run.id] = run
        log = thread.log
        prompt, read = log.last_user_text(), log.settled
        last = len(run.plan.steps) - 1
        for k, sp in enumerate(run.plan.steps):
            if sp.message_id is not None:
                sp.text = answer_chunks(sp.message_id, prompt, read, final=k == last)

    def _store(self, thread: SimThread, message_id: str, new: NewMessage, t: float) -> SimMessage:
        message = SimMessage(message_id, thread.id, t, new.role, new.content, new.attachments, new.metadata)
        thread.add_message(message)
        return message

    # --- client objects ---------------------------------------------------------------------------------------

    def _new_assistant(self, rng: random.Random, t: float, i: int) -> dict[str, Any]:
        assistant: dict[str, Any] = {
            "id": new_id(rng, "asst"),
            "object": "assistant",
            "created_at": int(t),
            "name": _NAMES[i % len(_NAMES)],
            "description": None,
            "model": self.scenario.models[i % len(self.scenario.models)],
            "instructions": "You are a helpful assistant.",
            "tools": _DEFAULT_TOOLS,
            "tool_resources": {},
            "metadata": {},
            "temperature": 1.0,
            "top_p": 1.0,
            "response_format": "auto",
        }
        self.assistants[assistant["id"]] = assistant
        return assistant

    def create_assistant(self, body: dict[str, Any], t: float) -> dict[str, Any]:
        """Store an assistant from a create body (`model` is required; the caller validated it)."""
        assistant = self._new_assistant(self._client_ids, t, len(self.assistants))
        for key in ("name", "description", "model", "instructions", "metadata", "temperature", "top_p"):
            if key in body:
                assistant[key] = body[key]
        assistant["tools"] = body.get("tools") or []
        assistant["response_format"] = body.get("response_format") or "auto"
        return assistant

    def create_thread(self, metadata: dict[str, str], t: float, messages: list[NewMessage] | None = None) -> SimThread:
        """A client thread, holding `messages` from the start."""
        thread = SimThread(id=new_id(self._client_ids, "thread"), created=t, metadata=metadata)
        self.threads[thread.id] = thread
        for new in messages or []:
            self.add_message(thread, new, t)
        return thread

    def add_message(self, thread: SimThread, new: NewMessage, t: float) -> SimMessage:
        """Append a client's message to `thread` at `t`; ValueError while a run is active (callers check first)."""
        return self._store(thread, new_id(self._client_ids, "msg"), new, t)

    def create_run(self, thread: SimThread, assistant: dict[str, Any], body: dict[str, Any], t: float) -> SimRun:
        """A client run on `thread`; ValueError while a run is active there (callers check first). Its tool calls wait
        for the client."""
        self._client_runs += 1
        rng = random.Random(f"{self.seed}/client-run/{self._client_runs}")
        tools = body.get("tools") or assistant.get("tools") or []
        metadata = body.get("metadata") or {}
        options = {
            k: body[k]
            for k in (
                "temperature", "top_p", "max_prompt_tokens", "max_completion_tokens", "truncation_strategy",
                "tool_choice", "parallel_tool_calls", "response_format",
            )
            if body.get(k) is not None
        }  # fmt: skip
        run = SimRun(
            run_id=new_id(rng, "run"),
            thread_id=thread.id,
            assistant_id=assistant["id"],
            model=body.get("model") or assistant["model"],
            instructions=body.get("instructions") or assistant.get("instructions") or "",
            tools=tools,
            metadata=metadata,
            created=t,
            lifetime=self.scenario.expires_after_s,
            plan=client_plan(rng, self.scenario, tools, metadata),
            auto=False,
            options=options,
        )
        self._add_run(thread, run)
        return run

    # --- housekeeping and introspection ------------------------------------------------------------------------

    def prune(self, t: float, max_runs: int) -> int:
        """Forget the oldest terminal runs beyond `max_runs`, with their messages and the messages before them on
        their threads; returns how many runs were dropped."""
        excess = len(self.runs) - max_runs
        if excess <= 0:
            return 0
        doomed = [r for r in self.runs.values() if r.terminal_at <= t][:excess]
        touched: dict[str, set[str]] = {}
        for run in doomed:
            del self.runs[run.id]
            touched.setdefault(run.thread_id, set()).add(run.id)
        for tid, gone in touched.items():
            thread = self.threads[tid]
            thread.runs = [r for r in thread.runs if r.id in self.runs]
            thread.run_pos = {r.id: i for i, r in enumerate(thread.runs)}
            thread.log.forget(gone)
        return len(doomed)

    def _truth_step(self, run: SimRun, step: SimStep, t: float) -> dict[str, Any]:
        """The step as the API shows it, plus `sim_ended_at`: the exact (sub-second) end once it is terminal, so
        benchmarks can measure lag without the API's whole-second truncation."""
        obj = dict(serializers.step_dict(run, step, t, content=False, azure=self.azure))  # a copy: the API caches
        obj["sim_ended_at"] = step.end if step.end <= t else None
        return obj

    def truth(self) -> dict[str, Any]:
        """Every thread, assistant, run, (visible) step and message as the API serialises them now; see
        `Simulator.truth`."""
        t = self.now()
        azure = self.azure
        runs = []
        for run in self.runs.values():
            obj = serializers.run_dict(run, t, azure=azure)
            n = run.visible(t)
            obj["steps"] = [self._truth_step(run, s, t) for s in run.steps[:n]]
            runs.append(obj)
        messages = {
            tid: [serializers.message_dict(m, t) for m in visible]
            for tid, thread in self.threads.items()
            if (visible := thread.log.visible(t))
        }
        return {
            "now": int(t),
            "threads": list(self.threads),
            "workload_threads": list(self.workload_threads),
            "assistants": list(self.assistants.values()),
            "runs": runs,
            "messages": messages,
            "stats": {
                "runs": len(self.runs),
                "messages": sum(len(v) for v in messages.values()),
                "active_runs": sum(1 for r in self.runs.values() if r.terminal_at > t),
                "skipped_busy": self.skipped_busy,
                "terminal": {s: sum(1 for r in runs if r["status"] == s) for s in sorted(RUN_TERMINAL)},
            },
        }
