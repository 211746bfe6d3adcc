"""A full store is one episode: writes that need room fail, a write that changes nothing proves nothing, and the
first write that changes a row again ends the episode, with one log line at each end.

The database is made full by SQLite itself: `PRAGMA max_page_count` at its current size refuses any write that
needs another page ("database or disk is full"), while a transaction that changes no row writes no page at all.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepscope.core.records import UnitRef
from stepscope.core.store import SqliteStore
from stepscope.errors import StoreError

REF = UnitRef("thread_1", "run_1")
BIG = b"x" * 100_000  # an encoded span that needs pages of its own


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(str(tmp_path / "state.db"))
    s.open()
    yield s
    s.close()


def _full(store: SqliteStore, full: bool) -> None:
    db = store._db
    assert db is not None
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages if full else 2**30}")


def _healthy(store: SqliteStore) -> bool:
    """The flag read through a call, so that type narrowing does not outlive the write that flips it."""
    return store.healthy


def _store_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.levelname} {r.getMessage()}" for r in caplog.records if r.name == "stepscope.store"]


def test_a_write_that_changes_nothing_does_not_end_a_full_disk(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    """While the store is full, commits fail and readiness stays down even though prunes with nothing to prune
    succeed in between; the episode is one error line and, once a commit succeeds, one line with the count."""
    caplog.set_level(logging.INFO, logger="stepscope.store")
    _full(store, True)
    for step in ("step_1", "step_2", "step_3"):
        with pytest.raises(StoreError, match="full"):
            store.commit_steps(REF, [step], step, 100.0, spans=[BIG])
        assert store.prune(0.0) == 0  # changes nothing, so it writes nothing: it succeeds on a full disk
        assert store.trim_backlog(10, 0.0) == (0, 0)
        assert not _healthy(store)
    _full(store, False)
    store.commit_steps(REF, ["step_1"], "step_1", 100.0, spans=[BIG])
    assert _healthy(store)
    lines = _store_lines(caplog)
    print(f"a full store: {len(lines)} log line(s) for 3 failed commits and 6 writes that changed nothing")
    assert len(lines) == 2, lines
    assert lines[0].startswith("ERROR checkpoint store: cannot write") and "full" in lines[0]
    assert lines[1].startswith("INFO checkpoint store") and lines[1].endswith("writable again, after 3 failed write(s)")


def test_a_write_that_changes_a_row_ends_the_episode(store: SqliteStore) -> None:
    """The first write that changes a row after a failed one makes the store healthy again."""
    _full(store, True)
    with pytest.raises(StoreError):
        store.commit_steps(REF, ["step_1"], "step_1", 100.0, spans=[BIG])
    _full(store, False)
    store.add_run(REF, 100.0)
    assert _healthy(store)
    assert store.known_runs([REF.unit_id]) == {REF.unit_id}
