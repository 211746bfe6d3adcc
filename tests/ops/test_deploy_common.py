"""Shared helpers for the deploy/ validation tests, plus the checks that span every artefact (yamllint).

The other test_deploy_* modules import the helpers from here; tests/ops/conftest.py belongs to another module's
owner, so fixtures and helpers for deploy/ live in this file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from yamllint import linter  # type: ignore[import-untyped]
from yamllint.config import YamlLintConfig  # type: ignore[import-untyped]

from stepscope import config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
RULES_FILE = DEPLOY / "prometheus" / "stepscope.rules.yml"

# Every variable stepscope reads (the bridge's documented interface) plus the standard OTel ones it honours.
# A name used in a manifest or the compose file that is not here is almost certainly a typo.
DOCUMENTED_ENV = frozenset(
    {
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "OPENAI_ORG_ID",
        "OPENAI_PROJECT_ID",
        "STEPSCOPE_THREADS",
        "STEPSCOPE_LISTEN",
        "STEPSCOPE_PROXY_LISTEN",
        "STEPSCOPE_POLL_INTERVAL",
        "STEPSCOPE_LOOKBACK",
        "STEPSCOPE_STATE",
        "STEPSCOPE_CAPTURE_CONTENT",
        "STEPSCOPE_WATCH_TOKEN",
        "STEPSCOPE_LOG_LEVEL",
        "STEPSCOPE_LOG_FORMAT",
        "STEPSCOPE_SHARD",
        "STEPSCOPE_SHARD_INDEX",
        "STEPSCOPE_SHARD_COUNT",
        "STEPSCOPE_FLAVOR",
        "STEPSCOPE_API_VERSION",
        "STEPSCOPE_AUTH",
        "STEPSCOPE_TOKEN_FILE",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_TRACES_EXPORTER",
    }
)

# The YAML files this module's owner writes; others' files (rules, Grafana provisioning) are linted by their tests.
OWNED_YAML = sorted(
    [
        COMPOSE_FILE,
        DEPLOY / "prometheus" / "prometheus.yml",
        *DEPLOY.glob("otel-collector/*.yaml"),
        *DEPLOY.glob("tempo/*.yaml"),
        *DEPLOY.glob("alertmanager/*.yml"),
        *KUBERNETES.rglob("*.yaml"),
    ]
)

YAMLLINT_CONFIG = """
extends: default
rules:
  line-length: {max: 140}
  document-start: disable
  truthy: {check-keys: false}
  comments: {min-spaces-from-content: 1}
"""

_IMAGE_TAG = re.compile(r"^[\w.\-/]+(:\d+)?[\w.\-/]*:v?\d+(\.\d+)+[\w.\-]*$")


def load_yaml(path: Path) -> Any:
    """Parse one YAML document from ``path``."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_docs(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the non-empty documents of a (possibly multi-document) YAML file."""
    for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if doc:
            yield doc


def require_tool(name: str) -> str:
    """Return the path of an external tool or fail with the package that provides it."""
    found = shutil.which(name)
    packages = {"promtool": "prometheus", "docker-compose": "docker-compose", "amtool": "prometheus-alertmanager"}
    if found is None:
        pytest.fail(f"{name} not on PATH: install Debian's {packages.get(name, name)} package (make deps)")
    return found


def run_tool(args: list[str], *, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a validator with a timeout and captured output (never a shell)."""
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def is_pinned_image(image: str) -> bool:
    """True when ``image`` carries a version tag (``name:1.2.3``, ``name:v3.5.0``) or a digest, never ``latest``."""
    if "@sha256:" in image:
        return True
    return bool(_IMAGE_TAG.match(image)) and not image.endswith(":latest")


def lint_yaml(text: str) -> list[str]:
    """Return yamllint problems for ``text`` under the deploy/ configuration, formatted one per string."""
    config = YamlLintConfig(YAMLLINT_CONFIG)
    return [f"{p.line}:{p.column} {p.level} {p.desc} ({p.rule})" for p in linter.run(text, config)]


@pytest.mark.parametrize("path", OWNED_YAML, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_files_pass_yamllint(path: Path) -> None:
    """Each deploy/ YAML file passes yamllint (default rules, 140-column lines, no `---` required)."""
    assert lint_yaml(path.read_text(encoding="utf-8")) == []


def test_yamllint_configuration_reports_problems() -> None:
    """The inline yamllint configuration still reports real problems (duplicate keys, bad indentation)."""
    problems = lint_yaml("a: 1\na: 2\nb:\n   - x\n  - y\n")
    assert problems, "yamllint accepted a file with duplicate keys and broken indentation"


def test_owned_yaml_files_are_found() -> None:
    """The file list covers the compose file, the collector, Tempo, Alertmanager and both Kubernetes shapes."""
    names = {str(p.relative_to(DEPLOY)) for p in OWNED_YAML}
    assert {"docker-compose.yml", "kubernetes/sidecar/deployment.yaml", "kubernetes/central/statefulset.yaml"} <= names
    assert len(names) >= 15


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        ("prom/prometheus:v3.5.0", True),
        ("otel/opentelemetry-collector-contrib:0.144.0", True),
        ("python:3.11.13-slim-bookworm", True),
        ("registry.local:5000/stepscope:1.2.0", True),
        ("grafana/grafana:latest", False),
        ("grafana/grafana", False),
        ("python:3.11-slim", True),
        ("python:slim", False),
    ],
)
def test_image_pin_rule(image: str, pinned: bool) -> None:
    """The pin rule accepts version tags and rejects `latest`, missing tags and tags without a version."""
    assert is_pinned_image(image) is pinned


def test_documented_env_names_are_read_by_stepscope() -> None:
    """Every documented name is one stepscope's configuration loader actually reads."""
    read = {setting.env for setting in config.SETTINGS} | {config.ENV_SHARD_INDEX, config.ENV_SHARD_COUNT}
    assert DOCUMENTED_ENV - read == set()
