"""Logging: flood suppression, the JSON format, and records diverted from the terminal while a view is live."""

from __future__ import annotations

import io
import json
import logging

from stepscope.commands.logs import DuplicateFilter, LastWarning, diverted, setup_logging


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("stepscope.test", logging.WARNING, __file__, 1, msg, args, None)


class TestDuplicateFilter:
    def test_a_burst_passes_then_the_template_is_suppressed(self) -> None:
        """Records of one template pass up to the burst, whatever their arguments, then are dropped."""
        flt = DuplicateFilter(window_s=60, burst=3, clock=Clock())
        passed = [flt.filter(_record("refusing %d spans", n)) for n in range(10)]
        assert passed == [True] * 3 + [False] * 7

    def test_next_window_reports_what_was_suppressed(self) -> None:
        """After the window, the template passes again and says how many were suppressed."""
        clock = Clock()
        flt = DuplicateFilter(window_s=60, burst=2, clock=clock)
        for n in range(5):
            flt.filter(_record("refusing %d spans", n))
        clock.now = 61.0
        record = _record("refusing %d spans", 9)
        assert flt.filter(record)
        assert "3 similar message(s) suppressed" in record.getMessage()

    def test_other_templates_are_independent(self) -> None:
        """Suppressing one template does not affect another."""
        flt = DuplicateFilter(window_s=60, burst=1, clock=Clock())
        assert flt.filter(_record("a %s", 1))
        assert not flt.filter(_record("a %s", 2))
        assert flt.filter(_record("b %s", 1))


def test_json_format_is_one_object_per_line() -> None:
    """JSON logs carry level, logger, message and extra fields, one object per line."""
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    setup_logging("INFO", "json", stream=stream)
    try:
        logging.getLogger("stepscope.x").info("hello %s", "world", extra={"run_count": 3})
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["message"] == "hello world"
    assert line["level"] == "info"
    assert line["logger"] == "stepscope.x"
    assert line["run_count"] == 3


class TestDiverted:
    def test_records_go_to_the_view_while_it_is_live_and_to_the_terminal_after(self) -> None:
        """Inside `diverted`, a warning reaches neither the root's terminal handler nor a library's own one on a
        logger that does not propagate (as uvicorn's); both go to the view's handler, and come back after."""
        terminal = io.StringIO()
        root_handler = logging.StreamHandler(terminal)
        library = logging.getLogger("stepscope.test_logs.library")
        library_handler = logging.StreamHandler(terminal)
        library.addHandler(library_handler)
        library.propagate = False
        root = logging.getLogger()
        root.addHandler(root_handler)
        warnings = LastWarning()
        try:
            with diverted(warnings, [terminal]):
                logging.getLogger("stepscope.test_logs").warning("from stepscope")
                library.error("from a library")
                logging.getLogger("stepscope.test_logs").info("below the view's level")
            assert terminal.getvalue() == ""
            assert warnings.count == 2
            assert warnings.line is not None and warnings.line.endswith(
                "ERROR stepscope.test_logs.library: from a library"
            )
            logging.getLogger("stepscope.test_logs").warning("after the view")
            library.error("after the view too")
            assert terminal.getvalue() == "after the view\nafter the view too\n"
            assert warnings.count == 2
            assert warnings not in root.handlers and warnings not in library.handlers
        finally:
            root.removeHandler(root_handler)
            library.removeHandler(library_handler)
            library.propagate = True
