"""Thread messages of the simulated Assistants API: what clients write and what runs answer.

A thread holds two kinds of message, in creation order. A `SimMessage` is written by a client (create message,
create thread, a run's `additional_messages`) or by the workload playing the application, and never changes. A
`RunMessage` is the assistant's message of one `message_creation` step of a run; its state at `t` is read off the
run's timeline like the step's: it exists from the step's creation (in_progress, its text arriving in a few
chunks) and ends with the step: completed, or incomplete when the step failed, was cancelled or expired, or when
the run ends incomplete (`max_tokens`).

`MessageLog` keeps one thread's messages listable and bounded. The messages of the thread's newest run stay open
(read off its timeline); the thread's next message or run settles them into the list, which the one-active-run
rule allows only once that run is terminal, so settled messages never change again. Housekeeping forgets a
prefix: every message up to the last one of the runs it forgot (`forget`).
"""

from __future__ import annotations

import random
import re
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stepscope.simulator.state import SimRun, SimStep

MAX_TEXT = 256_000
MAX_ATTACHMENTS = 10
ROLES = ("user", "assistant")
_ATTACHMENT_TOOLS = ("code_interpreter", "file_search")
_DETAILS = ("auto", "low", "high")
_INCOMPLETE = {"failed": "run_failed", "cancelled": "run_cancelled", "expired": "run_expired"}
_WORD = re.compile(r"\S+\s*")
_QUESTIONS = (
    "What will the weather be in Paris tomorrow?",
    "Where is my order 1042?",
    "Can you summarise the attached report?",
    "How many support tickets are open this week?",
    "What changed in the latest release?",
    "Which plan fits a team of five?",
)
_FINDINGS = (
    "I checked the information available to me.",
    "The figures are consistent with each other.",
    "Nothing unusual stood out.",
    "The simplest explanation fits best here.",
    "The tools I called agree on this.",
    "Let me know if you need more detail.",
)
_INTERIM = ("Let me look into that.", "One moment while I check the details.", "I am gathering what I need.")


