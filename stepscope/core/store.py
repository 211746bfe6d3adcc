"""The checkpoint store: what has been committed, so a restart neither repeats nor skips a step.

Per active run it keeps the *cursor* (the last step id up to which every step is committed) and the ids of steps
committed beyond it (steps can finish out of order). A finished run keeps one row (`done`) so discovery recognises
it, and sheds its step rows, so the store grows with the lookback window, not with history. Watched threads and
runs registered through `/v1/watch` are kept too.

It also holds the *span backlog*: encoded spans waiting for the trace backend. A step's spans are appended in the
same transaction that commits the step, so a step is either committed with its spans kept for delivery or not
committed at all; metrics count it after that transaction, and spans leave the backlog only once the backend took
them. A crash or a collector outage therefore loses nothing and counts nothing twice. SQLite in WAL mode;
`":memory:"` gives a private store.

A file at the state path must be a stepscope store: an empty file or another program's database is refused, never
silently reused, because reusing it would forget (or clobber) progress.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stepscope.core.records import UnitRef
from stepscope.errors import StoreError

log = logging.getLogger("stepscope.store")

BUSY_TIMEOUT_S = 0.1
"""Seconds a statement waits for a lock another connection holds before it fails (`StoreError`)."""
SCHEMA_VERSION = 2
APPLICATION_ID = 0x53545053  # "STPS": marks the file as a stepscope store (`PRAGMA application_id`)
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
CREATE TABLE IF NOT EXISTS backlog (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    added_at REAL NOT NULL,
    span BLOB NOT NULL
);
"""


@dataclass(slots=True)
class RunProgress:
    """Committed progress of one active run."""

    ref: UnitRef
    cursor: str | None = None
    committed: set[str] = field(default_factory=set)


