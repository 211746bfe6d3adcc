"""The store's span backlog and the refusals of `SqliteStore.open()`."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stepscope.core.records import UnitRef
from stepscope.core.store import APPLICATION_ID, SCHEMA_VERSION, SqliteStore
from stepscope.errors import StoreError

REF = UnitRef("thread_a", "run_1")
# The schema stepscope 0.x wrote (schema_version 1): no backlog table and no application_id mark.
V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0, cursor TEXT,
    updated_at REAL NOT NULL
);
CREATE INDEX runs_done_updated ON runs (done, updated_at);
CREATE TABLE steps (run_id TEXT NOT NULL, step_id TEXT NOT NULL, PRIMARY KEY (run_id, step_id)) WITHOUT ROWID;
CREATE TABLE watched (
    thread_id TEXT NOT NULL, run_id TEXT NOT NULL DEFAULT '', added_at REAL NOT NULL, PRIMARY KEY (thread_id, run_id)
) WITHOUT ROWID;
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO runs VALUES ('run_1', 'thread_a', 0, 'step_2', 50.0);
INSERT INTO steps VALUES ('run_1', 'step_1'), ('run_1', 'step_2');
INSERT INTO watched VALUES ('thread_a', '', 40.0);
"""


@pytest.fixture
def file_store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(str(tmp_path / "state.db"))
    s.open()
    yield s
    s.close()


def _healthy(store: SqliteStore) -> bool:
    """The flag read through a call, so that type narrowing does not outlive the write that flips it."""
    return store.healthy


def _spans(store: SqliteStore) -> list[bytes]:
    return [span for _, span in store.backlog(1000)]


class TestAppend:
    def test_commit_appends_spans_in_commit_order(self, store: SqliteStore) -> None:
        """Spans of commit_steps and finish_run join the backlog oldest first, with increasing sequence numbers."""
        store.commit_steps(REF, ["step_1"], "step_1", 100.0, spans=[b"s1", b"c1"])
        store.commit_steps(REF, ["step_2"], "step_2", 101.0, spans=[b"s2"])
        store.finish_run(REF, 102.0, spans=[b"run"])
        rows = store.backlog(10)
        assert [span for _, span in rows] == [b"s1", b"c1", b"s2", b"run"]
        seqs = [seq for seq, _ in rows]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == 4
        assert store.backlog_stats() == (4, 100.0)

    def test_commit_without_spans_leaves_the_backlog_alone(self, store: SqliteStore) -> None:
        """A commit with traces off moves progress and adds nothing to the backlog."""
        store.commit_steps(REF, ["step_1"], "step_1", 100.0)
        assert store.backlog(10) == []
        assert store.backlog_stats() == (0, None)
        assert store.active_runs()[0].committed == {"step_1"}

    def test_failed_commit_keeps_neither_progress_nor_spans(self, file_store: SqliteStore, tmp_path: Path) -> None:
        """A commit whose span append fails rolls back the steps and cursor too, and marks the store unhealthy."""
        file_store.commit_steps(REF, ["step_1"], "step_1", 100.0, spans=[b"s1"])
        other = sqlite3.connect(tmp_path / "state.db")
        # A trigger refuses one span: the failure happens after the step rows were written in the transaction.
        other.execute("CREATE TRIGGER refuse BEFORE INSERT ON backlog WHEN NEW.span = x'626164' "
                      "BEGIN SELECT RAISE(ABORT, 'disk says no'); END")  # fmt: skip
        other.commit()
        with pytest.raises(StoreError, match="disk says no") as caught:
            file_store.commit_steps(REF, ["step_2", "step_3"], "step_3", 101.0, spans=[b"ok", b"bad"])
        assert str(tmp_path / "state.db") in str(caught.value)
        (progress,) = file_store.active_runs()
        assert progress.cursor == "step_1"
        assert progress.committed == {"step_1"}
        assert _spans(file_store) == [b"s1"]
        assert not _healthy(file_store)
        assert str(tmp_path / "state.db") in str(file_store.last_error)

        other.execute("DROP TRIGGER refuse")
        other.commit()
        other.close()
        file_store.commit_steps(REF, ["step_2"], "step_2", 102.0, spans=[b"s2"])
        assert _healthy(file_store)
        assert _spans(file_store) == [b"s1", b"s2"]

    def test_backlog_survives_reopen(self, tmp_path: Path) -> None:
        """Spans committed by one process are read back, in order, by the next one on the same file."""
        path = str(tmp_path / "state.db")
        first = SqliteStore(path)
        first.open()
        first.commit_steps(REF, ["step_1"], "step_1", 100.0, spans=[b"s1", b"s2"])
        first.close()
        second = SqliteStore(path)
        second.open()
        assert _spans(second) == [b"s1", b"s2"]
        assert second.backlog_stats() == (2, 100.0)
        second.close()


