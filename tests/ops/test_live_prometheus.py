"""End to end against a real Prometheus: stepscope's metrics, rules and dashboard queries on live data.

`stepscope simulate --scenario faulty` plays a failure-heavy workload, `stepscope serve` watches its threads, and
Debian's prometheus (free loopback port, exemplar storage on, 1 s scrape and evaluation) scrapes it with a test
copy of the rules whose `for:` is shortened to 5 s. Every dashboard query and recording rule must return data,
exemplars must come back, and the run-failure-ratio alert must fire. One stack serves the whole module.
"""

from __future__ import annotations

import functools
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from stepscope.contract import dashboards
from tests.kit.contract import REPO
from tests.kit.processes import ProcessGroup
from tests.kit.waits import holds_within
from tests.procs import free_port as pick_free_port

pytestmark = pytest.mark.slow

T = TypeVar("T")
STEPSCOPE = str(Path(sys.executable).with_name("stepscope"))
RULES_FILE = REPO / "deploy" / "prometheus" / "stepscope.rules.yml"
# Grafana macros and variables as a dashboard user would see them with "All" selected.
LIVE_MACROS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
    "$job": "stepscope",
    "$protocol": ".*",
    "$assistant_id": ".*",
    "$model": ".*",
}
DEADLINE_S = 60.0
SIMULATOR_ARGS = ("--host", "127.0.0.1", "--port", "0", "--scenario", "faulty", "--speed", "20", "--seed", "1")


@dataclass
class Stack:
    """The running simulator, bridge and Prometheus, with a client and the processes' logs for diagnosis."""

    prometheus: str
    client: httpx.Client
    group: ProcessGroup

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout: float = DEADLINE_S) -> T:
        """Poll ``probe`` until it returns something truthy; fail with every process' log otherwise."""
        found: list[T | None] = [None]

        def holds() -> bool:
            found[0] = probe()
            return bool(found[0])

        def alive() -> str | None:
            dead = [p.name for p in self.group.started if not p.running()]
            return f"{dead} exited while waiting for {what}\n{self.group.logs()}" if dead else None

        errors = (httpx.HTTPError, ValueError, KeyError)
        if not holds_within(holds, timeout, every=0.5, alive=alive, ignoring=errors) or found[0] is None:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{self.group.logs()}")
        return found[0]

    def api(self, path: str, **params: Any) -> Any:
        response = self.client.get(f"{self.prometheus}/api/v1/{path}", params=params)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result


def _expand(expr: str) -> str:
    for macro, value in sorted(LIVE_MACROS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(macro, value)
    return expr


def _port_in_log(log: str) -> int | None:
    match = re.search(r"http://127\.0\.0\.1:(\d+)", log)
    return int(match.group(1)) if match else None


def _healthy(client: httpx.Client, url: str) -> bool:
    return client.get(url).status_code == 200


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, prometheus_binary: str) -> Iterator[Stack]:
    """Simulator + `stepscope serve` + Prometheus, started once for the module and stopped at its end."""
    tmp = tmp_path_factory.mktemp("live")
    group = ProcessGroup(tmp)
    client = httpx.Client(timeout=5.0)
    stack = Stack("", client, group)
    try:
        sim = group.start(
            "simulate",
            [STEPSCOPE, "simulate", *SIMULATOR_ARGS],
        )
        sim_port = stack.wait_for("the simulator's URL", lambda: _port_in_log(sim.log()), timeout=20)
        truth = client.get(f"http://127.0.0.1:{sim_port}/_sim/truth").json()
        listen = pick_free_port()
        env = {
            "OPENAI_BASE_URL": f"http://127.0.0.1:{sim_port}/v1",
            "OPENAI_API_KEY": "sk-sim",
            "STEPSCOPE_THREADS": ",".join(truth["threads"]),
            "STEPSCOPE_LISTEN": f"127.0.0.1:{listen}",
            "STEPSCOPE_POLL_INTERVAL": "0.2",
            "STEPSCOPE_STATE": str(tmp / "state.db"),
            "OTEL_TRACES_EXPORTER": "none",
        }
        group.start("serve", [STEPSCOPE, "serve"], env)
        stack.wait_for("stepscope /readyz", lambda: _healthy(client, f"http://127.0.0.1:{listen}/readyz"), 20)

        # The test copy of the rules: identical except that alerts wait 5 s instead of minutes.
        rules = re.sub(r"(?m)^(\s+for:) \S+$", r"\1 5s", RULES_FILE.read_text(encoding="utf-8"))
        (tmp / "rules.yml").write_text(rules, encoding="utf-8")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp / "rules.yml")],
            "scrape_configs": [{"job_name": "stepscope", "static_configs": [{"targets": [f"127.0.0.1:{listen}"]}]}],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        prom_port = pick_free_port()
        stack.prometheus = f"http://127.0.0.1:{prom_port}"
        group.start(
            "prometheus",
            [
                prometheus_binary,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--enable-feature=exemplar-storage",
                "--log.level=warn",
            ],
        )
        stack.wait_for("Prometheus /-/ready", lambda: _healthy(client, f"{stack.prometheus}/-/ready"), 30)
        # Results stay empty until scrapes land; every test starts after the first successful one.
        stack.wait_for("a successful scrape", lambda: stack.query('up{job="stepscope"} == 1'), 30)
        yield stack
    finally:
        client.close()
        group.stop_all()


