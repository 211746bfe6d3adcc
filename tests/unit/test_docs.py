"""The documentation stays in step with the code it documents, and its links lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from stepscope.commands import configdoc
from stepscope.config import SETTINGS, SETTINGS_BY_PATH
from stepscope.contract.vocabulary import DROP_REASONS
from stepscope.export.prometheus import PrometheusMetrics
from stepscope.export.selfmetrics import SelfMetrics

REPO = Path(__file__).parents[2]
DOCS = REPO / "docs"
CONFIGURATION = DOCS / "configuration.md"
TELEMETRY = DOCS / "telemetry.md"
README_MAX_BYTES = 12_000
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _metric_names() -> set[str]:
    registry = CollectorRegistry()
    PrometheusMetrics(registry)
    SelfMetrics(registry, version="0")
    return {f.name + ("_total" if f.type == "counter" else "") for f in registry.collect()}


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but `-` and `_` removed, spaces as `-`."""
    headings = re.findall(r"^#{1,6} (.+)$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


class TestConfigurationReference:
    def test_committed_file_is_the_generators_output(self) -> None:
        """docs/configuration.md equals configdoc.render(), so a setting added without regenerating fails here."""
        assert _text(CONFIGURATION) == configdoc.render(), (
            "docs/configuration.md is stale: run `python -m stepscope.commands.configdoc --write docs/configuration.md`"
        )

    def test_every_setting_has_a_row(self) -> None:
        """Each environment variable the config reads has a row of its own in docs/configuration.md."""
        rows = _text(CONFIGURATION)
        missing = [s.env for s in SETTINGS if f"| `{s.env}` | `{s.path}` |" not in rows]
        assert missing == []

    def test_notes_and_default_texts_name_real_settings(self) -> None:
        """Every extra note or default text in the generator belongs to a setting that exists."""
        assert set(configdoc.NOTES) - set(SETTINGS_BY_PATH) == set()
        assert set(configdoc.DEFAULT_TEXT) - set(SETTINGS_BY_PATH) == set()

    def test_defaults_read_as_typed(self) -> None:
        """Durations, sizes and numbers are shown as a user would type them."""
        defaults = {s.env: configdoc.default_text(s) for s in SETTINGS}
        assert defaults["STEPSCOPE_POLL_INTERVAL"] == "`1s`"
        assert defaults["STEPSCOPE_BACKLOG_MAX_AGE"] == "`24h`"
        assert defaults["STEPSCOPE_API_MAX_BODY"] == "`8MiB`"
        assert defaults["STEPSCOPE_BACKLOG_MAX_SPANS"] == "`500000`"
        assert defaults["OPENAI_API_KEY"] == "none"

    def test_check_reports_a_stale_file(self, tmp_path: Path) -> None:
        """`--check` exits 1 on a file that differs from the generated text and 0 on a fresh one."""
        target = tmp_path / "configuration.md"
        target.write_text(configdoc.render().replace("STEPSCOPE_LISTEN", "STEPSCOPE_LISTENING"), encoding="utf-8")
        assert configdoc.main(["--check", str(target)]) == 1
        assert configdoc.main(["--write", str(target)]) == 0
        assert configdoc.main(["--check", str(target)]) == 0


class TestTelemetryContract:
    def test_every_metric_is_documented(self) -> None:
        """Each metric family stepscope registers is listed in docs/telemetry.md."""
        text = _text(TELEMETRY)
        missing = sorted(n for n in _metric_names() if f"`{n}`" not in text)
        assert missing == []

    def test_every_drop_reason_is_documented(self) -> None:
        """Each reason of stepscope_dropped_total is explained in docs/telemetry.md."""
        text = _text(TELEMETRY)
        missing = [r for r in DROP_REASONS if f"`{r}`" not in text]
        assert missing == []


class TestReadme:
    def test_readme_stays_a_newcomers_page(self) -> None:
        """README.md stays short enough to read through; the reference lives under docs/."""
        assert len((REPO / "README.md").read_bytes()) <= README_MAX_BYTES

    def test_relative_links_resolve(self) -> None:
        """Every relative link in README.md, docs/ and deploy/ Markdown names an existing file and heading."""
        pages = [REPO / "README.md", *sorted(DOCS.glob("*.md")), *sorted((REPO / "deploy").glob("*.md"))]
        broken = []
        for page in pages:
            for target in _LINK.findall(_text(page)):
                if re.match(r"^[a-z]+:", target):
                    continue
                path_part, _, anchor = target.partition("#")
                resolved = (page.parent / path_part).resolve() if path_part else page
                if not resolved.exists():
                    broken.append(f"{page.relative_to(REPO)}: {target}")
                elif anchor and resolved.suffix == ".md" and anchor not in _anchors(_text(resolved)):
                    broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
        assert broken == []
