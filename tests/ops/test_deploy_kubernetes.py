"""Offline validation of deploy/kubernetes: every kustomize shape renders, built-in kinds pass kubernetes-validate
--strict, the CRDs pass their own checks (PodMonitor: a hand-written JSON Schema; PrometheusRule: promtool), and the
sidecar/central/azure contracts hold (probes, hardening, shard wiring, workload identity, documented env names).

Rendering uses a minimal kustomize (`resources`, plus `patches` given by path as strategic-merge patches of maps) so
the tests need no kubectl; the kustomizations are kept to that subset and a test fails if one starts using more.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate
import pytest
import yaml

from stepscope import config
from tests.ops.test_deploy_common import (
    DOCUMENTED_ENV,
    KUBERNETES,
    RULES_FILE,
    is_pinned_image,
    load_yaml,
    load_yaml_docs,
    require_tool,
    run_tool,
)

# Each shape and the kind of its workload.
WORKLOAD_KINDS = {"sidecar": "Deployment", "central": "StatefulSet", "azure": "Deployment"}
SHAPES = tuple(WORKLOAD_KINDS)
NATIVE_SIDECAR_SHAPES = ("sidecar", "azure")
API_KEY_SHAPES = ("sidecar", "central")
# Native sidecars (initContainers[].restartPolicy) exist from 1.29; 1.33 is where they are GA.
K8S_VERSIONS = ("1.29", "1.33")
CRD_KINDS = {"PodMonitor", "PrometheusRule"}
SUPPORTED_KUSTOMIZE_KEYS = {"apiVersion", "kind", "resources", "patches"}
_EXPANSION = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")

# The subset of monitoring.coreos.com/v1 PodMonitor these manifests use, written from the operator's API reference.
PODMONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {"type": "object"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "matchExpressions": {"type": "array"},
                    },
                },
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "action": {"enum": ["replace", "keep", "drop", "labelmap", "labeldrop"]},
                                        "sourceLabels": {"type": "array", "items": {"type": "string"}},
                                        "targetLabel": {"type": "string"},
                                        "replacement": {"type": "string"},
                                        "regex": {"type": "string"},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """Apply a strategic-merge patch made only of maps: keys merge recursively, a null value deletes its key.

    Lists merge by per-field strategies in real kustomize, which this renderer does not model, so it refuses them.
    """
    for key, value in patch.items():
        assert not isinstance(value, list), f"list in a patch ({key}): extend merge_patch() first"
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_patch(target[key], value)
        else:
            target[key] = value


def render(directory: Path) -> list[dict[str, Any]]:
    """Render a kustomization that uses `resources` (files, or directories holding a kustomization) and `patches`
    given by `path` (each patch names its target by kind and metadata.name, which must render exactly once)."""
    kustomization = load_yaml(directory / "kustomization.yaml")
    unsupported = set(kustomization) - SUPPORTED_KUSTOMIZE_KEYS
    assert not unsupported, f"{directory}: extend render() before using {sorted(unsupported)}"
    objects: list[dict[str, Any]] = []
    for entry in kustomization["resources"]:
        target = (directory / entry).resolve()
        objects.extend(render(target) if target.is_dir() else load_yaml_docs(target))
    for entry in kustomization.get("patches", []):
        assert set(entry) == {"path"}, f"{directory}: only `patches: [{{path: ...}}]` is supported, not {entry}"
        patch = load_yaml(directory / entry["path"])
        key = (patch["kind"], patch["metadata"]["name"])
        targets = [o for o in objects if (o["kind"], o["metadata"]["name"]) == key]
        assert len(targets) == 1, f"{directory}: patch {entry['path']} matches {len(targets)} objects"
        merge_patch(targets[0], {k: v for k, v in patch.items() if k not in {"apiVersion", "kind"}})
    return objects


def kustomization_files(kustomization: Path) -> list[Path]:
    """The resource and patch paths a kustomization names, resolved (directories included)."""
    content = load_yaml(kustomization)
    entries = list(content["resources"]) + [p["path"] for p in content.get("patches", [])]
    return [(kustomization.parent / e).resolve() for e in entries]


def rendered(shape: str) -> list[dict[str, Any]]:
    return render(KUBERNETES / shape)


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return matches[0]


def workload(shape: str) -> dict[str, Any]:
    return one(rendered(shape), WORKLOAD_KINDS[shape])


def stepscope_container(shape: str) -> dict[str, Any]:
    pod = workload(shape)["spec"]["template"]["spec"]
    containers = pod.get("initContainers", []) + pod["containers"]
    return next(c for c in containers if c["name"] == "stepscope")


@pytest.mark.parametrize("shape", SHAPES)
def test_kustomization_renders_expected_kinds(shape: str) -> None:
    """Each shape renders the shared base plus its workload, with no duplicate (kind, name) pairs."""
    objects = rendered(shape)
    keys = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys))
    kinds = {o["kind"] for o in objects}
    assert {"ConfigMap", "Secret", "PodMonitor", "PrometheusRule"} <= kinds
    assert WORKLOAD_KINDS[shape] in kinds


def test_every_manifest_belongs_to_a_kustomization() -> None:
    """No YAML under deploy/kubernetes is orphaned: each is a resource or a patch of one of the shapes."""
    listed: set[Path] = set()
    for kustomization in KUBERNETES.rglob("kustomization.yaml"):
        listed |= set(kustomization_files(kustomization))
    manifests = {p.resolve() for p in KUBERNETES.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert manifests - listed == set()


def test_files_stay_inside_their_kustomization() -> None:
    """Only directories step up (`../base`): kustomize refuses files outside a kustomization's root by default."""
    for kustomization in KUBERNETES.rglob("kustomization.yaml"):
        root = kustomization.parent.resolve()
        for path in kustomization_files(kustomization):
            assert path.is_dir() or path.is_relative_to(root), f"{kustomization}: {path} is outside {root}"


