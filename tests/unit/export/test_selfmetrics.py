"""stepscope's own health metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from stepscope.contract.vocabulary import DropReason
from stepscope.errors import InvalidObject
from stepscope.export.selfmetrics import SelfMetrics


def value(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


class TestSelfMetrics:
    def test_known_series_start_at_zero(self) -> None:
        """Drop reasons, the protocol's endpoints and invalid kinds (and `list`), failures and build info exist before
        anything happens."""
        reg = CollectorRegistry()
        SelfMetrics(
            reg, version="1.2.3", endpoints=("get_step",), invalid_kinds=("run", "run_step", "tool_call", "assistant")
        )
        for reason in ("tracked_runs_full", "backlog_full", "label_cap"):
            assert value(reg, "stepscope_dropped_total", reason=reason) == 0
        for kind in ("run", "run_step", "tool_call", "list", "assistant"):
            assert value(reg, "stepscope_invalid_objects_total", kind=kind) == 0
        assert value(reg, "stepscope_span_export_failures_total") == 0
        assert value(reg, "stepscope_build_info", version="1.2.3") == 1
        assert value(reg, "stepscope_api_request_duration_seconds_count", endpoint="get_step") == 0
        assert value(reg, "stepscope_tracked_runs") == 0

    def test_requests_and_last_success(self) -> None:
        """Each request counts by endpoint and code; a 2xx moves the last-success timestamp."""
        reg = CollectorRegistry()
        metrics = SelfMetrics(reg, version="x", clock=lambda: 1234.0)
        metrics.observe_request("list_steps", "200", 0.3)
        metrics.observe_request("list_steps", "200", 0.1)
        metrics.observe_request("get_run", "429", 0.05)
        assert value(reg, "stepscope_api_requests_total", endpoint="list_steps", code="200") == 2
        assert value(reg, "stepscope_api_requests_total", endpoint="get_run", code="429") == 1
        assert value(reg, "stepscope_api_request_duration_seconds_sum", endpoint="list_steps") == 0.4
        assert value(reg, "stepscope_last_successful_poll_timestamp_seconds") == 1234.0

    def test_failed_request_leaves_last_success(self) -> None:
        """Only successful requests count as a successful poll."""
        reg = CollectorRegistry()
        metrics = SelfMetrics(reg, version="x", clock=lambda: 99.0)
        metrics.observe_request("get_run", "error", -1.0)
        assert value(reg, "stepscope_last_successful_poll_timestamp_seconds") == 0
        assert value(reg, "stepscope_api_request_duration_seconds_sum", endpoint="get_run") == 0

    def test_drops_invalid_failures_lag(self) -> None:
        """Drops, invalid objects, export failures and export lag accumulate."""
        reg = CollectorRegistry()
        metrics = SelfMetrics(reg, version="x")
        metrics.dropped(DropReason.BACKLOG_FULL, 3)
        metrics.dropped(DropReason.LABEL_CAP)
        metrics.dropped(DropReason.LABEL_CAP, 0)
        metrics.observe_invalid(InvalidObject("run_step", "bad"))
        metrics.export_failed(5)
        metrics.observe_export_lag(12.0)
        metrics.observe_export_lag(-4.0)
        assert value(reg, "stepscope_dropped_total", reason="backlog_full") == 3
        assert value(reg, "stepscope_dropped_total", reason="label_cap") == 1
        assert value(reg, "stepscope_invalid_objects_total", kind="run_step") == 1
        assert value(reg, "stepscope_span_export_failures_total") == 5
        assert value(reg, "stepscope_export_lag_seconds_count") == 2
        assert value(reg, "stepscope_export_lag_seconds_sum") == 12.0

    def test_tracked_runs_read_at_scrape(self) -> None:
        """The tracked-runs gauge reads its source on every scrape, and a failing source does not break one."""
        reg = CollectorRegistry()
        metrics = SelfMetrics(reg, version="x")
        tracked = [3]
        metrics.set_tracked_runs_source(lambda: tracked[0])
        assert value(reg, "stepscope_tracked_runs") == 3
        tracked[0] = 7
        assert value(reg, "stepscope_tracked_runs") == 7

        def broken() -> int:
            raise RuntimeError("boom")

        metrics.set_tracked_runs_source(broken)
        text = generate_latest(reg).decode()
        assert "stepscope_tracked_runs" not in text.replace("# HELP stepscope_tracked_runs", "")
        assert "stepscope_build_info" in text