class TestReadAndDelete:
    def test_backlog_reads_the_oldest_up_to_limit(self, store: SqliteStore) -> None:
        """backlog(limit) returns only the `limit` oldest spans."""
        store.commit_steps(REF, ["step_1"], "step_1", 100.0, spans=[b"a", b"b", b"c", b"d"])
        assert [span for _, span in store.backlog(2)] == [b"a", b"b"]

    def test_delete_removes_exactly_the_given_rows(self, store: SqliteStore) -> None:
        """delete_backlog drops the named rows only; unknown sequence numbers are ignored."""
        store.commit_steps(REF, ["step_1"], "step_1", 100.0, spans=[b"a", b"b", b"c"])
        (seq_a, _), (seq_b, _), _ = store.backlog(10)
        store.delete_backlog([seq_b, 10_000])
        assert _spans(store) == [b"a", b"c"]
        store.delete_backlog([seq_a])
        assert _spans(store) == [b"c"]
        store.delete_backlog([])
        assert _spans(store) == [b"c"]

    def test_sequence_numbers_are_never_reused(self, store: SqliteStore) -> None:
        """A span appended after the newest was deleted gets a new sequence number, so a stale delete cannot hit it."""
        store.commit_steps(REF, ["step_1"], "step_1", 100.0, spans=[b"a"])
        ((seq_a, _),) = store.backlog(10)
        store.delete_backlog([seq_a])
        store.commit_steps(REF, ["step_2"], "step_2", 101.0, spans=[b"b"])
        ((seq_b, _),) = store.backlog(10)
        assert seq_b > seq_a
        store.delete_backlog([seq_a])  # a second delete of the old row, e.g. from a retried batch
        assert _spans(store) == [b"b"]

    def test_stats_follow_the_oldest_waiting_span(self, store: SqliteStore) -> None:
        """backlog_stats reports the count and the commit time of the oldest span still waiting."""
        store.commit_steps(REF, ["step_1"], "step_1", 100.0, spans=[b"a"])
        store.commit_steps(REF, ["step_2"], "step_2", 160.0, spans=[b"b", b"c"])
        assert store.backlog_stats() == (3, 100.0)
        ((seq_a, _),) = store.backlog(1)
        store.delete_backlog([seq_a])
        assert store.backlog_stats() == (2, 160.0)


class TestTrim:
    def test_trim_by_age_drops_only_older_spans(self, store: SqliteStore) -> None:
        """Spans committed before the horizon go and are counted as expired; newer ones stay."""
        for i, at in enumerate((10.0, 20.0, 30.0)):
            store.commit_steps(REF, [f"step_{i}"], f"step_{i}", at, spans=[f"s{i}".encode()])
        assert store.trim_backlog(max_spans=100, added_before=25.0) == (2, 0)
        assert _spans(store) == [b"s2"]
        assert store.backlog_stats() == (1, 30.0)

    def test_trim_by_size_keeps_the_newest(self, store: SqliteStore) -> None:
        """Beyond max_spans the oldest spans go and are counted as over size."""
        store.commit_steps(REF, ["step_1"], "step_1", 100.0, spans=[b"a", b"b", b"c", b"d", b"e"])
        assert store.trim_backlog(max_spans=2, added_before=0.0) == (0, 3)
        assert _spans(store) == [b"d", b"e"]

    def test_trim_by_age_then_size(self, store: SqliteStore) -> None:
        """Age is applied first, then size on what is left; each count says what it removed."""
        store.commit_steps(REF, ["step_1"], "step_1", 10.0, spans=[b"old1", b"old2"])
        store.commit_steps(REF, ["step_2"], "step_2", 50.0, spans=[b"n1", b"n2", b"n3"])
        assert store.trim_backlog(max_spans=1, added_before=20.0) == (2, 2)
        assert _spans(store) == [b"n3"]

    def test_trim_within_bounds_removes_nothing(self, store: SqliteStore) -> None:
        """A backlog within both bounds is left as it is."""
        store.commit_steps(REF, ["step_1"], "step_1", 100.0, spans=[b"a", b"b"])
        assert store.trim_backlog(max_spans=2, added_before=100.0) == (0, 0)
        assert _spans(store) == [b"a", b"b"]


