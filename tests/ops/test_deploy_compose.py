"""Offline validation of deploy/docker-compose.yml: the compose-spec JSON Schema (check-jsonschema's vendored copy),
Debian's docker-compose 1.29 `config -q` (no daemon needed), and the demo stack's own contracts: pinned images,
health checks behind every `service_healthy` dependency, mounted files that exist, documented env names.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stepscope import config
from tests.ops.test_deploy_common import (
    COMPOSE_FILE,
    DEPLOY,
    DOCUMENTED_ENV,
    is_pinned_image,
    load_yaml,
    require_tool,
    run_tool,
)

STACK = {"sim", "stepscope", "otel-collector", "tempo", "prometheus", "alertmanager", "grafana"}


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return data


def services() -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose()["services"]
    return result


def check_schema(path: Path) -> tuple[int, str]:
    """Run check-jsonschema against the vendored compose-spec schema; return (exit code, output)."""
    tool = Path(sys.executable).with_name("check-jsonschema")
    result = run_tool([str(tool), "--builtin-schema", "vendor.compose-spec", str(path)])
    return result.returncode, result.stdout + result.stderr


def compose_config(path: Path) -> tuple[int, str]:
    """Run `docker-compose -f path config -q` from deploy/, as a user would; return (exit code, output)."""
    tool = require_tool("docker-compose")
    result = run_tool([tool, "-f", str(path), "config", "-q"], cwd=DEPLOY)
    return result.returncode, result.stdout + result.stderr


def write_variant(tmp_path: Path, data: dict[str, Any]) -> Path:
    """Write a modified copy of the compose file next to the original's relative paths' anchor (deploy/)."""
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_compose_file_matches_compose_spec_schema() -> None:
    """The compose file validates against the Compose Specification schema."""
    code, output = check_schema(COMPOSE_FILE)
    assert code == 0, output


def test_compose_schema_rejects_unknown_keys(tmp_path: Path) -> None:
    """The schema check is not a no-op: a misspelt healthcheck key is rejected."""
    data = compose()
    data["services"]["sim"]["healthcheck"]["intervall"] = "5s"
    code, _ = check_schema(write_variant(tmp_path, data))
    assert code != 0


def test_docker_compose_v1_accepts_the_file() -> None:
    """Debian's docker-compose 1.29 parses and resolves the file (`config -q` exits 0)."""
    code, output = compose_config(COMPOSE_FILE)
    assert code == 0, output


def test_docker_compose_v1_rejects_a_dangling_dependency(tmp_path: Path) -> None:
    """`docker-compose config -q` catches what the schema cannot: a dependency on a service that does not exist."""
    data = compose()
    data["services"]["grafana"]["depends_on"]["loki"] = {"condition": "service_started"}
    code, output = compose_config(write_variant(tmp_path, data))
    assert code != 0
    assert "loki" in output


def test_stack_has_every_component() -> None:
    """The demo runs the simulator, stepscope, collector, Tempo, Prometheus, Alertmanager and Grafana."""
    assert set(services()) == STACK


def test_third_party_images_are_pinned() -> None:
    """Every image is pinned to a version tag; stepscope and the simulator are built from deploy/Dockerfile."""
    for name, service in services().items():
        assert is_pinned_image(service["image"]) or "build" in service, name
        if "build" in service:
            assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()


def test_collector_image_matches_exporter_names() -> None:
    """The pinned collector is v0.144 or later, the release whose exporter names the collector config uses."""
    image = services()["otel-collector"]["image"]
    minor = int(image.rsplit(":", 1)[1].split(".")[1])
    assert minor >= 144


def test_healthy_dependencies_have_health_checks() -> None:
    """Each `service_healthy` dependency points at a service that defines a healthcheck."""
    all_services = services()
    conditions = 0
    for name, service in all_services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in all_services, (name, dependency)
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in all_services[dependency], (name, dependency)
                conditions += 1
    assert conditions >= 3


def test_startup_order() -> None:
    """stepscope waits for a healthy simulator; Grafana waits for a healthy Prometheus, which waits for Alertmanager."""
    all_services = services()
    assert all_services["stepscope"]["depends_on"]["sim"]["condition"] == "service_healthy"
    assert all_services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert all_services["prometheus"]["depends_on"]["alertmanager"]["condition"] == "service_healthy"
    assert "otel-collector" in all_services["stepscope"]["depends_on"]
    assert "tempo" in all_services["otel-collector"]["depends_on"]


