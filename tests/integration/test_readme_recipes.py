"""The recipes of docs/recipes.md ("From the demo to a deployment", linked below README's Quickstart), run as written.

Each recipe block in docs/recipes.md follows a marker line ``<!-- recipe: NAME -->``; the blocks are read from that
file itself, so documentation and test cannot drift. The shell blocks run in bash exactly as written except for ports:
the simulator's 8089 and the collector's 4318 become free ones, and ``STEPSCOPE_LISTEN`` (the recipes leave it at
its default, 127.0.0.1:9464) points ``serve`` at a free port. ``stepscope`` and ``python3`` come from this venv.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import httpx
import pytest
import yaml

from stepscope.testing import OtlpReceiver
from tests.kit.waits import holds_within
from tests.procs import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
RECIPES = REPO / "docs" / "recipes.md"
RULES_FILE = REPO / "deploy" / "prometheus" / "stepscope.rules.yml"
_RECIPE = re.compile(r"^<!-- recipe: ([a-z-]+) -->\n```[a-z]+\n(.*?)^```", re.MULTILINE | re.DOTALL)
SIM_PORT, OTLP_PORT = "8089", "4318"
DEADLINE_S = 20.0


def recipes() -> dict[str, str]:
    """Recipe name -> the text of the fenced block after its marker."""
    found = _RECIPE.findall(RECIPES.read_text(encoding="utf-8"))
    return dict(found)


class Shell:
    """``bash -c SCRIPT`` in a session of its own, so stopping it signals every process the script started."""

    def __init__(self, script: str, cwd: Path, env: Mapping[str, str], name: str) -> None:
        self.log_path = cwd / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                ["bash", "-c", script], cwd=cwd, env=dict(env), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]

    def stop(self) -> None:
        """SIGTERM to the whole session, SIGKILL after 15 s; idempotent."""
        if self.popen.poll() is not None:
            return
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


class Terminals:
    """The shells a recipe asks for, each like a terminal of its own; all are stopped at teardown."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.listen = f"127.0.0.1:{free_port()}"
        bin_dir = str(Path(sys.executable).parent)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STEPSCOPE_", "OPENAI_"))}
        self.env = {**base, "PATH": f"{bin_dir}:{base.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}
        self.shells: list[Shell] = []

    def run(self, script: str, name: str) -> Shell:
        shell = Shell(script, self.cwd, {**self.env, "STEPSCOPE_LISTEN": self.listen}, name)
        self.shells.append(shell)
        return shell

    def logs(self) -> str:
        return "\n".join(f"----- {s.log_path.name} (exit {s.popen.poll()}) -----\n{s.output()}" for s in self.shells)

    def wait_for(self, what: str, probe: Callable[[], object]) -> None:
        """Poll ``probe`` until it is truthy; fail with every shell's output when a shell dies or time runs out."""

        def alive() -> str | None:
            if any(s.popen.poll() is not None for s in self.shells):
                return f"a recipe's process exited while waiting for {what}\n{self.logs()}"
            return None

        if not holds_within(probe, DEADLINE_S, every=0.2, alive=alive):
            pytest.fail(f"timed out waiting for {what}\n{self.logs()}")

    def close(self) -> None:
        """Stop every shell, last started first; idempotent."""
        for shell in reversed(self.shells):
            shell.stop()


def _sample_sum(text: str, metric: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{metric}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE))


def _counting(base: str) -> bool:
    text = httpx.get(f"{base}/metrics", timeout=2).text
    return _sample_sum(text, "stepscope_runs_total") > 0 and _sample_sum(text, "stepscope_run_steps_total") > 0


@pytest.fixture
def terminals(tmp_path: Path) -> Iterator[Terminals]:
    """A :class:`Terminals` working in ``tmp_path`` (where serve keeps its default state file)."""
    group = Terminals(tmp_path)
    try:
        yield group
    finally:
        group.close()


def _start_simulator(terminals: Terminals) -> tuple[str, str]:
    """Run the `simulate` recipe on a free port; returns (port, root URL) once it answers."""
    port = str(free_port())
    terminals.run(recipes()["simulate"].replace(SIM_PORT, port), "simulate")
    root = f"http://127.0.0.1:{port}"
    terminals.wait_for("the simulator", lambda: httpx.get(f"{root}/_sim/health", timeout=2).status_code == 200)
    return port, root


def test_quickstart_keeps_its_two_commands_and_leads_to_the_recipes() -> None:
    """Quickstart's block is still `make demo` and `make test`, it links the recipes, and each recipe has its ports."""
    quickstart = README.read_text(encoding="utf-8").split("## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", quickstart, re.DOTALL)
    assert block is not None
    assert [line.split("#")[0].strip() for line in block.group(1).splitlines()] == ["make demo", "make test"]
    assert "](docs/recipes.md)" in quickstart
    found = recipes()
    assert set(found) == {"simulate", "metrics-only", "with-traces", "prometheus-rules", "prometheus-config"}
    assert SIM_PORT in found["simulate"] and SIM_PORT in found["metrics-only"]
    assert OTLP_PORT in found["with-traces"]


