"""Offline validation of the demo stack's component configurations and the image: `promtool check config` on the
Prometheus configuration, `amtool check-config` on Alertmanager's, the collector's pipelines against the components it
defines, Tempo's receiver against the collector's exporter, and static checks of deploy/Dockerfile (no hadolint here).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ops.test_deploy_common import DEPLOY, RULES_FILE, is_pinned_image, load_yaml, require_tool, run_tool

PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
COLLECTOR_CONFIG = DEPLOY / "otel-collector" / "config.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPONENT_KINDS = ("receivers", "processors", "exporters", "connectors")
# Names that v0.144 deprecated (`otlp` -> `otlp_grpc`, `otlphttp` -> `otlp_http`); still accepted, with warnings.
DEPRECATED_EXPORTERS = {"otlp", "otlphttp"}


def promtool_check_config(config: dict[str, Any], tmp_path: Path) -> tuple[int, str]:
    """Write ``config`` with its rule files copied into ``tmp_path`` and run `promtool check config` on it."""
    promtool = require_tool("promtool")
    config = dict(config)
    local_rules = []
    for index, _ in enumerate(config.get("rule_files", [])):
        target = tmp_path / f"rules-{index}.yml"
        shutil.copyfile(RULES_FILE, target)
        local_rules.append(str(target))
    config["rule_files"] = local_rules
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    result = run_tool([promtool, "check", "config", str(path)])
    return result.returncode, result.stdout + result.stderr


def component_ids(config: dict[str, Any], kind: str) -> set[str]:
    return set(config.get(kind) or {})


def dockerfile_instructions() -> list[tuple[str, str]]:
    """Return (INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    pairs = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            instruction, _, arguments = stripped.partition(" ")
            pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    """The demo Prometheus configuration, with its rule files resolvable, passes `promtool check config`."""
    code, output = promtool_check_config(load_yaml(PROMETHEUS_CONFIG), tmp_path)
    assert code == 0, output
    assert "SUCCESS" in output


def test_promtool_check_config_rejects_mistakes(tmp_path: Path) -> None:
    """The promtool check is not a no-op: an unknown scrape_config key fails it."""
    config = load_yaml(PROMETHEUS_CONFIG)
    config["scrape_configs"][0]["scrape_intervall"] = "5s"
    code, _ = promtool_check_config(config, tmp_path)
    assert code != 0


def test_prometheus_scrapes_stepscope_and_alerts_to_alertmanager() -> None:
    """Prometheus scrapes stepscope:9464 as job "stepscope" (the alerts' job) and sends alerts to alertmanager:9093."""
    config = load_yaml(PROMETHEUS_CONFIG)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["stepscope"]["static_configs"][0]["targets"] == ["stepscope:9464"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    assert jobs["otel-collector"]["static_configs"][0]["targets"] == ["otel-collector:8888"]


def test_alertmanager_config_passes_amtool() -> None:
    """The demo Alertmanager configuration passes `amtool check-config`."""
    amtool = require_tool("amtool")
    result = run_tool([amtool, "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_collector_pipelines_reference_defined_components() -> None:
    """Every receiver, processor and exporter a pipeline names is defined, and so is every enabled extension."""
    config = load_yaml(COLLECTOR_CONFIG)
    service = config["service"]
    defined = {kind: component_ids(config, kind) for kind in COMPONENT_KINDS}
    for name, pipeline in service["pipelines"].items():
        assert pipeline["receivers"], name
        assert pipeline["exporters"], name
        assert set(pipeline["receivers"]) <= defined["receivers"] | defined["connectors"], name
        assert set(pipeline.get("processors", [])) <= defined["processors"], name
        assert set(pipeline["exporters"]) <= defined["exporters"] | defined["connectors"], name
    assert set(service.get("extensions", [])) <= component_ids(config, "extensions")


def test_collector_defines_nothing_unused() -> None:
    """Each defined receiver, processor and exporter is used by some pipeline (unused ones would be dead config)."""
    config = load_yaml(COLLECTOR_CONFIG)
    used: set[str] = set()
    for pipeline in config["service"]["pipelines"].values():
        used |= set(pipeline["receivers"]) | set(pipeline.get("processors", [])) | set(pipeline["exporters"])
    for kind in ("receivers", "processors", "exporters"):
        assert component_ids(config, kind) <= used, kind


def test_collector_uses_current_exporter_names() -> None:
    """Exporters use the v0.144+ names (`otlp_grpc`, `otlp_http`), matching the pinned image."""
    config = load_yaml(COLLECTOR_CONFIG)
    types = {name.split("/", 1)[0] for name in component_ids(config, "exporters")}
    assert not types & DEPRECATED_EXPORTERS


def test_collector_listens_on_all_interfaces() -> None:
    """The OTLP receiver binds 0.0.0.0 (the default, localhost, is unreachable from other containers)."""
    protocols = load_yaml(COLLECTOR_CONFIG)["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"


def test_collector_sends_traces_to_tempos_receiver() -> None:
    """The collector's Tempo exporter targets the OTLP/gRPC port Tempo's distributor listens on."""
    collector = load_yaml(COLLECTOR_CONFIG)
    exporter = collector["exporters"]["otlp_grpc/tempo"]
    tempo = load_yaml(DEPLOY / "tempo" / "tempo.yaml")
    tempo_grpc = tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert exporter["endpoint"] == "tempo:" + tempo_grpc.rsplit(":", 1)[1]
    assert "otlp_grpc/tempo" in collector["service"]["pipelines"]["traces"]["exporters"]
    assert tempo["server"]["http_listen_port"] == 3200


def test_dockerfile_is_multi_stage_with_pinned_bases() -> None:
    """Every FROM names a stage and a base pinned to a patch version; the runtime copies from the build stage."""
    froms = [arguments for instruction, arguments in dockerfile_instructions() if instruction == "FROM"]
    assert len(froms) >= 2
    for line in froms:
        image, keyword, stage = line.split()
        assert keyword.upper() == "AS"
        assert stage
        assert is_pinned_image(image)
        assert re.search(r":\d+\.\d+\.\d+", image), f"{image}: pin the patch version"
    copies = [a for i, a in dockerfile_instructions() if i == "COPY" and a.startswith("--from=")]
    assert any(c.startswith("--from=build ") for c in copies)


def test_dockerfile_runs_as_non_root_with_a_health_check() -> None:
    """The last USER is a numeric non-root uid, a HEALTHCHECK probes /healthz, and stepscope serve is the command."""
    instructions = dockerfile_instructions()
    users = [a for i, a in instructions if i == "USER"]
    assert users
    uid = users[-1].split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0
    healthchecks = [a for i, a in instructions if i == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    assert "/healthz" in healthchecks[0]
    entrypoint = [a for i, a in instructions if i == "ENTRYPOINT"][-1]
    command = [a for i, a in instructions if i == "CMD"][-1]
    assert yaml.safe_load(entrypoint) + yaml.safe_load(command) == ["stepscope", "serve"]
    # The runtime stage's USER comes after its last RUN, so nothing later runs as root.
    last_user = max(n for n, (i, _) in enumerate(instructions) if i == "USER")
    last_run = max(n for n, (i, _) in enumerate(instructions) if i == "RUN")
    assert last_user > last_run


def test_dockerfile_defaults_suit_containers() -> None:
    """The image listens on all interfaces, keeps its state under a volume, and exposes the metrics port."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "STEPSCOPE_LISTEN=0.0.0.0:9464" in text
    assert "STEPSCOPE_STATE=/var/lib/stepscope/state.db" in text
    instructions = dockerfile_instructions()
    assert ("EXPOSE", "9464") in instructions
    assert ("VOLUME", '["/var/lib/stepscope"]') in instructions


@pytest.mark.parametrize("copied", ["pyproject.toml", "README.md", "stepscope/"])
def test_dockerfile_copies_what_the_build_needs(copied: str) -> None:
    """The build stage copies the files `pip install .` needs, and each exists in the repository (the context)."""
    copies = " ".join(a for i, a in dockerfile_instructions() if i == "COPY")
    assert copied in copies
    assert (DEPLOY.parent / copied).exists()