def test_bind_mounted_files_exist() -> None:
    """Every host path mounted into a container exists, relative to deploy/ as compose resolves it."""
    mounted = 0
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), (name, source)
                mounted += 1
    assert mounted >= 6


def test_stepscope_environment_is_documented_and_points_at_the_stack() -> None:
    """stepscope's variables are documented names, aimed at the simulator and the collector inside the network."""
    env = services()["stepscope"]["environment"]
    assert set(env) <= DOCUMENTED_ENV
    assert env["OPENAI_BASE_URL"] == "http://sim:8080/v1"
    assert env["STEPSCOPE_LISTEN"] == "0.0.0.0:9464"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://otel-collector:43")


def test_stepscope_runs_serve_hardened() -> None:
    """stepscope execs `stepscope serve`, keeps its state on a volume, and runs read-only without capabilities."""
    service = services()["stepscope"]
    assert 'os.execvp("stepscope", ["stepscope", "serve"])' in "\n".join(service["entrypoint"])
    state_dir = str(Path(service["environment"]["STEPSCOPE_STATE"]).parent)
    assert any(v.split(":")[1] == state_dir for v in service["volumes"])
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]


def test_simulator_runs_the_lively_scenario() -> None:
    """The simulator service runs `stepscope simulate` on 0.0.0.0:8080 with the lively scenario."""
    command = services()["sim"]["command"]
    assert command[0] == "simulate"
    assert command[command.index("--port") + 1] == "8080"
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--scenario") + 1] == "lively"


def test_prometheus_keeps_exemplars_and_loads_the_rules() -> None:
    """Prometheus runs with exemplar storage and mounts the rules file where prometheus.yml looks for it."""
    service = services()["prometheus"]
    assert "--enable-feature=exemplar-storage" in service["command"]
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    targets = {v.split(":")[1] for v in service["volumes"] if v.startswith(".")}
    assert set(config["rule_files"]) <= targets
    assert any(v.startswith("./prometheus/stepscope.rules.yml:") for v in service["volumes"])


def test_grafana_is_provisioned_for_anonymous_viewers() -> None:
    """Grafana mounts the provisioning and dashboard folders and lets anonymous users view, not edit."""
    service = services()["grafana"]
    env = service["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    mounts = {v.split(":")[0]: v.split(":")[1] for v in service["volumes"]}
    assert mounts["../grafana/provisioning"] == "/etc/grafana/provisioning"
    assert "../grafana/dashboards" in mounts


def test_dashboard_provider_reads_the_mounted_folder() -> None:
    """Each Grafana dashboard provider's path is the folder where the compose file mounts grafana/dashboards."""
    mounts = {v.split(":")[0]: v.split(":")[1] for v in services()["grafana"]["volumes"]}
    providers = [
        provider
        for path in sorted((DEPLOY.parent / "grafana" / "provisioning" / "dashboards").glob("*.y*ml"))
        for provider in load_yaml(path)["providers"]
    ]
    assert providers, "no dashboard provider under grafana/provisioning/dashboards"
    for provider in providers:
        assert provider["options"]["path"] == mounts["../grafana/dashboards"]


@pytest.mark.parametrize("port", ["3000", "9090", "9093", "9464"])
def test_published_ports_bind_to_loopback(port: str) -> None:
    """The demo's user-facing ports are published on 127.0.0.1 only."""
    published = [p for s in services().values() for p in s.get("ports", []) if p.endswith(f":{port}")]
    assert published == [f"127.0.0.1:{port}:{port}"]


def test_compose_settings_load_in_stepscope() -> None:
    """stepscope's own loader accepts the compose environment once the entrypoint has added the simulator's threads."""
    env = {**services()["stepscope"]["environment"], "STEPSCOPE_THREADS": "thread_a,thread_b"}
    loaded = config.load(env=env)
    assert loaded.api.base_url == "http://sim:8080/v1"
    assert loaded.poll.threads == ("thread_a", "thread_b")
    assert loaded.export.otlp_protocol == "http/protobuf"


def test_grafana_datasources_point_at_compose_services() -> None:
    """Each provisioned data source URL names a service of the stack (Prometheus, Tempo) by its in-network host."""
    sources = [
        source
        for path in sorted((DEPLOY.parent / "grafana" / "provisioning" / "datasources").glob("*.y*ml"))
        for source in load_yaml(path)["datasources"]
    ]
    assert sources
    for source in sources:
        host = source["url"].split("://", 1)[1].split(":", 1)[0]
        assert host in services(), source["name"]