def test_patch_merge_deletes_nulls_and_refuses_lists() -> None:
    """The renderer's patch merge deletes null keys, merges nested maps, and fails on lists it cannot merge."""
    target: dict[str, Any] = {"data": {"A": "1", "B": "2"}, "keep": True}
    merge_patch(target, {"data": {"A": None, "C": "3"}})
    assert target == {"data": {"B": "2", "C": "3"}, "keep": True}
    with pytest.raises(AssertionError, match="list in a patch"):
        merge_patch(target, {"items": ["x"]})


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_builtin_kinds_pass_strict_schema(shape: str, version: str) -> None:
    """Every built-in object validates strictly (no unknown fields) against the Kubernetes schema of that version."""
    checked = 0
    for obj in rendered(shape):
        if obj["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked >= 3


def test_strict_schema_rejects_unknown_fields() -> None:
    """The validator is not a no-op: a misspelt container field in the Deployment is rejected."""
    deployment = workload("sidecar")
    deployment["spec"]["template"]["spec"]["initContainers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.33", strict=True)


@pytest.mark.parametrize("shape", SHAPES)
def test_podmonitor_matches_schema_and_selects_the_workload(shape: str) -> None:
    """The PodMonitor fits its schema, selects the workload's pod labels and scrapes a port the container names."""
    objects = rendered(shape)
    monitor = one(objects, "PodMonitor")
    jsonschema.validate(monitor, PODMONITOR_SCHEMA)
    pod_labels = workload(shape)["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    port_names = {p["name"] for p in stepscope_container(shape)["ports"]}
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] in port_names
    assert endpoint["path"] == "/metrics"


def test_podmonitor_sets_the_job_the_alerts_expect() -> None:
    """Scraped series get job="stepscope", the job the StepscopeDown alert matches."""
    endpoint = one(rendered("sidecar"), "PodMonitor")["spec"]["podMetricsEndpoints"][0]
    assert {"action": "replace", "targetLabel": "job", "replacement": "stepscope"} in endpoint["relabelings"]


def test_podmonitor_schema_rejects_typos() -> None:
    """The hand-written PodMonitor schema rejects a misspelt endpoint field."""
    monitor = one(rendered("sidecar"), "PodMonitor")
    monitor["spec"]["podMetricsEndpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, PODMONITOR_SCHEMA)


def test_prometheusrule_groups_equal_rules_file() -> None:
    """The PrometheusRule carries exactly the groups of deploy/prometheus/stepscope.rules.yml."""
    rule = one(rendered("sidecar"), "PrometheusRule")
    assert rule["spec"]["groups"] == load_yaml(RULES_FILE)["groups"]


def test_prometheusrule_spec_passes_promtool(tmp_path: Path) -> None:
    """The PrometheusRule spec, written out as a plain rules file, passes `promtool check rules`."""
    promtool = require_tool("promtool")
    spec = one(rendered("sidecar"), "PrometheusRule")["spec"]
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    result = run_tool([promtool, "check", "rules", str(rules)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("shape", NATIVE_SIDECAR_SHAPES)
def test_sidecar_is_native(shape: str) -> None:
    """stepscope is an initContainer with restartPolicy Always, so it starts before and stops after the app."""
    pod = workload(shape)["spec"]["template"]["spec"]
    sidecar = next(c for c in pod["initContainers"] if c["name"] == "stepscope")
    assert sidecar["restartPolicy"] == "Always"
    assert all(c["name"] != "stepscope" for c in pod["containers"])
    # SIGTERM flushes within 10 s; leave room for the app containers stopping first.
    assert pod["terminationGracePeriodSeconds"] >= 15


@pytest.mark.parametrize("shape", SHAPES)
def test_probes_use_health_endpoints_on_metrics_port(shape: str) -> None:
    """Startup and liveness probe /healthz, readiness probes /readyz, all on the port named `metrics` (9464)."""
    container = stepscope_container(shape)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == 9464
    expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}, probe


@pytest.mark.parametrize("shape", SHAPES)
def test_security_context_is_hardened(shape: str) -> None:
    """Non-root, read-only root filesystem, no privilege escalation, no capabilities, RuntimeDefault seccomp."""
    pod = workload(shape)["spec"]["template"]["spec"]
    context = stepscope_container(shape)["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] != 0
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context.get("privileged", False) is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize("shape", SHAPES)
def test_state_directory_is_a_writable_volume(shape: str) -> None:
    """STEPSCOPE_STATE lies on a mounted volume, since the root filesystem is read-only; /tmp is mounted too."""
    config = next(o for o in rendered(shape) if o["metadata"]["name"] == "stepscope-config")
    state_dir = str(Path(config["data"]["STEPSCOPE_STATE"]).parent)
    mounts = {m["mountPath"] for m in stepscope_container(shape)["volumeMounts"]}
    assert state_dir in mounts
    assert "/tmp" in mounts


@pytest.mark.parametrize("shape", SHAPES)
def test_resources_are_set(shape: str) -> None:
    """Requests for CPU and memory and a memory limit are set (no CPU limit: throttling would delay polls)."""
    resources = stepscope_container(shape)["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert "memory" in resources["limits"]


@pytest.mark.parametrize("shape", SHAPES)
def test_credentials_come_from_the_secret_and_settings_from_the_configmap(shape: str) -> None:
    """Secrets are secretKeyRefs into the rendered Secret (the API key only where auth uses one); the ConfigMap is
    loaded with envFrom."""
    objects = rendered(shape)
    container = stepscope_container(shape)
    env = {e["name"]: e for e in container["env"]}
    secret = one(objects, "Secret")
    secret_names = {"OPENAI_API_KEY", "STEPSCOPE_WATCH_TOKEN"} if shape in API_KEY_SHAPES else {"STEPSCOPE_WATCH_TOKEN"}
    assert {n for n in env if "secretKeyRef" in env[n].get("valueFrom", {})} == secret_names
    for name in secret_names:
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]
    assert set(secret["stringData"]) == secret_names, "the Secret holds exactly what the workload reads"
    config_names = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
    sources = {s["configMapRef"]["name"] for s in container["envFrom"]}
    assert "stepscope-config" in sources
    assert sources <= config_names
    assert all("value" not in e for e in container["env"] if e["name"] in {"OPENAI_API_KEY", "STEPSCOPE_WATCH_TOKEN"})


@pytest.mark.parametrize("shape", SHAPES)
def test_env_names_are_documented(shape: str) -> None:
    """Every variable given to stepscope is a documented one; helpers exist only for $(VAR) expansion."""
    objects = rendered(shape)
    container = stepscope_container(shape)
    configmaps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    names = [e["name"] for e in container["env"]]
    for source in container["envFrom"]:
        names.extend(configmaps[source["configMapRef"]["name"]]["data"])
    expanded = {m for e in container["env"] for m in _EXPANSION.findall(e.get("value", ""))}
    undocumented = {n for n in names if n not in DOCUMENTED_ENV} - expanded
    assert undocumented == set()
    assert len(names) == len(set(names)), "a variable is set twice"


def test_expansion_helpers_precede_their_use() -> None:
    """A $(VAR) reference names a variable defined earlier in the list (Kubernetes expands nothing else)."""
    for shape in SHAPES:
        defined: set[str] = set()
        for entry in stepscope_container(shape)["env"]:
            assert set(_EXPANSION.findall(entry.get("value", ""))) <= defined, (shape, entry["name"])
            defined.add(entry["name"])


def test_statefulset_shard_comes_from_pod_index() -> None:
    """Central replicas get STEPSCOPE_SHARD_INDEX from the pod-index label and a count equal to the replicas."""
    statefulset = workload("central")
    env = {e["name"]: e for e in stepscope_container("central")["env"]}
    field = env["STEPSCOPE_SHARD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert field == "metadata.labels['apps.kubernetes.io/pod-index']"
    assert int(env["STEPSCOPE_SHARD_COUNT"]["value"]) == statefulset["spec"]["replicas"]
    assert "STEPSCOPE_SHARD" not in env, "give the shard one way only"


def test_central_mode_is_wired_to_its_service_and_storage() -> None:
    """The StatefulSet names its headless Service, selects its own pods, and claims a volume for the state."""
    objects = rendered("central")
    statefulset = workload("central")
    service = one(objects, "Service")
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    claims = {c["metadata"]["name"] for c in statefulset["spec"]["volumeClaimTemplates"]}
    mounts = {m["name"] for m in stepscope_container("central")["volumeMounts"]}
    assert claims <= mounts
    disruption = one(objects, "PodDisruptionBudget")
    assert disruption["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("shape", SHAPES)
def test_images_are_pinned(shape: str) -> None:
    """Every container image carries a version tag."""
    pod = workload(shape)["spec"]["template"]["spec"]
    for container in pod.get("initContainers", []) + pod["containers"]:
        assert is_pinned_image(container["image"]), container["image"]


def pod_environment(shape: str, pod_index: int) -> dict[str, str]:
    """The environment the kubelet would give the stepscope container of pod ``pod_index`` (downward API resolved)."""
    objects = rendered(shape)
    container = stepscope_container(shape)
    configmaps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    secret = one(objects, "Secret")["stringData"]
    field_values = {
        "metadata.name": f"{workload(shape)['metadata']['name']}-{pod_index}",
        "metadata.namespace": "default",
        "metadata.labels['apps.kubernetes.io/pod-index']": str(pod_index),
    }
    env: dict[str, str] = {}
    for source in container["envFrom"]:
        env.update(configmaps[source["configMapRef"]["name"]]["data"])
    for entry in container["env"]:
        if "value" in entry:
            env[entry["name"]] = _EXPANSION.sub(lambda m: env[m.group(1)], entry["value"])
        elif "secretKeyRef" in entry["valueFrom"]:
            env[entry["name"]] = secret[entry["valueFrom"]["secretKeyRef"]["key"]]
        else:
            env[entry["name"]] = field_values[entry["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


@pytest.mark.parametrize("shape", SHAPES)
def test_manifest_settings_load_in_stepscope(shape: str) -> None:
    """stepscope's own loader accepts the manifest's settings: all interfaces on :9464, state on the volume."""
    loaded = config.load(env=pod_environment(shape, pod_index=1))
    assert (loaded.server.host, loaded.server.port) == ("0.0.0.0", 9464)
    assert loaded.state == "/var/lib/stepscope/state.db"
    assert loaded.log_format == "json"
    assert "k8s.pod.name=" in loaded.export.resource_attributes
    assert loaded.api.flavor == ("azure" if shape == "azure" else "openai")


def test_azure_settings_load_as_foundry_with_entra_auth() -> None:
    """The azure shape loads as the Foundry flavour on a project endpoint with azure-identity auth and no API key."""
    loaded = config.load(env=pod_environment("azure", pod_index=0))
    assert (loaded.api.flavor, loaded.api.auth, loaded.api.api_version) == ("azure", "azure-identity", "v1")
    assert re.fullmatch(r"https://[\w-]+\.services\.ai\.azure\.com/api/projects/[\w-]+", loaded.api.base_url)
    assert not loaded.api.api_key


def test_azure_workload_identity_is_wired() -> None:
    """The pod opts into the webhook, runs under the ServiceAccount carrying the client id, and leaves AZURE_* to it."""
    objects = rendered("azure")
    template = workload("azure")["spec"]["template"]
    account = one(objects, "ServiceAccount")
    assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert template["spec"]["serviceAccountName"] == account["metadata"]["name"]
    client_id = account["metadata"]["annotations"]["azure.workload.identity/client-id"]
    assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", client_id)
    env = pod_environment("azure", pod_index=0)
    assert (env["STEPSCOPE_FLAVOR"], env["STEPSCOPE_AUTH"]) == ("azure", "azure-identity")
    # The webhook never overwrites a variable the manifest sets, so a literal AZURE_* would shadow the injected one.
    assert not [name for name in env if name.startswith("AZURE_")]
    # The webhook adds its own projected token volume; a manifest volume of that name would collide with it.
    assert "azure-identity-token" not in {v["name"] for v in template["spec"]["volumes"]}
    image = stepscope_container("azure")["image"]
    assert image.rsplit(":", 1)[1].endswith("-azure"), "the image must be the EXTRAS=azure build"


def test_central_replicas_get_distinct_shards() -> None:
    """Replica i of the StatefulSet loads as shard i of N, so the replicas cover every shard exactly once."""
    replicas = workload("central")["spec"]["replicas"]
    shards = [config.load(env=pod_environment("central", i)).poll for i in range(replicas)]
    assert [(p.shard_index, p.shard_count) for p in shards] == [(i, replicas) for i in range(replicas)]
    assert all(p.threads for p in shards)