class SqliteStore:
    """SQLite-backed checkpoint store and span backlog. All methods raise `StoreError` on I/O problems.

    Calls are short transactions on the caller's thread (the event loop reaches them through `AsyncStore`); the
    lock makes the object safe to share with the delivery thread. `healthy` is False from a failed write until the
    next successful one that changed a row (readiness reads it; one that changed nothing wrote nothing). A run of
    failed writes is logged once when it starts and once when it ends: callers count what a failure cost them and
    need not log it.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self.healthy = True
        self.last_error: str | None = None
        self._failed_writes = 0  # in the current episode of failed writes
        self._failed_reads = 0

    @property
    def path(self) -> str:
        return self._path

    def open(self) -> None:
        """Open (creating if needed), check it is ours and writable, migrate. Idempotent.

        Raises `StoreError` naming the path and the fix: a directory that cannot be created, an empty or foreign
        file, a read-only file, a newer schema.
        """
        if self._db is not None:
            return
        path = self._path
        if path != ":memory:":
            file = Path(path)
            try:
                file.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                reason = exc.strerror or exc
                raise StoreError(f"cannot create the directory of {path}: {reason}; choose a writable path") from exc
            if file.is_dir():
                raise StoreError(f"{path} is a directory; give a file path")
            if file.exists() and file.stat().st_size == 0:
                raise StoreError(f"{path} is an empty file, not a stepscope store; remove it or choose another path")
        try:
            # A database another process holds locked fails a write after BUSY_TIMEOUT_S instead of sqlite3's 5 s:
            # the caller retries later, and nothing waits on a lock it cannot get.
            db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {path}: {exc}") from exc
        try:
            self._adopt(db)
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode is durable against process crashes (our kill -9 case); only power loss can drop
            # the last transactions, which then replay as re-exports with the same ids.
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is not None and int(row[0]) > SCHEMA_VERSION:
                raise StoreError(f"{path}: schema version {row[0]} is newer than this stepscope ({SCHEMA_VERSION})")
            # A write at open: a read-only file or directory fails here, at start, not on the first commit.
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.Error as exc:
            db.close()
            reason = (
                "not an SQLite database"
                if isinstance(exc, sqlite3.DatabaseError) and "not a database" in str(exc)
                else str(exc)
            )
            raise StoreError(f"cannot use {path}: {reason}") from exc
        except StoreError:
            db.close()
            raise
        self._db = db

    def _adopt(self, db: sqlite3.Connection) -> None:
        """Refuse another program's database; mark a new (or pre-marking) stepscope store as ours."""
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        if app_id == APPLICATION_ID:
            return
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        ours = "meta" in tables and db.execute("SELECT 1 FROM meta WHERE key = 'schema_version'").fetchone()
        if app_id != 0 or (tables and not ours):
            raise StoreError(f"{self._path} is not a stepscope store (another program's database); choose another path")
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")

    @property
    def is_open(self) -> bool:
        return self._db is not None

    name = "store"

    async def start(self) -> None:
        """The component's start: `open()`. Raises `StoreError` naming the path and the fix."""
        self.open()

    async def stop(self, budget_s: float = 0.0) -> None:
        """The component's stop: `close()`."""
        self.close()

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

    def _write(self, statements: Iterable[tuple[str, tuple[object, ...]]]) -> int:
        """Run `statements` in one transaction; returns the rows they changed. Tracks `healthy` and `last_error`."""
        # Runs of the same statement (a commit's step rows and spans) go to SQLite as one `executemany`: a commit
        # of many steps was mostly per-statement overhead.
        batches: list[tuple[str, list[tuple[object, ...]]]] = []
        for sql, params in statements:
            if batches and batches[-1][0] == sql:
                batches[-1][1].append(params)
            else:
                batches.append((sql, [params]))
        with self._lock:
            db = self._conn()
            changed = 0
            try:
                db.execute("BEGIN")
                for sql, rows in batches:
                    cursor = db.execute(sql, rows[0]) if len(rows) == 1 else db.executemany(sql, rows)
                    changed += max(0, cursor.rowcount)
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):  # a disk that refused the write may refuse this too
                        db.execute("ROLLBACK")
                self._failed_write(exc)
                raise StoreError(self.last_error or str(exc)) from exc
            # A transaction that changed no row wrote nothing (a prune with nothing to prune), so it proves nothing:
            # taken as a recovery, it would make readiness and the log flap on every such call during a full disk.
            if self._failed_writes and changed:
                log.info("checkpoint store %s writable again, after %d failed write(s)", self._path,
                         self._failed_writes)  # fmt: skip
                self._failed_writes = 0
            if not self._failed_writes:
                self.healthy = True
            return changed

    def _failed_write(self, exc: sqlite3.Error) -> None:
        """Record a failed write; the first of an episode is logged (one line), the rest only counted until a write
        succeeds again, so a full disk is two log lines, not one per attempt."""
        self.healthy = False
        self.last_error = f"cannot write {self._path}: {exc}"
        if not self._failed_writes:
            log.error("checkpoint store: %s; nothing is lost: progress is read again and written once the store "
                      "takes writes (check the disk and STEPSCOPE_STATE's permissions)", self.last_error)  # fmt: skip
        self._failed_writes += 1

    def _read(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                rows = self._conn().execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                problem = f"cannot read {self._path}: {exc}"
                if not self._failed_reads:
                    log.error("checkpoint store: %s; it is read again later", problem)
                self._failed_reads += 1
                raise StoreError(problem) from exc
            if self._failed_reads:
                log.info("checkpoint store %s readable again, after %d failed read(s)", self._path, self._failed_reads)
                self._failed_reads = 0
            return rows

    # --- runs -------------------------------------------------------------------------------------------------

    def active_runs(self) -> list[RunProgress]:
        """Every run not yet finished, with its committed progress."""
        progress = {
            str(run_id): RunProgress(UnitRef(str(thread_id), str(run_id)), str(cursor) if cursor else None)
            for run_id, thread_id, cursor in self._read("SELECT run_id, thread_id, cursor FROM runs WHERE done = 0")
        }
        for run_id, step_id in self._read(
            "SELECT s.run_id, s.step_id FROM steps s JOIN runs r ON r.run_id = s.run_id WHERE r.done = 0"
        ):
            progress[str(run_id)].committed.add(str(step_id))
        return list(progress.values())

    def known_units(self, run_ids: Iterable[str]) -> dict[str, str]:
        """The units among `run_ids` the store has seen (active or done), each with its container (thread)."""
        ids = list(run_ids)
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self._read(f"SELECT run_id, thread_id FROM runs WHERE run_id IN ({marks})", tuple(ids))  # noqa: S608
        return {str(run_id): str(thread_id) for run_id, thread_id in rows}

    def known_runs(self, run_ids: Iterable[str]) -> set[str]:
        """The subset of `run_ids` the store has seen (active or done)."""
        ids = list(run_ids)
        if not ids:
            return set()
        marks = ",".join("?" * len(ids))
        return {str(r[0]) for r in self._read(f"SELECT run_id FROM runs WHERE run_id IN ({marks})", tuple(ids))}  # noqa: S608

    def add_run(self, ref: UnitRef, now: float) -> None:
        """Record a run as tracked (no-op when known)."""
        self._write([("INSERT OR IGNORE INTO runs (run_id, thread_id, updated_at) VALUES (?, ?, ?)",
                      (ref.unit_id, ref.container_id, now))])  # fmt: skip

    def commit_steps(
        self, ref: UnitRef, step_ids: Iterable[str], cursor: str | None, now: float, spans: Iterable[bytes] = ()
    ) -> None:
        """Mark steps committed, move the run's cursor and append their encoded spans to the backlog, atomically."""
        statements: list[tuple[str, tuple[object, ...]]] = [
            ("INSERT OR IGNORE INTO runs (run_id, thread_id, updated_at) VALUES (?, ?, ?)",
             (ref.unit_id, ref.container_id, now)),
            ("UPDATE runs SET cursor = ?, updated_at = ? WHERE run_id = ?", (cursor, now, ref.unit_id)),
        ]  # fmt: skip
        statements.extend(("INSERT OR IGNORE INTO steps VALUES (?, ?)", (ref.unit_id, s)) for s in step_ids)
        statements.extend(_backlog_inserts(spans, now))
        self._write(statements)

    def finish_run(self, ref: UnitRef, now: float, spans: Iterable[bytes] = ()) -> None:
        """The run and all its steps are committed: keep one `done` row, drop its step rows, append its spans."""
        statements: list[tuple[str, tuple[object, ...]]] = [
            ("INSERT OR IGNORE INTO runs (run_id, thread_id, updated_at) VALUES (?, ?, ?)",
             (ref.unit_id, ref.container_id, now)),
            ("UPDATE runs SET done = 1, cursor = NULL, updated_at = ? WHERE run_id = ?", (now, ref.unit_id)),
            ("DELETE FROM steps WHERE run_id = ?", (ref.unit_id,)),
            ("DELETE FROM watched WHERE run_id = ?", (ref.unit_id,)),
        ]  # fmt: skip
        statements.extend(_backlog_inserts(spans, now))
        self._write(statements)

    def forget_run(self, ref: UnitRef) -> None:
        """Remove every trace of a run (it vanished from the API)."""
        self._write([("DELETE FROM runs WHERE run_id = ?", (ref.unit_id,)),
                     ("DELETE FROM steps WHERE run_id = ?", (ref.unit_id,)),
                     ("DELETE FROM watched WHERE run_id = ?", (ref.unit_id,))])  # fmt: skip

    def prune(self, finished_before: float) -> int:
        """Drop `done` rows older than the lookback window; returns how many went."""
        return self._write([("DELETE FROM runs WHERE done = 1 AND updated_at < ?", (finished_before,))])

    # --- span backlog -----------------------------------------------------------------------------------------

    def backlog(self, limit: int) -> list[tuple[int, bytes]]:
        """The oldest `limit` spans waiting for delivery, as (sequence number, encoded span)."""
        rows = self._read("SELECT seq, span FROM backlog ORDER BY seq LIMIT ?", (limit,))
        return [(int(seq), bytes(span)) for seq, span in rows]

    def backlog_stats(self) -> tuple[int, float | None]:
        """How many spans wait, and when the oldest of them was committed (None when none wait)."""
        return int(self._read("SELECT count(*) FROM backlog")[0][0]), self.oldest_backlog()

    def oldest_backlog(self) -> float | None:
        """When the oldest waiting span was committed (None when none waits): one row, not a count of them all."""
        oldest = self._read("SELECT added_at FROM backlog ORDER BY seq LIMIT 1")
        return float(oldest[0][0]) if oldest else None

    def delete_backlog(self, seqs: Iterable[int]) -> None:
        """Spans the backend took (or that were dropped on purpose) leave the backlog."""
        self._write([("DELETE FROM backlog WHERE seq = ?", (seq,)) for seq in seqs])

    def trim_backlog(self, max_spans: int, added_before: float) -> tuple[int, int]:
        """Drop spans older than `added_before`, then the oldest beyond `max_spans`; returns (expired, over size)."""
        expired = self._write([("DELETE FROM backlog WHERE added_at < ?", (added_before,))])
        count = int(self._read("SELECT count(*) FROM backlog")[0][0])
        over = max(0, count - max_spans)
        if over:
            self._write([("DELETE FROM backlog WHERE seq IN (SELECT seq FROM backlog ORDER BY seq LIMIT ?)", (over,))])
        return expired, over

    # --- watch registrations ------------------------------------------------------------------------------------

    def watch(self, thread_id: str, run_id: str | None, now: float) -> None:
        self._write([("INSERT OR IGNORE INTO watched VALUES (?, ?, ?)", (thread_id, run_id or "", now))])

    def unwatch(self, thread_id: str, run_id: str | None) -> None:
        self._write([("DELETE FROM watched WHERE thread_id = ? AND run_id = ?", (thread_id, run_id or ""))])

    def watched(self) -> list[tuple[str, str | None]]:
        """Registered (thread_id, run_id or None) pairs."""
        return [(str(t), str(r) or None) for t, r in self._read("SELECT thread_id, run_id FROM watched")]


def _backlog_inserts(spans: Iterable[bytes], now: float) -> list[tuple[str, tuple[object, ...]]]:
    return [("INSERT INTO backlog (added_at, span) VALUES (?, ?)", (now, span)) for span in spans]
