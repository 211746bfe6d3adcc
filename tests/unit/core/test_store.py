"""The SQLite checkpoint store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from stepscope.core.records import UnitRef
from stepscope.core.store import SqliteStore
from stepscope.errors import StoreError

REF = UnitRef("thread_a", "run_1")


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(str(tmp_path / "sub" / "state.db"))
    s.open()
    return s


class TestProgress:
    def test_progress_survives_reopen(self, tmp_path: Path) -> None:
        """Committed steps and the cursor are read back by a new process on the same file."""
        path = str(tmp_path / "state.db")
        first = SqliteStore(path)
        first.open()
        first.add_run(REF, 100.0)
        first.commit_steps(REF, ["step_1", "step_3"], "step_1", 101.0)
        first.close()
        second = SqliteStore(path)
        second.open()
        (progress,) = second.active_runs()
        assert progress.ref == REF
        assert progress.cursor == "step_1"
        assert progress.committed == {"step_1", "step_3"}

    def test_finish_run_keeps_one_row_and_drops_steps(self, store: SqliteStore) -> None:
        """A finished run is still known to discovery but no longer active, and its step rows are gone."""
        store.commit_steps(REF, ["step_1"], "step_1", 100.0)
        store.finish_run(REF, 101.0)
        assert store.active_runs() == []
        assert store.known_runs(["run_1", "run_2"]) == {"run_1"}
        assert store._read("SELECT COUNT(*) FROM steps") == [(0,)]

    def test_prune_drops_old_finished_runs_only(self, store: SqliteStore) -> None:
        """Pruning removes finished runs older than the horizon and keeps active ones."""
        store.add_run(UnitRef("thread_a", "run_old"), 10.0)
        store.finish_run(UnitRef("thread_a", "run_old"), 10.0)
        store.add_run(UnitRef("thread_a", "run_active"), 10.0)
        assert store.prune(50.0) == 1
        assert store.known_runs(["run_old", "run_active"]) == {"run_active"}

    def test_forget_run(self, store: SqliteStore) -> None:
        """A forgotten run leaves nothing behind."""
        store.commit_steps(REF, ["step_1"], None, 1.0)
        store.forget_run(REF)
        assert store.known_runs(["run_1"]) == set()

    def test_known_runs_of_nothing(self, store: SqliteStore) -> None:
        """Asking about no runs answers with no runs and no query."""
        assert store.known_runs([]) == set()


class TestWatched:
    def test_watch_and_unwatch(self, store: SqliteStore) -> None:
        """Registrations of threads and runs persist until removed; finishing a run drops its registration."""
        store.watch("thread_a", None, 1.0)
        store.watch("thread_b", "run_9", 1.0)
        assert sorted(store.watched(), key=str) == sorted([("thread_a", None), ("thread_b", "run_9")], key=str)
        store.finish_run(UnitRef("thread_b", "run_9"), 2.0)
        store.unwatch("thread_a", None)
        assert store.watched() == []


class TestLifecycle:
    def test_close_is_idempotent_and_safe_before_open(self, tmp_path: Path) -> None:
        """close() may be called before open() and twice."""
        s = SqliteStore(str(tmp_path / "x.db"))
        s.close()
        s.open()
        s.open()
        s.close()
        s.close()
        assert not s.is_open

    def test_use_before_open_is_a_store_error(self, tmp_path: Path) -> None:
        """Using a closed store raises StoreError, not an sqlite3 exception."""
        with pytest.raises(StoreError, match="not open"):
            SqliteStore(str(tmp_path / "x.db")).active_runs()

    def test_newer_schema_is_refused(self, tmp_path: Path) -> None:
        """A store written by a newer stepscope is refused rather than misread."""
        path = tmp_path / "x.db"
        SqliteStore(str(path)).open()
        db = sqlite3.connect(path)
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
        db.commit()
        db.close()
        with pytest.raises(StoreError, match="newer"):
            SqliteStore(str(path)).open()

    def test_unopenable_path(self, tmp_path: Path) -> None:
        """A path that is a directory cannot be opened and says so."""
        with pytest.raises(StoreError, match="is a directory"):
            SqliteStore(str(tmp_path)).open()

    def test_memory_store(self) -> None:
        """':memory:' gives a working private store."""
        s = SqliteStore(":memory:")
        s.open()
        s.add_run(REF, 1.0)
        assert [p.ref for p in s.active_runs()] == [REF]


class TestFailures:
    def test_broken_database_raises_store_errors(self, tmp_path: Path) -> None:
        """SQLite failures on write, read and prune surface as StoreError, and a failed write leaves no transaction."""
        path = tmp_path / "x.db"
        s = SqliteStore(str(path))
        s.open()
        other = sqlite3.connect(path)
        other.executescript("DROP TABLE steps; DROP TABLE runs;")
        other.close()
        with pytest.raises(StoreError, match="cannot write"):
            s.commit_steps(REF, ["step_1"], None, 1.0)
        assert not s._conn().in_transaction
        with pytest.raises(StoreError, match="cannot read"):
            s.active_runs()
        with pytest.raises(StoreError, match="cannot write"):
            s.prune(1.0)