def _wait_all_return_data(stack: Stack, exprs: set[str], what: str) -> None:
    pending = set(exprs)

    def probe() -> bool:
        for expr in sorted(pending):
            if stack.query(expr):
                pending.discard(expr)
        return not pending

    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline and pending:
        try:
            if probe():
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    pytest.fail(f"{what} without data after {DEADLINE_S:.0f} s:\n" + "\n".join(sorted(pending)) + stack.group.logs())


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    """Each target of both dashboards returns a non-empty result against the live stack."""
    exprs = {
        _expand(target["expr"])
        for model in dashboards.dashboards().values()
        for panel in dashboards.iter_panels(model["panels"])
        for target in panel.get("targets", [])
    }
    assert len(exprs) > 20
    _wait_all_return_data(stack, exprs, "dashboard queries")


def test_every_recording_rule_returns_data(stack: Stack) -> None:
    """Each recording rule produces series, and Prometheus reports every rule healthy."""
    records = {
        r["record"] for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"] if "record" in r
    }
    _wait_all_return_data(stack, records, "recording rules")
    rules = [rule for group in stack.api("rules")["groups"] for rule in group["rules"]]
    assert {rule["health"] for rule in rules} == {"ok"}, [r for r in rules if r["health"] != "ok"]


def test_template_variables_have_values(stack: Stack) -> None:
    """The job, protocol, assistant_id and model variables' label_values() queries return values; protocol reads
    assistants for `stepscope serve` against the Assistants simulator."""
    jobs = stack.wait_for("job values", lambda: stack.api("label/job/values", **{"match[]": "stepscope_build_info"}))
    assert jobs == ["stepscope"]
    match = {"match[]": 'stepscope_runs_total{job=~"stepscope"}'}
    for label in ("assistant_id", "model"):
        values = stack.wait_for(f"{label} values", functools.partial(stack.api, f"label/{label}/values", **match))
        assert all(isinstance(v, str) and v for v in values), values
    protocols = stack.wait_for("protocol values", functools.partial(stack.api, "label/protocol/values", **match))
    assert protocols == ["assistants"]


@pytest.mark.parametrize("metric", sorted(dashboards.EXEMPLAR_METRICS))
def test_exemplars_come_back(stack: Stack, metric: str) -> None:
    """Prometheus returns exemplars with a 32-hex trace_id and 16-hex span_id for each exemplar-carrying metric."""
    series = metric if metric.endswith("_total") else f"{metric}_bucket"

    def exemplars() -> list[dict[str, Any]]:
        now = time.time()
        data = stack.api("query_exemplars", query=series, start=now - 3600, end=now + 3600)
        return [e for group in data for e in group["exemplars"]]

    found = stack.wait_for(f"exemplars of {series}", exemplars)
    assert all(re.fullmatch(r"[0-9a-f]{32}", e["labels"]["trace_id"]) for e in found), found[:3]
    assert all(re.fullmatch(r"[0-9a-f]{16}", e["labels"]["span_id"]) for e in found), found[:3]


def test_run_failure_ratio_alert_fires_and_stepscope_is_not_down(stack: Stack) -> None:
    """Under the faulty scenario StepscopeRunFailureRatioHigh fires while StepscopeDown stays inactive."""

    def firing() -> set[str]:
        return {a["labels"]["alertname"] for a in stack.api("alerts")["alerts"] if a["state"] == "firing"}

    names = stack.wait_for("StepscopeRunFailureRatioHigh firing", lambda: "StepscopeRunFailureRatioHigh" in firing())
    assert names
    assert "StepscopeDown" not in firing()
    ratio = stack.query("job:stepscope_runs_failed_per_runs:ratio_rate5m")
    assert float(ratio[0]["value"][1]) > 0.1