class MessageError(ValueError):
    """A message in a request body that the API would refuse; `param` names the offending field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(slots=True)
class NewMessage:
    """A validated message from a request body, not stored yet (metadata is validated by the caller)."""

    role: str
    content: list[dict[str, Any]]
    attachments: list[dict[str, Any]]
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class SimMessage:
    """A message a client or the workload wrote: complete from its creation on, with no run or assistant."""

    id: str
    thread_id: str
    created: float
    role: str
    content: list[dict[str, Any]]
    attachments: list[dict[str, Any]]
    metadata: dict[str, str]

    @property
    def run_id(self) -> str | None:
        return None


class RunMessage:
    """The assistant's message of step `index` (a `message_creation` step) of `run`, read off the run's timeline."""

    __slots__ = ("index", "run")

    def __init__(self, run: SimRun, index: int) -> None:
        self.run = run
        self.index = index

    @property
    def id(self) -> str:
        return self.run.plan.steps[self.index].message_id or ""

    @property
    def run_id(self) -> str | None:
        return self.run.id

    @property
    def step(self) -> SimStep:
        return self.run.steps[self.index]

    def state(self, t: float) -> tuple[str, str, float | None, str | None]:
        """(status, text so far, end time or None, incomplete reason or None) at `t`."""
        step = self.step
        chunks = step.plan.text
        if t < step.end:
            return "in_progress", "".join(chunks[: bisect_right(chunk_times(step), t)]), None, None
        reason = _INCOMPLETE.get(step.end_status)
        if reason is None and self.run.plan.outcome == "incomplete" and self.index == len(self.run.plan.steps) - 1:
            reason = "max_tokens"  # the run ran out of tokens while writing its last message
        if reason is None:
            return "completed", "".join(chunks), step.end, None
        return "incomplete", "".join(chunks[: bisect_right(chunk_times(step), step.end)]), step.end, reason


ThreadMessage = SimMessage | RunMessage


def chunk_times(step: SimStep) -> list[float]:
    """When each chunk of a `message_creation` step's text arrives: evenly within the step's planned duration."""
    plan = step.plan
    n = len(plan.text)
    return [step.created + plan.duration * (i + 1) / (n + 1) for i in range(n)]


def run_messages(run: SimRun, visible: int) -> list[RunMessage]:
    """The messages of the first `visible` steps of `run`, in step order."""
    return [RunMessage(run, k) for k, step in enumerate(run.steps[:visible]) if step.plan.kind == "message_creation"]


class MessageLog:
    """One thread's messages: settled ones in a list, the open run's read off its timeline (see the module doc).

    Positions are absolute (`_base` counts the messages forgotten), so forgetting a prefix moves nothing else.
    """

    __slots__ = ("_base", "_messages", "_open", "_pos", "_run_end")

    def __init__(self) -> None:
        self._messages: list[ThreadMessage] = []
        self._pos: dict[str, int] = {}
        self._base = 0
        self._run_end: dict[str, int] = {}  # run id -> absolute position just after its messages
        self._open: SimRun | None = None

    def _settle(self) -> None:
        run, self._open = self._open, None
        if run is None:
            return
        for message in run_messages(run, len(run.steps)):
            self._append(message)
        self._run_end[run.id] = self._base + len(self._messages)

    def _append(self, message: ThreadMessage) -> None:
        self._pos[message.id] = self._base + len(self._messages)
        self._messages.append(message)

    def add(self, message: SimMessage) -> None:
        """Append a written message (the thread's newest run, if any, must be terminal)."""
        self._settle()
        self._append(message)

    def open(self, run: SimRun) -> None:
        """Start reading `run`'s messages off its timeline (the previous run, if any, must be terminal)."""
        self._settle()
        self._open = run

    @property
    def settled(self) -> int:
        """How many messages are settled (all of them but the open run's)."""
        return len(self._messages)

    def visible(self, t: float) -> Sequence[ThreadMessage]:
        """Every message that exists at `t`, oldest first. Read-only: it may be the log's own list."""
        run = self._open
        tail = run_messages(run, run.visible(t)) if run is not None else []
        return [*self._messages, *tail] if tail else self._messages

    def find(self, message_id: str, t: float) -> ThreadMessage | None:
        i = self._pos.get(message_id)
        if i is not None:
            return self._messages[i - self._base]
        run = self._open
        if run is None:
            return None
        return next((m for m in run_messages(run, run.visible(t)) if m.id == message_id), None)

    def index(self, message_id: str, t: float) -> int | None:
        """Position of `message_id` in `visible(t)`, or None."""
        i = self._pos.get(message_id)
        if i is not None:
            return i - self._base
        run = self._open
        tail = run_messages(run, run.visible(t)) if run is not None else []
        return next((len(self._messages) + j for j, m in enumerate(tail) if m.id == message_id), None)

    def last_user_text(self, lookback: int = 50) -> str:
        """The text of the newest settled user message within the last `lookback` messages ("" if none)."""
        for message in reversed(self._messages[-lookback:]):
            if isinstance(message, SimMessage) and message.role == "user":
                return text_of(message.content)
        return ""

    def forget(self, run_ids: set[str]) -> int:
        """Forget the messages of `run_ids` (the thread's oldest runs, all terminal) and every message before them;
        returns how many messages went."""
        if self._open is not None and self._open.id in run_ids:
            self._settle()
        ends = [self._run_end.pop(rid) for rid in run_ids if rid in self._run_end]
        if not ends:
            return 0
        cut = max(ends) - self._base
        for message in self._messages[:cut]:
            del self._pos[message.id]
        del self._messages[:cut]
        self._base += cut
        return cut


# --- request bodies ---------------------------------------------------------------------------------------------


def parse_message(raw: object, where: str = "") -> NewMessage:
    """Validate one message of a request body; `where` prefixes parameter names (`additional_messages[0]`).

    Text parts become `{"type": "text", "text": {"value", "annotations": []}}`; images keep their reference with
    `detail` defaulting to `auto`. Raises `MessageError` as the API would refuse the message.
    """
    prefix = f"{where}." if where else ""
    if not isinstance(raw, dict):
        raise MessageError(f"Invalid '{where}': expected an object.", where)
    role = raw.get("role")
    if role is None:
        raise MessageError(f"Missing required parameter: '{prefix}role'.", f"{prefix}role")
    if role not in ROLES:
        raise MessageError(f"Invalid value: '{role}'. Supported values are: 'user' and 'assistant'.", f"{prefix}role")
    content = _content(raw.get("content"), f"{prefix}content")
    return NewMessage(role, content, _attachments(raw.get("attachments"), f"{prefix}attachments"))


def _content(raw: object, param: str) -> list[dict[str, Any]]:
    if raw is None:
        raise MessageError(f"Missing required parameter: '{param}'.", param)
    parts = [{"type": "text", "text": raw}] if isinstance(raw, str) else raw
    if not isinstance(parts, list) or not parts:
        raise MessageError(f"Invalid '{param}': expected a non-empty string or array of content parts.", param)
    out: list[dict[str, Any]] = []
    size = 0
    for i, part in enumerate(parts):
        where = param if isinstance(raw, str) else f"{param}[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        body = part.get(kind) if isinstance(part, dict) and isinstance(kind, str) else None
        if kind == "text" and isinstance(body, str) and body:
            size += len(body)
            out.append({"type": "text", "text": {"value": body, "annotations": []}})
        elif kind in ("image_url", "image_file") and isinstance(body, dict):
            key = "url" if kind == "image_url" else "file_id"
            detail = body.get("detail", "auto")
            if not isinstance(body.get(key), str) or detail not in _DETAILS:
                raise MessageError(f"Invalid '{where}.{kind}': expected '{key}' and a detail of auto, low or high.",
                                   f"{where}.{kind}")  # fmt: skip
            out.append({"type": kind, kind: {key: body[key], "detail": detail}})
        else:
            raise MessageError(f"Invalid '{where}': expected a non-empty text, image_url or image_file part.", where)
    if size > MAX_TEXT:
        raise MessageError(f"Invalid '{param}': string too long. Expected a string with maximum length {MAX_TEXT}, "
                           f"but got a string with length {size} instead.", param)  # fmt: skip
    return out


def _attachments(raw: object, param: str) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise MessageError(f"Invalid '{param}': expected an array.", param)
    if len(raw) > MAX_ATTACHMENTS:
        raise MessageError(f"Invalid '{param}': array too long. Expected an array with maximum length "
                           f"{MAX_ATTACHMENTS}, but got an array with length {len(raw)} instead.", param)  # fmt: skip
    out: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        tools = item.get("tools", []) if isinstance(item, dict) else None
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("file_id"), str)
            or not isinstance(tools, list)
            or not all(isinstance(tool, dict) and tool.get("type") in _ATTACHMENT_TOOLS for tool in tools)
        ):
            raise MessageError(f"Invalid '{param}[{i}]': expected a 'file_id' and tools of type code_interpreter "
                               "or file_search.", f"{param}[{i}]")  # fmt: skip
        out.append({"file_id": item["file_id"], "tools": [{"type": tool["type"]} for tool in tools]})
    return out