# The immutable flag (chattr +i) set through its ioctl, so no subprocess runs: the values of <linux/fs.h>.
_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS, _FS_IMMUTABLE_FL = 0x80086601, 0x40086602, 0x10


def _set_flags(path: Path, change: Callable[[int], int]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        (flags,) = struct.unpack("i", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, struct.pack("i", 0)))
        fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("i", change(flags)))
    finally:
        os.close(fd)


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[None]:
    """Make `path` unwritable for this process: chmod for a normal user; root ignores modes, so the immutable flag."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o644)
        return
    _set_flags(path, lambda flags: flags | _FS_IMMUTABLE_FL)
    try:
        yield
    finally:
        _set_flags(path, lambda flags: flags & ~_FS_IMMUTABLE_FL)


class TestOpenRefusals:
    @pytest.mark.parametrize(
        ("kind", "reason"),
        [
            ("empty", "empty file"),
            ("foreign_tables", "not a stepscope store"),
            ("foreign_application_id", "not a stepscope store"),
            ("text", "not an SQLite database"),
        ],
    )
    def test_a_file_that_is_not_our_store_is_refused_untouched(self, tmp_path: Path, kind: str, reason: str) -> None:
        """An empty file, another program's database or a text file is refused with its path, and left as it was."""
        path = tmp_path / "state.db"
        if kind == "empty":
            path.touch()
        elif kind == "text":
            path.write_text("checkpoint: step_1\n" * 20, encoding="utf-8")
        else:
            db = sqlite3.connect(path)
            if kind == "foreign_tables":
                db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
                db.execute("INSERT INTO invoices VALUES (1, 9.5)")
            else:
                db.execute("PRAGMA application_id = 1234")
                db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
            db.commit()
            db.close()
        before = path.read_bytes()
        store = SqliteStore(str(path))
        with pytest.raises(StoreError, match=reason) as caught:
            store.open()
        assert str(path) in str(caught.value)
        assert not store.is_open
        assert path.read_bytes() == before

    def test_read_only_file_is_refused_at_open(self, tmp_path: Path) -> None:
        """A store file the process cannot write is refused at open (not at the first commit), naming the path."""
        path = tmp_path / "state.db"
        first = SqliteStore(str(path))
        first.open()
        first.commit_steps(REF, ["step_1"], "step_1", 100.0, spans=[b"s1"])
        first.close()
        with _read_only(path):
            store = SqliteStore(str(path))
            with pytest.raises(StoreError, match=r"readonly|read-only|permission") as caught:
                store.open()
            assert str(path) in str(caught.value)
            assert not store.is_open

    def test_directory_under_a_file_is_refused(self, tmp_path: Path) -> None:
        """A state path whose parent is a regular file cannot get its directory, and the message names the path."""
        (tmp_path / "afile").write_text("x", encoding="utf-8")
        path = tmp_path / "afile" / "sub" / "state.db"
        with pytest.raises(StoreError, match="cannot create the directory") as caught:
            SqliteStore(str(path)).open()
        assert str(path) in str(caught.value)

    def test_a_directory_is_refused(self, tmp_path: Path) -> None:
        """A state path that is a directory is refused with its path."""
        with pytest.raises(StoreError, match="directory") as caught:
            SqliteStore(str(tmp_path)).open()
        assert str(tmp_path) in str(caught.value)


class TestAdoptV1:
    def test_v1_store_is_adopted_with_its_progress(self, tmp_path: Path) -> None:
        """A schema-1 store without the application id keeps its progress, gains the backlog and is marked ours."""
        path = tmp_path / "state.db"
        db = sqlite3.connect(path)
        db.executescript(V1_SCHEMA)
        db.close()
        store = SqliteStore(str(path))
        store.open()
        (progress,) = store.active_runs()
        assert progress.ref == REF
        assert progress.cursor == "step_2"
        assert progress.committed == {"step_1", "step_2"}
        assert store.watched() == [("thread_a", None)]
        store.commit_steps(REF, ["step_3"], "step_3", 60.0, spans=[b"s3"])
        assert _spans(store) == [b"s3"]
        store.close()

        check = sqlite3.connect(path)
        assert check.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert check.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
        check.close()
        again = SqliteStore(str(path))
        again.open()  # now recognised by its mark
        assert _spans(again) == [b"s3"]
        again.close()
