"""The checkpoint store: what has been exported, so a restart neither repeats nor skips a step.

Per active run it keeps the *cursor* (the last step id up to which every step is committed) and the ids of steps
committed beyond it (steps can finish out of order). A finished run keeps one row (`done`) so discovery recognises
it, and sheds its step rows, so the store grows with the lookback window, not with history. Watched threads and
runs registered through `/v1/watch` are kept too.

Writes happen only after the span exporter acknowledged the spans (the pipeline's job), so a crash replays work
with the same deterministic ids instead of losing it. SQLite in WAL mode; `":memory:"` gives a private store.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from stepscope.errors import StoreError
from stepscope.models import RunRef

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    thread_id TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    cursor TEXT,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_done_updated ON runs (done, updated_at);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    PRIMARY KEY (run_id, step_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS watched (
    thread_id TEXT NOT NULL,
    run_id TEXT NOT NULL DEFAULT '',
    added_at REAL NOT NULL,
    PRIMARY KEY (thread_id, run_id)
) WITHOUT ROWID;
"""


@dataclass(slots=True)
class RunProgress:
    """Committed progress of one active run."""

    ref: RunRef
    cursor: str | None = None
    committed: set[str] = field(default_factory=set)


class SqliteStore:
    """SQLite-backed checkpoint store. All methods raise `StoreError` on I/O problems.

    Calls are short transactions on the caller's thread; the lock makes the object safe to share with a thread
    that closes it at shutdown.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        """Open (creating if needed) and migrate. Idempotent."""
        if self._db is not None:
            return
        try:
            if self._path != ":memory:":
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode is durable against process crashes (our kill -9 case); only power loss can drop
            # the last transactions, which then replay as re-exports with the same ids.
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(
                    f"{self._path}: schema version {row[0]} is newer than this stepscope ({SCHEMA_VERSION})"
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open checkpoint store {self._path}: {exc}") from exc
        self._db = db

    @property
    def is_open(self) -> bool:
        return self._db is not None

    def close(self) -> None:
        """Close the database. Idempotent, safe before `open`."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("checkpoint store is not open")
        return self._db

    def _write(self, statements: Iterable[tuple[str, tuple[object, ...]]]) -> None:
        with self._lock:
            db = self._conn()
            try:
                db.execute("BEGIN")
                for sql, params in statements:
                    db.execute(sql, params)
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise StoreError(f"checkpoint store write failed: {exc}") from exc

    def _read(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            try:
                return self._conn().execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"checkpoint store read failed: {exc}") from exc

    # --- runs -------------------------------------------------------------------------------------------------

    def active_runs(self) -> list[RunProgress]:
        """Every run not yet finished, with its committed progress."""
        progress = {
            str(run_id): RunProgress(RunRef(str(thread_id), str(run_id)), str(cursor) if cursor else None)
            for run_id, thread_id, cursor in self._read("SELECT run_id, thread_id, cursor FROM runs WHERE done = 0")
        }
        for run_id, step_id in self._read(
            "SELECT s.run_id, s.step_id FROM steps s JOIN runs r ON r.run_id = s.run_id WHERE r.done = 0"
        ):
            progress[str(run_id)].committed.add(str(step_id))
        return list(progress.values())

    def known_runs(self, run_ids: Iterable[str]) -> set[str]:
        """The subset of `run_ids` the store has seen (active or done)."""
        ids = list(run_ids)
        if not ids:
            return set()
        marks = ",".join("?" * len(ids))
        return {str(r[0]) for r in self._read(f"SELECT run_id FROM runs WHERE run_id IN ({marks})", tuple(ids))}  # noqa: S608

    def add_run(self, ref: RunRef, now: float) -> None:
        """Record a run as tracked (no-op when known)."""
        self._write([("INSERT OR IGNORE INTO runs (run_id, thread_id, updated_at) VALUES (?, ?, ?)",
                      (ref.run_id, ref.thread_id, now))])  # fmt: skip

    def commit_steps(self, ref: RunRef, step_ids: Iterable[str], cursor: str | None, now: float) -> None:
        """Mark steps exported and move the run's cursor, in one transaction."""
        statements: list[tuple[str, tuple[object, ...]]] = [
            ("INSERT OR IGNORE INTO runs (run_id, thread_id, updated_at) VALUES (?, ?, ?)",
             (ref.run_id, ref.thread_id, now)),
            ("UPDATE runs SET cursor = ?, updated_at = ? WHERE run_id = ?", (cursor, now, ref.run_id)),
        ]  # fmt: skip
        statements.extend(("INSERT OR IGNORE INTO steps VALUES (?, ?)", (ref.run_id, s)) for s in step_ids)
        self._write(statements)

    def finish_run(self, ref: RunRef, now: float) -> None:
        """The run and all its steps are exported: keep one `done` row, drop its step rows."""
        self._write(
            [
                ("INSERT OR IGNORE INTO runs (run_id, thread_id, updated_at) VALUES (?, ?, ?)",
                 (ref.run_id, ref.thread_id, now)),
                ("UPDATE runs SET done = 1, cursor = NULL, updated_at = ? WHERE run_id = ?", (now, ref.run_id)),
                ("DELETE FROM steps WHERE run_id = ?", (ref.run_id,)),
                ("DELETE FROM watched WHERE run_id = ?", (ref.run_id,)),
            ]
        )  # fmt: skip

    def forget_run(self, ref: RunRef) -> None:
        """Remove every trace of a run (it vanished from the API)."""
        self._write([("DELETE FROM runs WHERE run_id = ?", (ref.run_id,)),
                     ("DELETE FROM steps WHERE run_id = ?", (ref.run_id,)),
                     ("DELETE FROM watched WHERE run_id = ?", (ref.run_id,))])  # fmt: skip

    def prune(self, finished_before: float) -> int:
        """Drop `done` rows older than the lookback window; returns how many went."""
        with self._lock:
            try:
                cur = self._conn().execute("DELETE FROM runs WHERE done = 1 AND updated_at < ?", (finished_before,))
            except sqlite3.Error as exc:
                raise StoreError(f"checkpoint store prune failed: {exc}") from exc
            return cur.rowcount

    # --- watch registrations ------------------------------------------------------------------------------------

    def watch(self, thread_id: str, run_id: str | None, now: float) -> None:
        self._write([("INSERT OR IGNORE INTO watched VALUES (?, ?, ?)", (thread_id, run_id or "", now))])

    def unwatch(self, thread_id: str, run_id: str | None) -> None:
        self._write([("DELETE FROM watched WHERE thread_id = ? AND run_id = ?", (thread_id, run_id or ""))])

    def watched(self) -> list[tuple[str, str | None]]:
        """Registered (thread_id, run_id or None) pairs."""
        return [(str(t), str(r) or None) for t, r in self._read("SELECT thread_id, run_id FROM watched")]