def text_of(content: list[dict[str, Any]]) -> str:
    """The text of a message's content: its text parts' values, joined by blank lines."""
    return "\n\n".join(part["text"]["value"] for part in content if part.get("type") == "text")


# --- generated text ----------------------------------------------------------------------------------------------


def question(rng: random.Random) -> str:
    """A user question for a workload run."""
    return rng.choice(_QUESTIONS)


def answer_chunks(message_id: str, prompt: str, read: int, *, final: bool) -> tuple[str, ...]:
    """An assistant message's text in 1..6 chunks (joined, they are the text), seeded by the message's id.

    A run's final message answers `prompt` (the thread's newest user message, quoted) and says how many of the
    thread's messages the run read (`read`); an earlier message in a run is a short interim note.
    """
    rng = random.Random(message_id)
    if final:
        quoted = " ".join(prompt.split())
        quoted = quoted if len(quoted) <= 80 else quoted[:77] + "..."
        head = f'You asked: "{quoted}". ' if quoted else "Here is what I found. "
        plural = "" if read == 1 else "s"
        text = f"{head}I read {read} message{plural} of this thread. {' '.join(rng.sample(_FINDINGS, 2))}"
    else:
        text = rng.choice(_INTERIM)
    words = _WORD.findall(text)
    count = min(len(words), rng.randint(3, 6))
    cuts = sorted(rng.sample(range(1, len(words)), count - 1))
    bounds = [0, *cuts, len(words)]
    return tuple("".join(words[a:b]) for a, b in pairwise(bounds))