def test_metrics_only_recipe_counts_runs_and_steps_without_a_trace_backend(terminals: Terminals) -> None:
    """The simulate and metrics-only recipes, run as written, watch every simulator thread and count runs and steps."""
    recipe = recipes()["metrics-only"]
    assert "OTEL_TRACES_EXPORTER=none" in recipe
    port, root = _start_simulator(terminals)
    terminals.run(recipe.replace(SIM_PORT, port), "serve")
    base = f"http://{terminals.listen}"
    terminals.wait_for("serve to be ready", lambda: httpx.get(f"{base}/readyz", timeout=2).status_code == 200)
    threads = httpx.get(f"{root}/_sim/truth", timeout=10).json()["threads"]
    status = httpx.get(f"{base}/v1/status", timeout=5).json()
    assert status["watched_threads"] == len(threads) > 0, terminals.logs()
    terminals.wait_for("stepscope_runs_total and stepscope_run_steps_total to count", lambda: _counting(base))


def test_traces_recipe_delivers_spans_to_the_otlp_endpoint(terminals: Terminals) -> None:
    """The traces recipe, after the metrics-only exports, sends run spans to the OTLP endpoint and counts steps."""
    exports = [line for line in recipes()["metrics-only"].splitlines() if line.startswith("export ")]
    assert len(exports) == 2
    # The shells stop before the receiver does, so serve's final flush finds its endpoint still there.
    with OtlpReceiver() as receiver, contextlib.closing(terminals):
        port, _ = _start_simulator(terminals)
        otlp_port = str(httpx.URL(receiver.url).port)
        script = "\n".join(exports) + "\n" + recipes()["with-traces"].replace(OTLP_PORT, otlp_port)
        terminals.run(script.replace(SIM_PORT, port), "serve")
        base = f"http://{terminals.listen}"
        terminals.wait_for(
            "spans at the OTLP endpoint", lambda: any(s.name.startswith("invoke_agent") for s in receiver.spans)
        )
        terminals.wait_for("stepscope_runs_total and stepscope_run_steps_total to count", lambda: _counting(base))


def _promtool() -> str:
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(promtool).exists():
        pytest.fail("promtool not found: install Debian's `prometheus` package (`make deps`)")
    return promtool


def test_prometheus_rules_recipe_writes_runbook_links(tmp_path: Path) -> None:
    """The recipe's lines before `sudo install`, run as written but into a temporary directory, write rules whose
    every `runbook_url` is the recipe's address plus the alert's anchor, and promtool accepts them."""
    lines = recipes()["prometheus-rules"].splitlines()
    assert lines[-1].startswith("sudo install ")
    base = re.search(r"^RUNBOOK_BASE=(\S+)$", lines[0], re.MULTILINE)
    assert base is not None, lines[0]
    script = "\n".join(lines[:-1]).replace("/tmp/stepscope-rules", str(tmp_path / "rules"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    written = tmp_path / "rules" / "prometheus" / "stepscope.rules.yml"
    groups = yaml.safe_load(written.read_text(encoding="utf-8"))["groups"]
    alerts = [rule for group in groups for rule in group["rules"] if "alert" in rule]
    assert alerts
    assert all(a["annotations"]["runbook_url"] == f"{base.group(1)}#{a['alert'].lower()}" for a in alerts)
    check = subprocess.run([_promtool(), "check", "rules", str(written)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_prometheus_config_recipe_merged_into_debians_file_loads_the_rules(tmp_path: Path) -> None:
    """The recipe says to merge its lines; merged into Debian's default prometheus.yml (which already has
    `rule_files` and `scrape_configs`) the file passes promtool with the rules loaded, where appended it fails."""
    default = Path("/etc/prometheus/prometheus.yml")
    if not default.exists():
        pytest.fail("no /etc/prometheus/prometheus.yml: install Debian's `prometheus` package (`make deps`)")
    recipe = recipes()["prometheus-config"]
    assert recipe.startswith("# merge into /etc/prometheus/prometheus.yml")
    rules_path = "/etc/prometheus/rules/stepscope.rules.yml"
    ours = yaml.safe_load(recipe.replace(rules_path, str(RULES_FILE)))
    theirs = yaml.safe_load(default.read_text(encoding="utf-8"))
    merged = {**theirs, "rule_files": [*(theirs.get("rule_files") or []), *ours["rule_files"]],
              "scrape_configs": [*theirs["scrape_configs"], *ours["scrape_configs"]]}  # fmt: skip
    (tmp_path / "merged.yml").write_text(yaml.safe_dump(merged), encoding="utf-8")
    (tmp_path / "appended.yml").write_text(default.read_text(encoding="utf-8") + "\n" + recipe, encoding="utf-8")
    check = [_promtool(), "check", "config"]
    merged_check = subprocess.run([*check, str(tmp_path / "merged.yml")], capture_output=True, text=True, check=False)
    assert merged_check.returncode == 0, merged_check.stdout + merged_check.stderr
    assert "SUCCESS: 1 rule files found" in merged_check.stdout + merged_check.stderr
    appended = subprocess.run([*check, str(tmp_path / "appended.yml")], capture_output=True, text=True, check=False)
    assert appended.returncode != 0, "appending the recipe was expected to fail: the recipe's advice would be moot"


def test_prometheus_config_recipe_loads_the_rules(tmp_path: Path) -> None:
    """The recipe's prometheus.yml lines, with the rules path pointing at the shipped file, pass promtool."""
    promtool = _promtool()
    config = recipes()["prometheus-config"]
    assert "job_name: stepscope" in config
    rules_path = "/etc/prometheus/rules/stepscope.rules.yml"
    assert rules_path in config
    (tmp_path / "prometheus.yml").write_text(config.replace(rules_path, str(RULES_FILE)), encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout + result.stderr
