"""Configuration: frozen dataclasses, layered CLI flags > environment > TOML file > defaults, validated up front.

Every setting is declared once in `SETTINGS` with its dotted path, environment variable and parser (the parsers
and the self-redacting `Secret` and `Url` types are in `stepscope.config.values`). `load()`
collects *all* problems (`STEPSCOPE_POLL_INTERVAL (poll.interval): must be > 0`) and raises one `ConfigError`.
The standard `OTEL_*` variables are read here too, so the exporters never touch `os.environ` themselves.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from stepscope.config.values import (
    EMPTY_SECRET,
    Secret,
    agent_ids,
    choice,
    duration_text,
    enum_choice,
    foundry_project_id,
    listen_address,
    parse_bool,
    parse_duration,
    parse_size,
    parse_url,
    positive_duration,
    positive_float,
    positive_int,
    protocol_name,
    redact_url,
    secret,
    shard,
    size_text,
    stripped,
    thread_ids,
    webhook_secret,
)
from stepscope.contract.vocabulary import AUTH_MODES, FLAVORS, AuthMode, Flavor
from stepscope.errors import ConfigError

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_AZURE_API_VERSION = "v1"
DEFAULT_LISTEN = "127.0.0.1:9464"
DEFAULT_STATE = "stepscope-state.db"
TRACES_EXPORTERS = ("otlp", "console", "none")
METRICS_EXPORTERS = ("otlp", "none")  # /metrics is served either way
TEMPORALITIES = ("cumulative", "delta", "lowmemory")
GENAI_LATEST_EXPERIMENTAL = "gen_ai_latest_experimental"
OTLP_PROTOCOLS = ("http/protobuf", "grpc")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True, slots=True)
class ApiConfig:
    base_url: str = DEFAULT_BASE_URL
    api_key: Secret = EMPTY_SECRET
    org_id: str | None = None
    project_id: str | None = None
    foundry_project_id: str | None = None  # the project's resource id, for `microsoft.foundry.project.id`
    flavor: Flavor = Flavor.OPENAI
    protocol: str = "assistants"  # a name registered in stepscope.protocols; checked by the commands
    api_version: str | None = None
    auth: AuthMode = AuthMode.BEARER
    token_file: str | None = None
    timeout: float = 30.0  # one request in total, from sending to the body's last byte
    http_transport: str = "aiohttp"  # aiohttp (httpx's API on aiohttp's transport, fast) or httpx (its own)
    max_body: int = 8 * 1024 * 1024  # a page of 100 steps is well under 1 MB
    max_pages: int = 100


@dataclass(frozen=True, slots=True)
class PollConfig:
    interval: float = 1.0
    max_interval: float | None = None  # None: 4 x interval
    lookback: float = 3600.0
    discovery_interval: float = 2.0
    concurrency: int = 16
    max_tracked_runs: int = 10_000
    threads: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()  # Agents API: follow only sessions of these root agents; empty: all
    shard_index: int = 0
    shard_count: int = 1

    @property
    def slow_interval(self) -> float:
        """Poll interval for runs that wait (queued, requires_action): the upper bound of the schedule."""
        return self.max_interval if self.max_interval is not None else 4 * self.interval


@dataclass(frozen=True, slots=True)
class ExportConfig:
    capture_content: bool = False
    label_cap: int = 100
    max_series_per_metric: int = 2000  # exposed series per domain metric family, its overflow series aside
    traces_exporter: str = "otlp"
    otlp_endpoint: str | None = None
    otlp_traces_endpoint: str | None = None
    otlp_protocol: str = "http/protobuf"
    otlp_headers: Secret = EMPTY_SECRET
    service_name: str = "stepscope"
    resource_attributes: str = ""
    # 100 ms instead of the SDK's 5 s: export lag is a product metric here; even 10,000 active runs finish only a
    # few hundred steps a second, so batches stay cheap.
    schedule_delay_ms: float = 100.0
    # The durable span backlog: spans wait here while the trace backend is down; beyond either bound the oldest
    # are dropped (counted). 500,000 spans is about 250 MB of disk and hours of a busy deployment's spans.
    backlog_max_spans: int = 500_000
    backlog_max_age: float = 86_400.0
    # OTLP metrics beside /metrics, opt-in: the OTel SDK's periodic reader (docs/otlp-metrics.md).
    metrics_exporter: str = "none"
    otlp_metrics_endpoint: str | None = None
    otlp_metrics_protocol: str | None = None  # None: OTEL_EXPORTER_OTLP_PROTOCOL's
    otlp_metrics_headers: Secret = EMPTY_SECRET  # empty: OTEL_EXPORTER_OTLP_HEADERS
    metric_export_interval_ms: float = 60_000.0
    # 10 s, not the specification's 30 s: a hung backend then costs each export at most that, well inside an interval.
    metric_export_timeout_ms: float = 10_000.0
    metrics_temporality: str = "cumulative"
    semconv_stability_opt_in: str = ""

    @property
    def genai_latest_experimental(self) -> bool:
        """`OTEL_SEMCONV_STABILITY_OPT_IN` lists `gen_ai_latest_experimental`: the newest GenAI token counters."""
        return GENAI_LATEST_EXPERIMENTAL in {item.strip().lower() for item in self.semconv_stability_opt_in.split(",")}


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = DEFAULT_LISTEN
    watch_token: Secret = EMPTY_SECRET
    max_body_bytes: int = 16_384
    max_watched: int = 1000  # registrations (threads and runs) held at once
    watch_rate: float = 20.0  # /v1/watch requests per second, bursts of twice that
    proxy_listen: str = ""  # HOST:PORT of the reverse proxy to the API; empty: no proxy
    webhook_secret: Secret = EMPTY_SECRET  # verifies POST /v1/webhooks deliveries; empty: the endpoint answers 404

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def proxy_host(self) -> str:
        return self.proxy_listen.rsplit(":", 1)[0].strip("[]")

    @property
    def proxy_port(self) -> int:
        return int(self.proxy_listen.rsplit(":", 1)[1])


@dataclass(frozen=True, slots=True)
class Config:
    api: ApiConfig = field(default_factory=ApiConfig)
    poll: PollConfig = field(default_factory=PollConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    state: str = DEFAULT_STATE
    log_level: str = "INFO"
    log_format: str = "text"

    def summary(self) -> dict[str, Any]:
        """The effective settings for the start-up log line: `shown()`, but thread and agent ids counted, not
        listed (there may be thousands)."""
        out: dict[str, Any] = shown(self)
        out["poll.threads"] = len(self.poll.threads)
        out["poll.agents"] = len(self.poll.agents)
        return out


@dataclass(frozen=True, slots=True)
class Setting:
    path: str  # dotted path into Config; "poll.shard" is special-cased into shard_index/shard_count
    env: str
    parse: Callable[[str], Any]
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("api.api_key", "OPENAI_API_KEY", secret, "API key (Bearer or api-key header)"),
    Setting("api.base_url", "OPENAI_BASE_URL", parse_url, f"API base URL (default {DEFAULT_BASE_URL})"),
    Setting("api.org_id", "OPENAI_ORG_ID", stripped, "OpenAI-Organization header"),
    Setting("api.project_id", "OPENAI_PROJECT_ID", stripped, "OpenAI-Project header"),
    Setting(
        "api.foundry_project_id",
        "STEPSCOPE_FOUNDRY_PROJECT_ID",
        foundry_project_id,
        "Foundry project resource id on response spans (/subscriptions/.../projects/NAME)",
    ),
    Setting("api.flavor", "STEPSCOPE_FLAVOR", enum_choice(Flavor), " or ".join(FLAVORS)),
    Setting("api.protocol", "STEPSCOPE_PROTOCOL", protocol_name, "the API to read: a registered protocol's name"),
    Setting("api.api_version", "STEPSCOPE_API_VERSION", stripped, "api-version query parameter (Azure)"),
    Setting("api.auth", "STEPSCOPE_AUTH", enum_choice(AuthMode), ", ".join(AUTH_MODES[:-1]) + f" or {AUTH_MODES[-1]}"),
    Setting("api.token_file", "STEPSCOPE_TOKEN_FILE", stripped, "file holding a bearer token, re-read on change"),
    Setting("api.timeout", "STEPSCOPE_API_TIMEOUT", positive_duration, "deadline of one request, body included"),
    Setting(
        "api.http_transport",
        "STEPSCOPE_API_TRANSPORT",
        choice(("aiohttp", "httpx")),
        "HTTP transport of the API client: aiohttp (default) or httpx's own",
    ),
    Setting("api.max_body", "STEPSCOPE_API_MAX_BODY", parse_size, "largest response body read, e.g. 8MiB"),
    Setting("api.max_pages", "STEPSCOPE_MAX_PAGES", positive_int, "pages of one listing at most"),
    Setting("poll.threads", "STEPSCOPE_THREADS", thread_ids, "comma-separated thread ids to watch"),
    Setting("poll.agents", "STEPSCOPE_AGENTS", agent_ids, "comma-separated agents to follow (ids; Foundry names)"),
    Setting("poll.interval", "STEPSCOPE_POLL_INTERVAL", positive_duration, "poll interval of active runs"),
    Setting("poll.max_interval", "STEPSCOPE_POLL_MAX_INTERVAL", positive_duration, "slowest poll interval"),
    Setting("poll.lookback", "STEPSCOPE_LOOKBACK", parse_duration, "history backfilled on first sight"),
    Setting("poll.discovery_interval", "STEPSCOPE_DISCOVERY_INTERVAL", positive_duration, "thread re-list"),
    Setting("poll.concurrency", "STEPSCOPE_CONCURRENCY", positive_int, "API requests in flight at most"),
    Setting("poll.max_tracked_runs", "STEPSCOPE_MAX_TRACKED_RUNS", positive_int, "runs tracked at once"),
    Setting("poll.shard", "STEPSCOPE_SHARD", shard, "INDEX/COUNT: own only threads hashing to INDEX"),
    Setting("export.capture_content", "STEPSCOPE_CAPTURE_CONTENT", parse_bool, "put tool arguments/outputs on spans"),
    Setting("export.label_cap", "STEPSCOPE_LABEL_CAP", positive_int, "distinct values per capped label"),
    Setting(
        "export.max_series_per_metric", "STEPSCOPE_MAX_SERIES_PER_METRIC", positive_int, "series per domain metric"
    ),
    Setting("export.traces_exporter", "OTEL_TRACES_EXPORTER", choice(TRACES_EXPORTERS), "otlp, console, none"),
    Setting("export.otlp_endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT", parse_url, "OTLP endpoint"),
    Setting("export.otlp_traces_endpoint", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", parse_url, "OTLP traces endpoint"),
    Setting("export.otlp_protocol", "OTEL_EXPORTER_OTLP_PROTOCOL", choice(OTLP_PROTOCOLS), "OTLP protocol"),
    Setting("export.otlp_headers", "OTEL_EXPORTER_OTLP_HEADERS", secret, "OTLP headers k=v,k2=v2"),
    Setting("export.service_name", "OTEL_SERVICE_NAME", stripped, "service.name resource attribute"),
    Setting("export.resource_attributes", "OTEL_RESOURCE_ATTRIBUTES", stripped, "extra resource attributes"),
    Setting("export.schedule_delay_ms", "OTEL_BSP_SCHEDULE_DELAY", positive_float, "span batch delay (ms)"),
    Setting("export.backlog_max_spans", "STEPSCOPE_BACKLOG_MAX_SPANS", positive_int, "undelivered spans kept at most"),
    Setting("export.backlog_max_age", "STEPSCOPE_BACKLOG_MAX_AGE", positive_duration, "undelivered spans kept for"),
    Setting("export.metrics_exporter", "OTEL_METRICS_EXPORTER", choice(METRICS_EXPORTERS), "otlp or none"),
    Setting("export.otlp_metrics_endpoint", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", parse_url, "OTLP metrics endpoint"),
    Setting(
        "export.otlp_metrics_protocol",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        choice(OTLP_PROTOCOLS),
        "OTLP metrics protocol",
    ),
    Setting("export.otlp_metrics_headers", "OTEL_EXPORTER_OTLP_METRICS_HEADERS", secret, "OTLP metrics headers"),
    Setting("export.metric_export_interval_ms", "OTEL_METRIC_EXPORT_INTERVAL", positive_float, "export interval (ms)"),
    Setting("export.metric_export_timeout_ms", "OTEL_METRIC_EXPORT_TIMEOUT", positive_float, "export timeout (ms)"),
    Setting(
        "export.metrics_temporality",
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
        choice(TEMPORALITIES),
        "cumulative, delta or lowmemory",
    ),
    Setting(
        "export.semconv_stability_opt_in", "OTEL_SEMCONV_STABILITY_OPT_IN", stripped, "semantic conventions opt-in"
    ),
    Setting("server.listen", "STEPSCOPE_LISTEN", listen_address, f"HTTP listen address (default {DEFAULT_LISTEN})"),
    Setting("server.watch_token", "STEPSCOPE_WATCH_TOKEN", secret, "bearer token protecting /v1/watch"),
    Setting("server.max_watched", "STEPSCOPE_MAX_WATCHED", positive_int, "/v1/watch registrations held at most"),
    Setting("server.watch_rate", "STEPSCOPE_WATCH_RATE", positive_float, "/v1/watch requests per second"),
    Setting("server.proxy_listen", "STEPSCOPE_PROXY_LISTEN", listen_address, "HOST:PORT of a reverse proxy to the API"),
    Setting("server.webhook_secret", "STEPSCOPE_WEBHOOK_SECRET", webhook_secret, "whsec_... verifying /v1/webhooks"),
    Setting("state", "STEPSCOPE_STATE", stripped, "checkpoint store path (SQLite)"),
    Setting("log_level", "STEPSCOPE_LOG_LEVEL", choice(LOG_LEVELS, upper=True), "log level"),
    Setting("log_format", "STEPSCOPE_LOG_FORMAT", choice(LOG_FORMATS), "text or json"),
)
SETTINGS_BY_PATH = {s.path: s for s in SETTINGS}
# Aliases resolved into STEPSCOPE_SHARD when it is unset: Kubernetes passes the pod index and replica count.
ENV_SHARD_INDEX = "STEPSCOPE_SHARD_INDEX"
ENV_SHARD_COUNT = "STEPSCOPE_SHARD_COUNT"
ENV_TRACES_PROTOCOL = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"


ENV_PREFIX = "STEPSCOPE_"
OTHER_ENV = ("STEPSCOPE_SIM_WEBHOOK_SECRET",)
"""`STEPSCOPE_*` variables that are no setting but are read elsewhere (`stepscope simulate`): never warned about."""
KNOWN_ENV = frozenset({s.env for s in SETTINGS} | {ENV_SHARD_INDEX, ENV_SHARD_COUNT, *OTHER_ENV})


def unknown_env(env: Mapping[str, str]) -> list[str]:
    """One warning per `STEPSCOPE_*` variable of `env` that stepscope does not read, sorted, each with the nearest
    known name: `STEPSCOPE_POLL_INTERVALL is not a stepscope setting and is ignored; did you mean
    STEPSCOPE_POLL_INTERVAL?`. Values are never shown (one may be a secret)."""
    # Compared without the prefix, which every name shares and would make any two look alike.
    known = {n.removeprefix(ENV_PREFIX): n for n in sorted(KNOWN_ENV)}
    warnings = []
    for name in sorted(n for n in env if n.startswith(ENV_PREFIX) and n not in KNOWN_ENV):
        nearest = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), list(known), n=1, cutoff=0.6)
        hint = f"did you mean {known[nearest[0]]}?" if nearest else "`stepscope --help` lists every setting"
        warnings.append(f"{name} is not a stepscope setting and is ignored; {hint}")
    return warnings


def shown(config: Config) -> dict[str, str]:
    """Every setting's effective value, keyed by its path, as a user writes it: durations `1s`, `4s`, `1h`, sizes
    `8MiB`, lists comma-separated, the shard `0/1`, secrets `***`, URLs without their userinfo; `none` when unset.
    `poll.max_interval` shows the interval in force (4 x `poll.interval` unless set)."""
    out: dict[str, str] = {}
    for setting in SETTINGS:
        if setting.path == "poll.shard":
            out[setting.path] = f"{config.poll.shard_index}/{config.poll.shard_count}"
            continue
        section, _, name = setting.path.rpartition(".")
        value = getattr(getattr(config, section) if section else config, name)
        if setting.path == "poll.max_interval":
            value = config.poll.slow_interval
        out[setting.path] = _text(setting, value)
    return out


def _text(setting: Setting, value: Any) -> str:
    if isinstance(value, Secret):
        return "***" if value else "none"
    if value is None or value in ("", ()):
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if setting.parse in (parse_duration, positive_duration):
        return duration_text(float(value))
    if setting.parse is parse_size:
        return size_text(int(value))
    if isinstance(value, float):
        return f"{value:g}"
    return redact_url(str(value))


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


def _file_values(path: str, problems: list[str]) -> dict[str, str]:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        problems.append(f"--config: cannot read {path}: {exc.strerror}")
        return {}
    except UnicodeDecodeError:
        problems.append(f"--config: {path} is not UTF-8 text")
        return {}
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"--config: {path} is not valid TOML: {exc}")
        return {}
    values: dict[str, str] = {}
    for key, value in _flatten(data).items():
        if key not in SETTINGS_BY_PATH:
            problems.append(f"{key}: unknown setting in {path}")
            continue
        if isinstance(value, list):
            values[key] = ",".join(str(v) for v in value)
        else:
            values[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return values


def _env_values(env: Mapping[str, str]) -> dict[str, str]:
    values = {s.path: env[s.env] for s in SETTINGS if env.get(s.env, "").strip()}
    if "poll.shard" not in values and env.get(ENV_SHARD_INDEX) and env.get(ENV_SHARD_COUNT):
        values["poll.shard"] = f"{env[ENV_SHARD_INDEX]}/{env[ENV_SHARD_COUNT]}"
    if env.get(ENV_TRACES_PROTOCOL):
        values["export.otlp_protocol"] = env[ENV_TRACES_PROTOCOL]
    return values


def load(*, env: Mapping[str, str], file: str | None = None, overrides: Mapping[str, str] | None = None) -> Config:
    """Build the effective configuration; raise `ConfigError` listing every problem.

    `overrides` are CLI flag values keyed by setting path (`"poll.interval": "2s"`).
    """
    problems: list[str] = []
    raw: dict[str, str] = {}
    if file:
        raw.update(_file_values(file, problems))
    raw.update(_env_values(env))
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    sections: dict[str, dict[str, Any]] = {"api": {}, "poll": {}, "export": {}, "server": {}, "": {}}
    for path, text in raw.items():
        setting = SETTINGS_BY_PATH[path]
        try:
            value = setting.parse(str(text))
        except ValueError as exc:
            problems.append(f"{setting.env} ({path}): {exc}")
            continue
        if path == "poll.shard":
            sections["poll"]["shard_index"], sections["poll"]["shard_count"] = value
            continue
        section, _, name = path.rpartition(".")
        sections[section][name] = value
    config = Config(
        api=ApiConfig(**sections["api"]),
        poll=PollConfig(**sections["poll"]),
        export=ExportConfig(**sections["export"]),
        server=ServerConfig(**sections["server"]),
        **sections[""],
    )
    config = _apply_flavor_defaults(config)
    problems.extend(validate(config))
    if problems:
        raise ConfigError(problems)
    return config


def _apply_flavor_defaults(config: Config) -> Config:
    if config.api.flavor == Flavor.AZURE and config.api.api_version is None:
        return replace(config, api=replace(config.api, api_version=DEFAULT_AZURE_API_VERSION))
    return config


def validate(config: Config) -> list[str]:
    """Cross-field checks; each problem names its setting."""
    problems: list[str] = []
    api, poll = config.api, config.poll
    if api.auth in (AuthMode.BEARER, AuthMode.API_KEY) and not api.api_key:
        problems.append(f"OPENAI_API_KEY (api.api_key): required with STEPSCOPE_AUTH={api.auth}")
    if api.auth == AuthMode.TOKEN_FILE and not api.token_file:
        problems.append(f"STEPSCOPE_TOKEN_FILE (api.token_file): required with STEPSCOPE_AUTH={AuthMode.TOKEN_FILE}")
    if "@" in urlsplit(api.base_url).netloc:
        problems.append("OPENAI_BASE_URL (api.base_url): must not carry credentials (user:password@); they would be "
                        "sent instead of the key: give the key with OPENAI_API_KEY")  # fmt: skip
    if api.flavor == Flavor.AZURE and api.base_url == DEFAULT_BASE_URL:
        problems.append(
            f"OPENAI_BASE_URL (api.base_url): set the Azure project endpoint with STEPSCOPE_FLAVOR={Flavor.AZURE}"
        )
    if poll.max_interval is not None and poll.max_interval < poll.interval:
        problems.append("STEPSCOPE_POLL_MAX_INTERVAL (poll.max_interval): must be >= STEPSCOPE_POLL_INTERVAL")
    if config.server.proxy_listen and config.server.proxy_port == config.server.port != 0:
        problems.append("STEPSCOPE_PROXY_LISTEN (server.proxy_listen): must not use the port of STEPSCOPE_LISTEN")
    return problems


def env_help() -> str:
    """One line per environment variable, for `--help`."""
    return "\n".join(f"  {s.env:<38} {s.help}" for s in SETTINGS)
